// EgressProxy: rule parsing, the rule decision (names, wildcards, ports, CIDRs, special ranges, rebinding),
// and the proxy on real loopback sockets: CONNECT tunnels and plain HTTP against in-test servers on
// 127.0.0.2 / 127.0.0.3, denials with audit events, nested CONNECT, hostile input (garbage, huge and slow
// headers, too many connections), upstream failures and shutdown with connections open; the request
// ceiling (EgressRule::Covers, the host's rules checked at each decision), the rule each verdict names, and
// the ask gate with a fake hook (held connections, answers from other threads, clients that leave).
//
// The fake resolver gives allowed names TEST-NET addresses (198.51.100.x, public as far as the rules go) and
// the proxy's connect_address_for_testing seam maps them onto the loopback servers: a domain rule can never
// allow a loopback address itself (that is the DNS rebinding rule, tested with rebind.test -> 127.0.0.3).
#include "agent/egress/egress_proxy.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "net/http1_parser.h"
#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------------------
// Socket helpers (blocking, with timeouts so a failing test cannot hang)

void SetTimeouts(int fd, milliseconds t = milliseconds(5000)) {
  timeval tv{static_cast<time_t>(t.count() / 1000), static_cast<suseconds_t>((t.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

sockaddr_in Addr(const char* ip, uint16_t port) {
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_port = htons(port);
  inet_pton(AF_INET, ip, &sin.sin_addr);
  return sin;
}

UniqueFd Listen(const char* ip, uint16_t* port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sin = Addr(ip, 0);
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) return UniqueFd();
  if (listen(fd.get(), 128) != 0) return UniqueFd();
  socklen_t len = sizeof(sin);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sin), &len);
  *port = ntohs(sin.sin_port);
  return fd;
}

UniqueFd ConnectTo(const char* ip, uint16_t port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  SetTimeouts(fd.get());
  sockaddr_in sin = Addr(ip, port);
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) != 0) return UniqueFd();
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Reads byte by byte until `delim` (so nothing after it is consumed), EOF or the socket timeout.
std::string ReadUntil(int fd, std::string_view delim) {
  std::string out;
  char c;
  while (out.size() < (1 << 20)) {
    if (recv(fd, &c, 1, 0) != 1) break;
    out.push_back(c);
    if (out.size() >= delim.size() && out.compare(out.size() - delim.size(), delim.size(), delim) == 0) break;
  }
  return out;
}

// Reads until EOF (or a reset, or the socket timeout). *eof tells whether a clean EOF or reset ended it.
std::string ReadAll(int fd, bool* eof = nullptr) {
  std::string out;
  char buf[65536];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (eof) *eof = n == 0 || errno == ECONNRESET;
    return out;
  }
}

bool ReadExactly(int fd, size_t n, std::string* out) {
  out->resize(n);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = recv(fd, out->data() + got, n - got, 0);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

// Binary requests, printable in traces.
std::string Printable(std::string_view s) {
  std::string out;
  for (unsigned char c : s)
    out += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c)) : absl::StrCat("\\x", c);
  return out;
}

bool WaitFor(const std::function<bool()>& pred, milliseconds timeout = milliseconds(5000)) {
  const auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return pred();
}

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 4) {
    const uint32_t v = rng();
    std::memcpy(s.data() + i, &v, std::min<size_t>(4, n - i));
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// In-test destination servers

// Accepts on ip:0 and runs `handler(fd)` for each connection on its own thread. The server owns the fds;
// the destructor shuts them down (unblocking handlers), joins every thread, then closes them.
class TestServer {
 public:
  TestServer(const char* ip, std::function<void(int)> handler) : handler_(std::move(handler)) {
    listen_ = Listen(ip, &port_);
    if (!listen_) return;
    acceptor_ = std::jthread([this] {
      while (true) {
        const int fd = accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED) continue;
          return;  // shut down
        }
        SetTimeouts(fd);
        std::lock_guard lock(mu_);
        fds_.emplace_back(fd);
        accepted_++;
        handlers_.emplace_back([this, fd] { handler_(fd); });
      }
    });
  }
  ~TestServer() {
    if (listen_) shutdown(listen_.get(), SHUT_RDWR);
    if (acceptor_.joinable()) acceptor_.join();
    {
      std::lock_guard lock(mu_);
      for (const UniqueFd& fd : fds_) shutdown(fd.get(), SHUT_RDWR);
    }
    for (std::jthread& t : handlers_) {
      if (t.joinable()) t.join();
    }
  }
  bool ok() const { return listen_.valid(); }
  uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }

 private:
  std::function<void(int)> handler_;
  UniqueFd listen_;
  uint16_t port_ = 0;
  std::atomic<int> accepted_{0};
  std::mutex mu_;
  std::vector<UniqueFd> fds_;
  std::vector<std::jthread> handlers_;
  std::jthread acceptor_;  // last: stopped first
};

// Echoes until EOF, then half-closes. Counts the bytes it received.
std::function<void(int)> EchoHandler(std::atomic<size_t>* received) {
  return [received](int fd) {
    char buf[65536];
    while (true) {
      const ssize_t n = recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) break;
      if (received) *received += static_cast<size_t>(n);
      if (!SendAll(fd, std::string_view(buf, static_cast<size_t>(n)))) break;
    }
    shutdown(fd, SHUT_WR);
  };
}

// What the HTTP server saw of one request.
struct HttpSeen {
  std::string head;
  std::string body;
  std::string extra;  // bytes after the body (must stay empty)
};

// Reads one request (body by Content-Length or chunked), records it, answers 200 "hello", reports anything
// more that arrives within 150 ms, then half-closes.
std::function<void(int)> HttpHandler(std::mutex* mu, std::vector<HttpSeen>* seen) {
  return [mu, seen](int fd) {
    HttpSeen s;
    s.head = ReadUntil(fd, "\r\n\r\n");
    std::string lower = s.head;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (const size_t p = lower.find("content-length: "); p != std::string::npos) {
      ReadExactly(fd, std::stoul(lower.substr(p + 16)), &s.body);
    } else if (lower.find("transfer-encoding: chunked") != std::string::npos) {
      s.body = ReadUntil(fd, "\r\n0\r\n");  // up to the last chunk; a trailer would be "extra"
    }
    SendAll(fd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 150) == 1) {
      char buf[4096];
      const ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) s.extra.assign(buf, static_cast<size_t>(n));
    }
    {
      std::lock_guard lock(*mu);
      seen->push_back(std::move(s));
    }
    shutdown(fd, SHUT_WR);
  };
}

// ---------------------------------------------------------------------------------------------------------
// Parsing

TEST(ParseEgressRuleTest, Domains) {
  ASSERT_OK_AND_ASSIGN(EgressRule r, ParseEgressRule("  Example.COM.  "));
  EXPECT_EQ(r.kind, EgressRule::Kind::kDomain);
  EXPECT_EQ(r.domain, "example.com");
  EXPECT_FALSE(r.port.has_value());
  EXPECT_EQ(r.text, "Example.COM.");

  ASSERT_OK_AND_ASSIGN(EgressRule w, ParseEgressRule("*.example.com:443"));
  EXPECT_EQ(w.kind, EgressRule::Kind::kSubdomains);
  EXPECT_EQ(w.domain, "example.com");
  EXPECT_EQ(w.port, 443);

  ASSERT_OK_AND_ASSIGN(EgressRule u, ParseEgressRule("my_host-1.internal:8080"));
  EXPECT_EQ(u.domain, "my_host-1.internal");
  EXPECT_EQ(u.port, 8080);
}

TEST(ParseEgressRuleTest, AnyHost) {
  ASSERT_OK_AND_ASSIGN(EgressRule any, ParseEgressRule("*"));
  EXPECT_EQ(any.kind, EgressRule::Kind::kAnyHost);
  EXPECT_FALSE(any.port.has_value());
  ASSERT_OK_AND_ASSIGN(EgressRule any443, ParseEgressRule("*:443"));
  EXPECT_EQ(any443.kind, EgressRule::Kind::kAnyHost);
  EXPECT_EQ(any443.port, 443);
}

TEST(ParseEgressRuleTest, Networks) {
  struct Case {
    const char* text;
    const char* network;
    std::optional<uint16_t> port;
  };
  const Case cases[] = {
      {"10.0.0.0/8", "10.0.0.0/8", std::nullopt},
      {"10.0.0.0/8:443", "10.0.0.0/8", 443},
      {"127.0.0.1:8080", "127.0.0.1/32", 8080},
      {"169.254.169.254", "169.254.169.254/32", std::nullopt},
      {"0.0.0.0/0", "0.0.0.0/0", std::nullopt},
      {"2001:db8::/32", "2001:db8::/32", std::nullopt},
      {"::1", "::1/128", std::nullopt},
      {"[::1]", "::1/128", std::nullopt},
      {"[::1]:8080", "::1/128", 8080},
      {"[fd00::/8]:443", "fd00::/8", 443},
      {"::ffff:10.0.0.0/104", "10.0.0.0/8", std::nullopt},
      {"::ffff:127.0.0.1", "127.0.0.1/32", std::nullopt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    ASSERT_OK_AND_ASSIGN(EgressRule r, ParseEgressRule(c.text));
    EXPECT_EQ(r.kind, EgressRule::Kind::kNetwork);
    EXPECT_EQ(r.network.ToString(), c.network);
    EXPECT_EQ(r.port, c.port);
  }
}

TEST(ParseEgressRuleTest, BadRulesNameTheTextAndTheProblem) {
  struct Case {
    const char* text;
    const char* problem;
  };
  const Case cases[] = {
      {"", "empty rule"},
      {"   ", "empty rule"},
      {"example.com:0", "port \"0\" is not a number from 1 to 65535"},
      {"example.com:65536", "port \"65536\""},
      {"example.com:http", "port \"http\""},
      {"example.com:", "port \"\""},
      {":443", "no host"},
      {"foo.*.com", "'*' is allowed only as the whole host or as a leading \"*.\" label"},
      {"*example.com", "'*' is allowed only"},
      {"*.*.example.com", "'*' is allowed only"},
      {"10.0.0.1/8", "bits set past the /8 prefix (did you mean 10.0.0.0/8?)"},
      {"10.0.0.0/33", "prefix length 33 is longer than 32"},
      {"fd00::/129", "prefix length 129 is longer than 128"},
      {"10.0.0.0/x", "prefix length \"x\" is not a number"},
      {"10.0.0/8", "\"10.0.0\" is not an IP address"},
      {"[::1", "unclosed '['"},
      {"[::1]x", "unexpected text after ']'"},
      {"[example.com]:80", "'[...]' must hold an IPv6 address or network"},
      {"[10.0.0.1]", "'[...]' must hold an IPv6 address or network"},
      {"exa mple.com", "contains ' '"},
      {"a..b", "empty label"},
      {".", "empty host name"},
      {"127.1", "looks numeric but is not a canonical IP address"},
      {"0x7f000001", "looks numeric"},
      {"256.1.1.1", "looks numeric"},
      {"xn--bcher-kva.example/path", "\"xn--bcher-kva.example\" is not an IP address"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    const absl::StatusOr<EgressRule> r = ParseEgressRule(c.text);
    EXPECT_TRUE(StatusIs(r, absl::StatusCode::kInvalidArgument, c.problem));
    EXPECT_TRUE(StatusIs(r, absl::StatusCode::kInvalidArgument, absl::StrCat("egress rule \"", c.text, "\"")));
  }
  const std::string long_label(64, 'a');
  EXPECT_TRUE(
      StatusIs(ParseEgressRule(long_label + ".com"), absl::StatusCode::kInvalidArgument, "label longer than 63"));
}

TEST(ParseEgressRuleTest, ParseRulesStopsAtTheFirstError) {
  ASSERT_OK_AND_ASSIGN(std::vector<EgressRule> rules, ParseEgressRules({"example.com", "10.0.0.0/8"}));
  EXPECT_EQ(rules.size(), 2u);
  EXPECT_TRUE(StatusIs(ParseEgressRules({"example.com", "bad rule", "10.0.0.1/8"}), absl::StatusCode::kInvalidArgument,
                       "egress rule \"bad rule\""));
}

// ---------------------------------------------------------------------------------------------------------
// The rule decision

sockaddr_storage Sockaddr(const char* ip) {
  sockaddr_storage ss{};
  if (std::strchr(ip, ':') == nullptr) {
    auto& sin = reinterpret_cast<sockaddr_in&>(ss);
    sin.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, ip, &sin.sin_addr), 1) << ip;
  } else {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
    sin6.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, ip, &sin6.sin6_addr), 1) << ip;
  }
  return ss;
}

std::vector<sockaddr_storage> Addrs(std::initializer_list<const char*> ips) {
  std::vector<sockaddr_storage> out;
  for (const char* ip : ips) out.push_back(Sockaddr(ip));
  return out;
}

EgressPolicy Policy(const std::vector<std::string>& rules) {
  absl::StatusOr<std::vector<EgressRule>> parsed = ParseEgressRules(rules);
  EXPECT_TRUE(IsOk(parsed));
  return EgressPolicy(parsed.ok() ? *parsed : std::vector<EgressRule>{});
}

constexpr const char* kPublic = "93.184.216.34";

bool NameAllowed(const EgressPolicy& p, const char* host, uint16_t port, const char* ip = kPublic) {
  return p.MayResolve(host, port).allowed && p.Check(host, false, port, Addrs({ip})).allowed;
}

TEST(EgressPolicyTest, ExactDomain) {
  const EgressPolicy p = Policy({"example.com"});
  EXPECT_TRUE(NameAllowed(p, "example.com", 443));
  EXPECT_TRUE(NameAllowed(p, "example.com", 22));  // no port: every port
  EXPECT_FALSE(NameAllowed(p, "www.example.com", 443));
  EXPECT_FALSE(NameAllowed(p, "example.com.evil", 443));
  EXPECT_FALSE(NameAllowed(p, "badexample.com", 443));
  const EgressPolicy::Verdict v = p.MayResolve("evil.test", 443);
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.reason, "no allow rule matches evil.test:443");
}

TEST(EgressPolicyTest, SubdomainWildcardExcludesTheApex) {
  const EgressPolicy p = Policy({"*.example.com"});
  EXPECT_TRUE(NameAllowed(p, "a.example.com", 443));
  EXPECT_TRUE(NameAllowed(p, "a.b.example.com", 443));
  EXPECT_FALSE(NameAllowed(p, "example.com", 443));
  EXPECT_FALSE(NameAllowed(p, "badexample.com", 443));
  EXPECT_FALSE(NameAllowed(p, "a.example.com.evil", 443));
}

TEST(EgressPolicyTest, Ports) {
  const EgressPolicy p = Policy({"example.com:443", "*:8443", "*.api.test:80"});
  EXPECT_TRUE(NameAllowed(p, "example.com", 443));
  EXPECT_FALSE(NameAllowed(p, "example.com", 80));
  EXPECT_TRUE(NameAllowed(p, "anything.test", 8443));
  EXPECT_FALSE(NameAllowed(p, "anything.test", 443));
  EXPECT_TRUE(NameAllowed(p, "v1.api.test", 80));
  EXPECT_FALSE(NameAllowed(p, "v1.api.test", 443));
}

TEST(EgressPolicyTest, IpLiterals) {
  const EgressPolicy names = Policy({"example.com"});
  EXPECT_FALSE(names.Check(kPublic, true, 443, Addrs({kPublic})).allowed);
  const EgressPolicy any = Policy({"*"});
  EXPECT_TRUE(any.Check(kPublic, true, 443, Addrs({kPublic})).allowed);
  const EgressPolicy cidr = Policy({"93.184.216.0/24:443"});
  EXPECT_TRUE(cidr.Check(kPublic, true, 443, Addrs({kPublic})).allowed);
  EXPECT_FALSE(cidr.Check(kPublic, true, 80, Addrs({kPublic})).allowed);
  EXPECT_FALSE(cidr.Check("93.184.217.1", true, 443, Addrs({"93.184.217.1"})).allowed);
}

TEST(EgressPolicyTest, SpecialAddressesNeedACidrRuleEvenUnderAnyHost) {
  const EgressPolicy p = Policy({"*"});
  struct Case {
    const char* ip;
    const char* what;
  };
  const Case cases[] = {
      {"127.0.0.1", "loopback"},
      {"127.9.9.9", "loopback"},
      {"10.1.2.3", "private"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"192.168.1.1", "private"},
      {"169.254.169.254", "cloud metadata"},
      {"169.254.1.1", "link-local"},
      {"100.64.0.1", "carrier-grade NAT"},
      {"0.0.0.0", "this network"},
      {"224.0.0.1", "multicast"},
      {"255.255.255.255", "reserved"},
      {"::1", "loopback"},
      {"::", "unspecified"},
      {"fc00::1", "unique local"},
      {"fd12:3456::1", "unique local"},
      {"fe80::1", "link-local"},
      {"ff02::1", "multicast"},
      {"::ffff:127.0.0.1", "loopback"},
      {"::ffff:10.0.0.1", "private"},
      {"::ffff:169.254.169.254", "cloud metadata"},
      {"::127.0.0.1", "IPv4-compatible"},
      {"64:ff9b::7f00:1", "NAT64 form of a loopback"},
      {"64:ff9b::a9fe:a9fe", "NAT64 form of the cloud metadata"},
      {"2002:7f00:1::1", "6to4 form of a loopback"},
      {"2002:a00:1::", "6to4 form of a private"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.ip);
    const EgressPolicy::Verdict by_name = p.Check("host.test", false, 443, Addrs({c.ip}));
    EXPECT_FALSE(by_name.allowed);
    EXPECT_NE(by_name.reason.find(c.what), std::string::npos) << by_name.reason;
    EXPECT_NE(by_name.reason.find("host.test resolves to"), std::string::npos) << by_name.reason;
    EXPECT_FALSE(p.Check(c.ip, true, 443, Addrs({c.ip})).allowed);
  }
  EXPECT_TRUE(p.Check("host.test", false, 443, Addrs({kPublic, "2606:2800:220:1:248:1893:25c8:1946"})).allowed);
  EXPECT_TRUE(p.Check("host.test", false, 443, Addrs({"172.32.0.1", "100.128.0.1", "198.51.100.7"})).allowed);
}

TEST(EgressPolicyTest, ACidrRuleInsideTheRangeNamesASpecialAddress) {
  const EgressPolicy p = Policy({"rebind.test", "127.0.0.3/32", "10.0.0.0/8:443", "169.254.169.254:80"});
  EXPECT_TRUE(p.Check("rebind.test", false, 1234, Addrs({"127.0.0.3"})).allowed);
  EXPECT_TRUE(p.Check("anything.test", false, 1234, Addrs({"127.0.0.3"})).allowed);  // CIDR allows any name
  EXPECT_FALSE(p.Check("rebind.test", false, 1234, Addrs({"127.0.0.4"})).allowed);
  EXPECT_TRUE(p.Check("10.1.2.3", true, 443, Addrs({"10.1.2.3"})).allowed);
  EXPECT_FALSE(p.Check("10.1.2.3", true, 80, Addrs({"10.1.2.3"})).allowed);
  EXPECT_TRUE(p.Check("169.254.169.254", true, 80, Addrs({"169.254.169.254"})).allowed);
  EXPECT_FALSE(p.Check("169.254.169.254", true, 443, Addrs({"169.254.169.254"})).allowed);
  EXPECT_TRUE(p.Check("rebind.test", false, 1, Addrs({"::ffff:127.0.0.3"})).allowed);  // mapped == IPv4

  // A network wider than the special range covers public addresses only.
  const EgressPolicy wide = Policy({"0.0.0.0/0", "::/0", "8.0.0.0/7"});
  EXPECT_TRUE(wide.Check(kPublic, true, 443, Addrs({kPublic})).allowed);
  EXPECT_FALSE(wide.Check("10.1.2.3", true, 443, Addrs({"10.1.2.3"})).allowed);
  EXPECT_FALSE(wide.Check("127.0.0.1", true, 443, Addrs({"127.0.0.1"})).allowed);
  EXPECT_FALSE(wide.Check("::1", true, 443, Addrs({"::1"})).allowed);
  EXPECT_FALSE(wide.Check("x.test", false, 443, Addrs({"fd00::1"})).allowed);
}

// The host's own networks as ReadHostNetworks gives them, for a host whose public address is 203.0.113.5/24.
std::vector<IpNetwork> HostNetworks() {
  std::vector<IpNetwork> out;
  for (const char* n : {"127.0.0.0/8", "::1", "0.0.0.0", "::", "127.0.0.1", "203.0.113.5", "203.0.113.0",
                        "203.0.113.255", "10.9.8.7", "fe80::1"}) {
    absl::StatusOr<IpNetwork> net = ParseIpNetwork(n);
    EXPECT_TRUE(IsOk(net)) << n;
    if (net.ok()) out.push_back(*net);
  }
  return out;
}

TEST(EgressPolicyTest, TheHostsOwnAddressesNeedACidrRuleNamingThatAddress) {
  const std::vector<IpNetwork> host = HostNetworks();
  struct Case {
    std::vector<std::string> rules;
    const char* host;
    bool is_address;
    const char* ip;
  };
  // Each of these rules covers the address; none names it, so each is refused as the host's own.
  const Case refused[] = {
      {{"*:8080"}, "203.0.113.5", true, "203.0.113.5"},
      {{"own.test"}, "own.test", false, "203.0.113.5"},
      {{"*"}, "own.test", false, "::ffff:203.0.113.5"},  // IPv4-mapped is the IPv4 address
      {{"0.0.0.0/0"}, "203.0.113.5", true, "203.0.113.5"},
      {{"203.0.113.0/24"}, "203.0.113.5", true, "203.0.113.5"},
      {{"203.0.113.0/24"}, "203.0.113.255", true, "203.0.113.255"},  // the subnet's broadcast address
      {{"203.0.113.0/24"}, "203.0.113.0", true, "203.0.113.0"},      // and its network address
      {{"10.0.0.0/8"}, "10.9.8.7", true, "10.9.8.7"},  // a private range rule is not the host's address
      {{"fe80::/10"}, "fe80::1", true, "fe80::1"},
      {{"127.0.0.1/32"}, "0.0.0.0", true, "0.0.0.0"},
  };
  for (const Case& c : refused) {
    SCOPED_TRACE(absl::StrCat(c.rules[0], " ", c.host, " ", c.ip));
    const EgressPolicy p = Policy(c.rules);
    const EgressPolicy::Verdict v = p.Check(c.host, c.is_address, 8080, Addrs({c.ip}), host);
    EXPECT_FALSE(v.allowed);
    if (std::string_view(c.ip) != "0.0.0.0") {  // 0.0.0.0 is refused as "this network" first
      EXPECT_NE(v.reason.find("the host's own address"), std::string::npos) << v.reason;
    }
    // Without the host's networks the same check passes (or fails only for a special range): the host
    // check is what refuses it.
    if (std::string_view(c.ip).find("203.0.113") != std::string_view::npos) {
      EXPECT_TRUE(p.Check(c.host, c.is_address, 8080, Addrs({c.ip})).allowed);
    }
  }
  // A CIDR rule naming exactly the address (and the port) allows it; loopback rules keep working.
  EXPECT_TRUE(Policy({"203.0.113.5:8080"}).Check("own.test", false, 8080, Addrs({"203.0.113.5"}), host).allowed);
  EXPECT_FALSE(Policy({"203.0.113.5:8080"}).Check("own.test", false, 8081, Addrs({"203.0.113.5"}), host).allowed);
  EXPECT_TRUE(Policy({"10.9.8.7"}).Check("10.9.8.7", true, 1, Addrs({"10.9.8.7"}), host).allowed);
  EXPECT_TRUE(Policy({"127.0.0.3/32"}).Check("127.0.0.3", true, 1, Addrs({"127.0.0.3"}), host).allowed);
  EXPECT_TRUE(Policy({"127.0.0.0/8"}).Check("127.0.0.1", true, 1, Addrs({"127.0.0.1"}), host).allowed);
  // An address next to the host's is not the host's.
  EXPECT_TRUE(Policy({"*"}).Check("x.test", false, 1, Addrs({"203.0.113.6"}), host).allowed);
}

TEST(EgressPolicyTest, DenyNetworksNeedACidrRuleInsideThem) {
  absl::StatusOr<std::vector<EgressRule>> rules =
      ParseEgressRules({"*", "93.184.216.34:443", "93.184.0.0/16:80", "0.0.0.0/0:22"});
  ASSERT_TRUE(IsOk(rules));
  const EgressPolicy p(*rules, {*ParseIpNetwork("93.184.0.0/16"), *ParseIpNetwork("2001:db8::/32")});
  const EgressPolicy::Verdict v = p.Check("example.com", false, 8080, Addrs({"93.184.216.34"}));
  EXPECT_FALSE(v.allowed);
  EXPECT_NE(v.reason.find("example.com resolves to 93.184.216.34, in egress_deny_cidrs (93.184.0.0/16)"),
            std::string::npos)
      << v.reason;
  EXPECT_FALSE(p.Check("2001:db8::1", true, 443, Addrs({"2001:db8::1"})).allowed);
  EXPECT_FALSE(p.Check("x", false, 22, Addrs({"93.184.1.1"})).allowed);  // 0.0.0.0/0 is not inside it
  EXPECT_TRUE(p.Check("x", false, 443, Addrs({"93.184.216.34"})).allowed);
  EXPECT_TRUE(p.Check("x", false, 80, Addrs({"93.184.1.1"})).allowed);
  EXPECT_TRUE(p.Check("x", false, 8080, Addrs({"93.185.1.1"})).allowed);
}

TEST(EgressPolicyTest, ParseIpNetwork) {
  ASSERT_OK_AND_ASSIGN(IpNetwork v4, ParseIpNetwork("10.0.0.0/8"));
  EXPECT_EQ(v4.ToString(), "10.0.0.0/8");
  ASSERT_OK_AND_ASSIGN(IpNetwork one, ParseIpNetwork("192.0.2.1"));
  EXPECT_EQ(one.ToString(), "192.0.2.1/32");
  ASSERT_OK_AND_ASSIGN(IpNetwork v6, ParseIpNetwork("fd00::/8"));
  EXPECT_EQ(v6.ToString(), "fd00::/8");
  for (const char* bad : {"10.0.0.0/8:443", "example.com", "*", "10.0.0.1/8", ""}) {
    EXPECT_TRUE(StatusIs(ParseIpNetwork(bad), absl::StatusCode::kInvalidArgument, "is not an IP network")) << bad;
  }
}

TEST(EgressPolicyTest, ReadHostNetworksHasLoopbackAndTheUnspecifiedAddresses) {
  ASSERT_OK_AND_ASSIGN(std::vector<IpNetwork> nets, ReadHostNetworks());
  std::vector<std::string> text;
  for (const IpNetwork& n : nets) text.push_back(n.ToString());
  for (const char* want : {"127.0.0.0/8", "::1/128", "0.0.0.0/32", "::/128"}) {
    EXPECT_NE(std::find(text.begin(), text.end(), want), text.end()) << want;
  }
}

TEST(EgressPolicyTest, EveryResolvedAddressMustPass) {
  // DNS rebinding with a mixed answer: one bad address denies the name.
  const EgressPolicy p = Policy({"example.com"});
  const EgressPolicy::Verdict v = p.Check("example.com", false, 443, Addrs({kPublic, "127.0.0.1"}));
  EXPECT_FALSE(v.allowed);
  EXPECT_NE(v.reason.find("example.com resolves to 127.0.0.1, a loopback address (127.0.0.0/8)"), std::string::npos)
      << v.reason;
  EXPECT_FALSE(p.Check("example.com", false, 443, {}).allowed);

  // Allowed by CIDR only: every address must be inside an allowed network.
  const EgressPolicy cidr = Policy({"93.184.0.0/16"});
  EXPECT_TRUE(cidr.MayResolve("anything.test", 443).allowed);  // a CIDR rule needs the addresses
  EXPECT_TRUE(cidr.Check("x.test", false, 443, Addrs({"93.184.1.1"})).allowed);
  const EgressPolicy::Verdict mixed = cidr.Check("x.test", false, 443, Addrs({"93.184.1.1", "1.2.3.4"}));
  EXPECT_FALSE(mixed.allowed);
  EXPECT_NE(mixed.reason.find("x.test resolves to 1.2.3.4, which no allow rule matches on port 443"), std::string::npos)
      << mixed.reason;
  // Without a CIDR rule for the port, names no rule matches are not resolved at all.
  const EgressPolicy cidr443 = Policy({"93.184.0.0/16:443"});
  EXPECT_FALSE(cidr443.MayResolve("anything.test", 80).allowed);
}

// ---------------------------------------------------------------------------------------------------------
// The proxy

constexpr const char* kCallId = "call-7";

class EgressProxyTest : public ::testing::Test {
 protected:
  void TearDown() override { proxy_.reset(); }

  // Starts the proxy on 127.0.0.1:0 with `rules` and the fake resolver.
  void StartProxy(const std::vector<std::string>& rules, const std::function<void(EgressProxyOptions&)>& tweak = {}) {
    proxy_.reset();
    UniqueFd listen = Listen("127.0.0.1", &proxy_port_);
    ASSERT_TRUE(listen.valid());
    EgressProxyOptions options;
    ASSERT_OK_AND_ASSIGN(options.allow, ParseEgressRules(rules));
    options.resolve = [this](const std::string& host) -> absl::StatusOr<std::vector<sockaddr_storage>> {
      {
        std::lock_guard lock(mu_);
        resolved_.push_back(host);
      }
      if (host == "slow.test") std::this_thread::sleep_for(milliseconds(600));
      static const std::map<std::string, std::vector<const char*>> kNames = {
          {"allowed.test", {"198.51.100.2"}},
          {"example.test", {"198.51.100.2"}},
          {"sub.example.test", {"198.51.100.2"}},
          {"other.test", {"198.51.100.2"}},
          {"slow.test", {"198.51.100.2"}},
          {"rebind.test", {"127.0.0.3"}},
          {"private.test", {"10.1.2.3"}},
          {"metadata.test", {"169.254.169.254"}},
          {"mixed.test", {"198.51.100.2", "127.0.0.1"}},
          {"own.test", {"203.0.113.1"}},  // HostAddressTest's interface address
      };
      auto it = kNames.find(host);
      if (it == kNames.end()) return absl::NotFoundError(absl::StrCat(host, ": no such name"));
      std::vector<sockaddr_storage> out;
      for (const char* ip : it->second) out.push_back(Sockaddr(ip));
      return out;
    };
    // 198.51.100.N (TEST-NET-2, public to the rules) is served by 127.0.0.N.
    options.connect_address_for_testing = [](const sockaddr_storage& ss) {
      sockaddr_storage out = ss;
      auto& sin = reinterpret_cast<sockaddr_in&>(out);
      if (ss.ss_family == AF_INET && (ntohl(sin.sin_addr.s_addr) >> 8) == 0xC63364) {  // 198.51.100.0/24
        sin.sin_addr.s_addr = htonl(0x7F000000 | (ntohl(sin.sin_addr.s_addr) & 0xff));
      }
      return out;
    };
    options.audit = [this](const EgressAudit& a) {
      std::lock_guard lock(mu_);
      audits_.push_back(a);
    };
    options.current_call_id = [] { return std::string(kCallId); };
    if (tweak) tweak(options);
    ASSERT_OK_AND_ASSIGN(proxy_, EgressProxy::Start(std::move(listen), std::move(options)));
  }

  UniqueFd Client() { return ConnectTo("127.0.0.1", proxy_port_); }

  // Sends `request` on a new connection and returns everything until the proxy closes it.
  std::string Exchange(std::string_view request, bool* eof = nullptr) {
    UniqueFd fd = Client();
    EXPECT_TRUE(fd.valid());
    EXPECT_TRUE(SendAll(fd.get(), request));
    return ReadAll(fd.get(), eof);
  }

  // Opens a tunnel: sends CONNECT and reads the answer's header (nothing after it).
  UniqueFd Tunnel(const std::string& authority, std::string* head = nullptr, std::string_view extra = {}) {
    UniqueFd fd = Client();
    EXPECT_TRUE(SendAll(fd.get(), absl::StrCat("CONNECT ", authority, " HTTP/1.1\r\nHost: ", authority, "\r\n\r\n",
                                               absl::string_view(extra.data(), extra.size()))));
    const std::string h = ReadUntil(fd.get(), "\r\n\r\n");
    if (head) *head = h;
    return fd;
  }

  // The refusals and failures (every audit but egress_allowed, which AllowedAudits has).
  std::vector<EgressAudit> Audits() {
    std::lock_guard lock(mu_);
    std::vector<EgressAudit> out;
    for (const EgressAudit& a : audits_) {
      if (a.action != "egress_allowed") out.push_back(a);
    }
    return out;
  }
  std::vector<EgressAudit> AllowedAudits() {
    std::lock_guard lock(mu_);
    std::vector<EgressAudit> out;
    for (const EgressAudit& a : audits_) {
      if (a.action == "egress_allowed") out.push_back(a);
    }
    return out;
  }
  std::vector<std::string> Resolved() {
    std::lock_guard lock(mu_);
    return resolved_;
  }

  std::unique_ptr<EgressProxy> proxy_;
  uint16_t proxy_port_ = 0;
  std::mutex mu_;
  std::vector<EgressAudit> audits_;
  std::vector<std::string> resolved_;
};

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";

// Checks that a tunnel to the echo server relays `payload` back.
void ExpectEcho(int fd, std::string_view payload) {
  ASSERT_TRUE(SendAll(fd, payload));
  std::string back;
  ASSERT_TRUE(ReadExactly(fd, payload.size(), &back));
  EXPECT_EQ(back, payload);
}

TEST_F(EgressProxyTest, ConnectRelaysALargePayloadBothWays) {
  std::atomic<size_t> received{0};
  TestServer echo("127.0.0.2", EchoHandler(&received));
  ASSERT_TRUE(echo.ok());
  StartProxy({"allowed.test"});
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);

  const std::string payload = RandomBytes(8 << 20, 42);
  std::jthread sender([&] {
    EXPECT_TRUE(SendAll(fd.get(), payload));
    shutdown(fd.get(), SHUT_WR);  // half-close: the echo server sees EOF and half-closes back
  });
  bool eof = false;
  const std::string back = ReadAll(fd.get(), &eof);
  sender.join();
  EXPECT_TRUE(eof);
  ASSERT_EQ(back.size(), payload.size());
  EXPECT_TRUE(back == payload) << "payload corrupted";
  EXPECT_EQ(received.load(), payload.size());

  const EgressProxy::Stats stats = proxy_->stats();
  EXPECT_EQ(stats.allowed, 1u);
  EXPECT_EQ(stats.bytes_up, payload.size());
  EXPECT_EQ(stats.bytes_down, payload.size());  // the 200 is the proxy's own
  EXPECT_TRUE(Audits().empty());
  EXPECT_TRUE(WaitFor([&] { return proxy_->stats().active == 0; }));
}

TEST_F(EgressProxyTest, ConnectPassesHalfCloseOnAndKeepsPipelinedBytes) {
  // The server reads to EOF, then answers with the byte count.
  TestServer sink("127.0.0.2", [](int fd) {
    const std::string got = ReadAll(fd);
    SendAll(fd, absl::StrCat("got ", got.size(), " ", got.substr(0, 5)));
    shutdown(fd, SHUT_WR);
  });
  StartProxy({"allowed.test"});
  std::string head;
  // "early" travels with the CONNECT request, before the 200.
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", sink.port()), &head, "early");
  ASSERT_EQ(head, kEstablished);
  ASSERT_TRUE(SendAll(fd.get(), std::string(100000, 'x')));
  shutdown(fd.get(), SHUT_WR);
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "got 100005 early");
  EXPECT_TRUE(eof);
}

TEST_F(EgressProxyTest, PlainGetIsRewrittenAndTheResponseRelayed) {
  std::mutex mu;
  std::vector<HttpSeen> seen;
  TestServer http("127.0.0.2", HttpHandler(&mu, &seen));
  StartProxy({"allowed.test"});
  const std::string request = absl::StrCat("GET http://Allowed.TEST.:", http.port(),
                                           "/path/x?q=1#frag HTTP/1.1\r\n"
                                           "Host: wrong.test\r\n"
                                           "User-Agent: egress-test\r\n"
                                           "Proxy-Connection: keep-alive\r\n"
                                           "Proxy-Authorization: Basic c2VjcmV0\r\n"
                                           "Connection: keep-alive, X-Hop\r\n"
                                           "Keep-Alive: timeout=5\r\n"
                                           "X-Hop: drop me\r\n"
                                           "X-Keep: 2\r\n"
                                           "\r\n");
  bool eof = false;
  const std::string response = Exchange(request, &eof);
  EXPECT_TRUE(eof);
  EXPECT_EQ(response, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].head, absl::StrCat("GET /path/x?q=1 HTTP/1.1\r\n"
                                       "Host: allowed.test:",
                                       http.port(),
                                       "\r\n"
                                       "User-Agent: egress-test\r\n"
                                       "X-Keep: 2\r\n"
                                       "Connection: close\r\n\r\n"));
  EXPECT_TRUE(Audits().empty());
  EXPECT_EQ(proxy_->stats().allowed, 1u);
}

TEST_F(EgressProxyTest, PlainRequestBodiesAreFramedAndNothingElseIsForwarded) {
  std::mutex mu;
  std::vector<HttpSeen> seen;
  TestServer http("127.0.0.2", HttpHandler(&mu, &seen));
  StartProxy({"allowed.test"});
  const std::string target = absl::StrCat("http://allowed.test:", http.port(), "/upload");
  const std::string smuggled = absl::StrCat("GET ", target, " HTTP/1.1\r\n\r\n");

  // Content-Length, with a second request pipelined after the body.
  std::string response =
      Exchange(absl::StrCat("POST ", target, " HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world", smuggled));
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 200 OK")) << response;
  // Chunked, in pieces, with junk after the last chunk.
  {
    UniqueFd fd = Client();
    ASSERT_TRUE(
        SendAll(fd.get(), absl::StrCat("PUT ", target, " HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")));
    std::this_thread::sleep_for(milliseconds(50));
    ASSERT_TRUE(SendAll(fd.get(), absl::StrCat("lo\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", smuggled)));
    response = ReadAll(fd.get());
    EXPECT_TRUE(StartsWith(response, "HTTP/1.1 200 OK")) << response;
  }
  ASSERT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return seen.size() == 2;
  }));
  std::lock_guard lock(mu);
  EXPECT_NE(seen[0].head.find("Content-Length: 11\r\n"), std::string::npos);
  EXPECT_EQ(seen[0].body, "hello world");
  EXPECT_EQ(seen[0].extra, "");
  EXPECT_NE(seen[1].head.find("Transfer-Encoding: chunked\r\n"), std::string::npos);
  EXPECT_EQ(seen[1].body, "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n");
  EXPECT_EQ(seen[1].extra, "X-Trailer: t\r\n\r\n");  // the trailer is the end of the chunked body
  EXPECT_EQ(http.accepted(), 2);
}

TEST_F(EgressProxyTest, DeniedHostGets403AndExactlyOneAuditEvent) {
  StartProxy({"allowed.test"});
  const std::string response = Exchange("CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n");
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 403 Forbidden\r\n")) << response;
  EXPECT_NE(response.find("Connection: close\r\n"), std::string::npos);
  EXPECT_NE(response.find("evil.test:443"), std::string::npos) << response;
  EXPECT_NE(response.find("no allow rule matches evil.test:443"), std::string::npos) << response;
  std::vector<EgressAudit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].destination, "evil.test:443");
  EXPECT_EQ(audits[0].action, "egress_denied");
  EXPECT_EQ(audits[0].call_id, kCallId);
  EXPECT_EQ(audits[0].detail, "no allow rule matches evil.test:443");
  EXPECT_TRUE(Resolved().empty()) << "a name no rule allows must not be resolved";

  const std::string get = Exchange("GET http://EVIL.test/x HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(StartsWith(get, "HTTP/1.1 403 Forbidden\r\n")) << get;
  audits = Audits();
  ASSERT_EQ(audits.size(), 2u);
  EXPECT_EQ(audits[1].destination, "evil.test:80");
  EXPECT_EQ(proxy_->stats().denied, 2u);
}

TEST_F(EgressProxyTest, SubdomainWildcardAllowsSubdomainsButNotTheApex) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"*.example.test"});
  std::string head;
  UniqueFd sub = Tunnel(absl::StrCat("sub.example.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(sub.get(), "ping");
  UniqueFd apex = Tunnel(absl::StrCat("example.test:", echo.port()), &head);
  EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
  ASSERT_EQ(Audits().size(), 1u);
  EXPECT_EQ(Audits()[0].destination, absl::StrCat("example.test:", echo.port()));
}

TEST_F(EgressProxyTest, PortRules) {
  TestServer a("127.0.0.2", EchoHandler(nullptr));
  TestServer b("127.0.0.2", EchoHandler(nullptr));
  StartProxy({absl::StrCat("allowed.test:", a.port()), absl::StrCat("*:", b.port())});
  std::string head;
  UniqueFd ok = Tunnel(absl::StrCat("allowed.test:", a.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(ok.get(), "a");
  UniqueFd other_port = Tunnel(absl::StrCat("other.test:", a.port()), &head);
  EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
  UniqueFd any_host = Tunnel(absl::StrCat("other.test:", b.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(any_host.get(), "b");
  EXPECT_EQ(Audits().size(), 1u);
}

TEST_F(EgressProxyTest, NamesResolvingToSpecialAddressesAreRefusedUnlessACidrRuleNamesThem) {
  TestServer echo3("127.0.0.3", EchoHandler(nullptr));
  TestServer echo2("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"rebind.test", "private.test", "metadata.test", "mixed.test", "*:1"});
  struct Case {
    std::string authority;
    const char* reason;
  };
  const Case cases[] = {
      {absl::StrCat("rebind.test:", echo3.port()), "rebind.test resolves to 127.0.0.3, a loopback address"},
      {"private.test:443", "private.test resolves to 10.1.2.3, a private address (10.0.0.0/8)"},
      {"metadata.test:80", "169.254.169.254, the cloud metadata address"},
      {absl::StrCat("mixed.test:", echo2.port()), "mixed.test resolves to 127.0.0.1, a loopback address"},
      {"127.0.0.1:1", "127.0.0.1, a loopback address"},  // "*" matches a literal; the range still refuses
      {"[::1]:1", "::1, a loopback address"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.authority);
    std::string head;
    UniqueFd fd = Tunnel(c.authority, &head);
    EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
    const std::string body = ReadAll(fd.get());
    EXPECT_NE(body.find(c.reason), std::string::npos) << body;
    const std::vector<EgressAudit> audits = Audits();
    ASSERT_FALSE(audits.empty());
    EXPECT_EQ(audits.back().action, "egress_denied");
    EXPECT_NE(audits.back().detail.find(c.reason), std::string::npos) << audits.back().detail;
  }
  EXPECT_EQ(echo3.accepted() + echo2.accepted(), 0);

  // A CIDR rule naming the address allows the name, and the literal, and nothing next to it.
  StartProxy({"127.0.0.3/32"});
  std::string head;
  UniqueFd by_name = Tunnel(absl::StrCat("rebind.test:", echo3.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(by_name.get(), "rebound");
  UniqueFd literal = Tunnel(absl::StrCat("127.0.0.3:", echo3.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(literal.get(), "literal");
  UniqueFd neighbour = Tunnel(absl::StrCat("127.0.0.2:", echo2.port()), &head);
  EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
  EXPECT_EQ(echo2.accepted(), 0);
}

TEST_F(EgressProxyTest, NestedConnectInsideATunnelIsRefusedAndAudited) {
  std::atomic<size_t> received{0};
  TestServer echo("127.0.0.2", EchoHandler(&received));
  StartProxy({"allowed.test"});
  const std::string authority = absl::StrCat("allowed.test:", echo.port());
  struct Case {
    const char* name;
    std::vector<std::string> writes;
    bool pipelined;  // the first write travels with the outer CONNECT
  };
  const Case cases[] = {
      {"plain", {"CONNECT evil.test:443 HTTP/1.1\r\nHost: evil.test:443\r\n\r\n"}, false},
      {"split", {"CON", "NECT evil.test:443 HTTP/1.1\r\n\r\n"}, false},
      {"lowercase after blank lines", {"\r\n\r\n  connect evil.test:443 HTTP/1.1\r\n\r\n"}, false},
      {"pipelined", {"CONNECT evil.test:443 HTTP/1.1\r\n\r\n"}, true},
  };
  size_t expected_audits = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string head;
    UniqueFd fd = Tunnel(authority, &head, c.pipelined ? c.writes[0] : "");
    ASSERT_EQ(head, kEstablished);
    for (size_t i = c.pipelined ? 1 : 0; i < c.writes.size(); ++i) {
      ASSERT_TRUE(SendAll(fd.get(), c.writes[i]));
      std::this_thread::sleep_for(milliseconds(30));
    }
    bool eof = false;
    const std::string rest = ReadAll(fd.get(), &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(StartsWith(rest, "HTTP/1.1 403 Forbidden")) << rest;
    const std::vector<EgressAudit> audits = Audits();
    ASSERT_EQ(audits.size(), ++expected_audits);
    EXPECT_EQ(audits.back().action, "egress_nested_connect");
    EXPECT_EQ(audits.back().destination, authority);
    EXPECT_EQ(audits.back().call_id, kCallId);
    EXPECT_NE(audits.back().detail.find("evil.test:443"), std::string::npos) << audits.back().detail;
  }
  EXPECT_EQ(received.load(), 0u) << "no byte of a nested CONNECT may reach the destination";

  // Other first bytes pass, including "CONN" that turns out to be something else.
  std::string head;
  UniqueFd fd = Tunnel(authority, &head);
  ASSERT_EQ(head, kEstablished);
  ASSERT_TRUE(SendAll(fd.get(), "CONN"));
  std::this_thread::sleep_for(milliseconds(30));
  ASSERT_TRUE(SendAll(fd.get(), "ECTED fine\r\n"));
  std::string back;
  ASSERT_TRUE(ReadExactly(fd.get(), 16, &back));
  EXPECT_EQ(back, "CONNECTED fine\r\n");
  EXPECT_EQ(Audits().size(), expected_audits);
}

TEST_F(EgressProxyTest, MalformedRequestsAreAnsweredAndAuditedAndTheProxyKeepsServing) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"});
  struct Case {
    std::string request;
    const char* status;
    const char* detail;
  };
  const Case cases[] = {
      {std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11), "400", "not an HTTP request"},
      {std::string("\0\0\0\0garbage\r\n\r\n", 15), "400", "not an HTTP request"},
      {"GET /path HTTP/1.1\r\nHost: allowed.test\r\n\r\n", "400", "needs an absolute http:// URI"},
      {"OPTIONS * HTTP/1.1\r\n\r\n", "400", "not a proxy request"},
      {"GET https://allowed.test/ HTTP/1.1\r\n\r\n", "400", "https:// URIs go through CONNECT"},
      {"CONNECT allowed.test HTTP/1.1\r\n\r\n", "400", "CONNECT needs host:port"},
      {"CONNECT allowed.test:0 HTTP/1.1\r\n\r\n", "400", "not a number from 1 to 65535"},
      {"CONNECT ::1:443 HTTP/1.1\r\n\r\n", "400", "IPv6 address must be in brackets"},
      {"GET http://allowed.test/ HTTP/2.0\r\n\r\n", "505", "HTTP/2.0 is not supported"},
      {"GET http://allowed.test/ FOO\r\n\r\n", "400", "malformed request line"},
      {"GET http://allowed.test/ HTTP/1.1\r\nNoColon\r\n\r\n", "400", "malformed header line"},
      {"GET http://allowed.test/ HTTP/1.1\r\nX-A : b\r\n\r\n", "400", "malformed header line"},
      {"GET http://allowed.test/ HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n", "400", "folded header lines"},
      {"GET http://allowed.test/ HTTP/1.1\r\nX-A: b\nX-B: c\r\n\r\n", "400", "control characters in header"},
      {"GET http://user:pw@allowed.test/ HTTP/1.1\r\n\r\n", "400", "userinfo"},
      {"GET http://127.1/ HTTP/1.1\r\n\r\n", "400", "looks numeric"},
      {"GET http://bad_host!/ HTTP/1.1\r\n\r\n", "400", "contains '!'"},
      {"POST http://allowed.test/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "501", "not supported"},
      {"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400",
       "both Content-Length and Transfer-Encoding"},
      {"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "400",
       "conflicting Content-Length"},
      {"POST http://allowed.test/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400", "malformed Content-Length"},
      {"POST http://allowed.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400",
       "malformed chunked request body"},
  };
  size_t n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(Printable(c.request));
    bool eof = false;
    const std::string response = Exchange(c.request, &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(StartsWith(response, absl::StrCat("HTTP/1.1 ", c.status, " "))) << response;
    EXPECT_NE(response.find(c.detail), std::string::npos) << response;
    const std::vector<EgressAudit> audits = Audits();
    ASSERT_EQ(audits.size(), ++n);
    EXPECT_EQ(audits.back().action, "egress_bad_request");
    EXPECT_EQ(audits.back().call_id, kCallId);
    EXPECT_NE(audits.back().detail.find(c.detail), std::string::npos) << audits.back().detail;
  }
  EXPECT_EQ(proxy_->stats().bad_requests, n);
  EXPECT_EQ(echo.accepted(), 0);
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(fd.get(), "still serving");
}

TEST_F(EgressProxyTest, OversizedHeadersGet431) {
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.max_header_bytes = 4096; });
  bool eof = false;
  const std::string response = Exchange(
      absl::StrCat("GET http://allowed.test/ HTTP/1.1\r\nX-Big: ", std::string(100000, 'a'), "\r\n\r\n"), &eof);
  EXPECT_TRUE(eof);
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 431 Request Header Fields Too Large")) << response.substr(0, 200);
  ASSERT_EQ(Audits().size(), 1u);
  EXPECT_EQ(Audits()[0].action, "egress_bad_request");
  EXPECT_EQ(Audits()[0].detail, "request header larger than 4096 bytes");
}

TEST_F(EgressProxyTest, SlowHeadersGet408) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.header_timeout = milliseconds(300); });
  UniqueFd slow = Client();
  UniqueFd silent = Client();
  const auto start = Clock::now();
  ASSERT_TRUE(SendAll(slow.get(), "GET http://allowed.test/ HTTP/1.1\r\n"));
  for (int i = 0; i < 8; ++i) {
    if (!SendAll(slow.get(), "X")) break;  // the proxy may have answered and closed already
    std::this_thread::sleep_for(milliseconds(60));
  }
  bool eof = false;
  const std::string response = ReadAll(slow.get(), &eof);
  EXPECT_TRUE(eof);
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 408 Request Timeout")) << response;
  EXPECT_TRUE(StartsWith(ReadAll(silent.get()), "HTTP/1.1 408 Request Timeout"));
  EXPECT_LT(Clock::now() - start, milliseconds(3000));
  EXPECT_EQ(Audits().size(), 2u);
  // Meanwhile and after, others are served.
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(fd.get(), "after slowloris");
}

TEST_F(EgressProxyTest, ConnectionsPastMaxConnectionsGet503) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.max_connections = 2; });
  UniqueFd a = Client();
  UniqueFd b = Client();
  ASSERT_TRUE(WaitFor([&] { return proxy_->stats().active == 2; }));
  for (int i = 0; i < 3; ++i) {
    UniqueFd extra = Client();
    bool eof = false;
    const std::string response = ReadAll(extra.get(), &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(StartsWith(response, "HTTP/1.1 503 Service Unavailable")) << response;
  }
  EXPECT_EQ(proxy_->stats().overloaded, 3u);
  std::vector<EgressAudit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u) << "audited once per overload episode";
  EXPECT_EQ(audits[0].action, "egress_overloaded");
  a.Reset();
  ASSERT_TRUE(WaitFor([&] { return proxy_->stats().active == 1; }));
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(fd.get(), "room again");
}

TEST_F(EgressProxyTest, UpstreamFailuresGet502And504) {
  uint16_t closed_port = 0;
  { UniqueFd probe = Listen("127.0.0.2", &closed_port); }  // bound then closed: refuses connections
  StartProxy({"allowed.test", "nxdomain.test", "slow.test"},
             [](EgressProxyOptions& o) { o.connect_timeout = milliseconds(200); });
  std::string response = Exchange(absl::StrCat("CONNECT allowed.test:", closed_port, " HTTP/1.1\r\n\r\n"));
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 502 Bad Gateway")) << response;
  EXPECT_NE(response.find("Connection refused"), std::string::npos) << response;
  response = Exchange("GET http://nxdomain.test/ HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 502 Bad Gateway")) << response;
  EXPECT_NE(response.find("cannot resolve nxdomain.test"), std::string::npos) << response;
  const auto start = Clock::now();
  response = Exchange("CONNECT slow.test:443 HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(StartsWith(response, "HTTP/1.1 504 Gateway Timeout")) << response;
  EXPECT_LT(Clock::now() - start, milliseconds(550)) << "answered at connect_timeout, not after the lookup";
  const std::vector<EgressAudit> audits = Audits();
  ASSERT_EQ(audits.size(), 3u);
  for (const EgressAudit& a : audits) EXPECT_EQ(a.action, "egress_failed");
  EXPECT_EQ(audits[1].destination, "nxdomain.test:80");
  EXPECT_EQ(proxy_->stats().failed, 3u);
  EXPECT_EQ(proxy_->stats().denied, 0u);
}

TEST_F(EgressProxyTest, IdleTunnelsAreClosed) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.idle_timeout = milliseconds(300); });
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(fd.get(), "x");
  const auto start = Clock::now();
  bool eof = false;
  EXPECT_EQ(ReadAll(fd.get(), &eof), "");
  EXPECT_TRUE(eof);
  EXPECT_GE(Clock::now() - start, milliseconds(200));
  EXPECT_LT(Clock::now() - start, milliseconds(3000));
  EXPECT_TRUE(Audits().empty());
}

TEST_F(EgressProxyTest, RandomGarbageNeverHangsTheProxy) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.header_timeout = milliseconds(500); });
  std::mt19937 rng(7);
  std::vector<UniqueFd> fds;
  for (int i = 0; i < 40; ++i) {
    std::string junk = RandomBytes(1 + rng() % 3000, rng());
    if (i % 3 == 0) junk = absl::StrCat("CONNECT ", junk);
    if (i % 2 == 0) junk += "\r\n\r\n";
    UniqueFd fd = Client();
    ASSERT_TRUE(fd.valid());
    SendAll(fd.get(), junk);
    fds.push_back(std::move(fd));
  }
  for (UniqueFd& fd : fds) {
    bool eof = false;
    const std::string response = ReadAll(fd.get(), &eof);
    EXPECT_TRUE(eof);
    EXPECT_TRUE(StartsWith(response, "HTTP/1.1 4") || StartsWith(response, "HTTP/1.1 5")) << Printable(response);
  }
  EXPECT_TRUE(WaitFor([&] { return proxy_->stats().active == 0; }));
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(fd.get(), "alive");
}

TEST_F(EgressProxyTest, DestroyingTheProxyClosesEveryConnectionWithoutHanging) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test", "slow.test"});
  std::string head;
  UniqueFd tunnel = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(tunnel.get(), "open");
  UniqueFd busy = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  std::jthread writer([fd = busy.get()] {
    const std::string chunk(1 << 16, 'z');
    for (int i = 0; i < 10000 && SendAll(fd, chunk); ++i) {
    }
  });
  UniqueFd half_header = Client();
  ASSERT_TRUE(SendAll(half_header.get(), "GET http://allowed.test/ HTTP/1.1\r\n"));
  UniqueFd resolving = Client();
  ASSERT_TRUE(SendAll(resolving.get(), "CONNECT slow.test:443 HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] {
    const std::vector<std::string> names = Resolved();
    return std::count(names.begin(), names.end(), "slow.test") == 1 && proxy_->stats().active == 4;
  }));

  const auto start = Clock::now();
  proxy_.reset();
  EXPECT_LT(Clock::now() - start, milliseconds(1500));  // waits at most for the 600 ms lookup in flight
  for (int fd : {tunnel.get(), half_header.get(), resolving.get()}) {
    bool eof = false;
    ReadAll(fd, &eof);
    EXPECT_TRUE(eof);
  }
  busy.Reset();  // the writer fails instead of blocking on a full socket
  writer.join();
  // The listening socket is closed too.
  EXPECT_FALSE(Client().valid());
}

TEST_F(EgressProxyTest, DenyNetworksAreRefusedAndAudited) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartProxy({"allowed.test"}, [](EgressProxyOptions& o) { o.deny = {*ParseIpNetwork("198.51.100.0/24")}; });
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
  const std::vector<EgressAudit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_NE(audits[0].detail.find("in egress_deny_cidrs (198.51.100.0/24)"), std::string::npos) << audits[0].detail;
  EXPECT_EQ(echo.accepted(), 0);
}

// The host's own addresses, for real: in a network namespace of its own (made by this test's thread, so the
// proxy's threads, which it starts, live there too) with 203.0.113.1/24 and 10.250.0.1/24 on a veth
// interface and servers listening on them, as a host with a public and a private address would have.
class EgressProxyHostAddressTest : public EgressProxyTest {
 protected:
  // Runs `body` on a thread in a new network namespace holding the veth pair; the namespace (and the pair)
  // go away with the thread and the sockets it made.
  void InNetns(const std::function<void()>& body) {
    const char* ip = nullptr;
    for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
      if (access(p, X_OK) == 0) ip = p;
    }
    if (ip == nullptr) GTEST_SKIP() << "iproute2's ip is not installed";
    std::string skip;
    std::thread t([&] {
      if (unshare(CLONE_NEWNET) != 0) {
        skip = absl::StrCat("cannot unshare(CLONE_NEWNET): ", std::strerror(errno), " (needs root)");
        return;
      }
      const std::string script = absl::StrCat(
          ip, " link set lo up && ", ip, " link add sbxeo0 type veth peer name sbxeo1 && ", ip,
          " addr add 203.0.113.1/24 dev sbxeo0 && ", ip, " addr add 10.250.0.1/24 dev sbxeo0 && ", ip,
          " link set sbxeo0 up && ", ip, " link set sbxeo1 up");
      ASSERT_EQ(std::system(script.c_str()), 0) << script;  // fork()ed from this thread: same namespace
      body();
      proxy_.reset();
    });
    t.join();
    if (!skip.empty()) GTEST_SKIP() << skip;
  }
};

TEST_F(EgressProxyHostAddressTest, TheHostsOwnAddressesAreRefusedUnlessACidrRuleNamesThem) {
  InNetns([&] {
    TestServer pub("203.0.113.1", EchoHandler(nullptr));
    TestServer priv("10.250.0.1", EchoHandler(nullptr));
    ASSERT_TRUE(pub.ok() && priv.ok());
    const std::string pub_dest = absl::StrCat("203.0.113.1:", pub.port());
    const std::string priv_dest = absl::StrCat("10.250.0.1:", priv.port());
    struct Case {
      std::vector<std::string> rules;
      std::string authority;
    };
    const Case refused[] = {
        {{absl::StrCat("*:", pub.port())}, pub_dest},                   // a port rule
        {{"own.test"}, absl::StrCat("own.test:", pub.port())},         // a domain resolving to the host
        {{"0.0.0.0/0"}, pub_dest},                                      // a wide CIDR rule
        {{"203.0.113.0/24"}, pub_dest},                                 // the host's subnet
        {{"10.0.0.0/8"}, priv_dest},                                    // a private range rule
        {{absl::StrCat("*:", pub.port())}, absl::StrCat("[::ffff:203.0.113.1]:", pub.port())},
        {{"203.0.113.0/24"}, absl::StrCat("203.0.113.255:", pub.port())},  // the subnet's broadcast
    };
    for (const Case& c : refused) {
      SCOPED_TRACE(absl::StrCat(c.rules[0], " -> ", c.authority));
      StartProxy(c.rules);  // joins the previous proxy first
      {
        std::lock_guard lock(mu_);
        audits_.clear();
      }
      std::string head;
      UniqueFd fd = Tunnel(c.authority, &head);
      EXPECT_TRUE(StartsWith(head, "HTTP/1.1 403")) << head;
      const std::vector<EgressAudit> audits = Audits();
      EXPECT_EQ(audits.size(), 1u);
      if (audits.empty()) continue;
      EXPECT_EQ(audits[0].action, "egress_denied");
      EXPECT_NE(audits[0].detail.find("the host's own address"), std::string::npos) << audits[0].detail;
    }
    EXPECT_EQ(pub.accepted() + priv.accepted(), 0);

    // A CIDR rule naming the address lets it through, by name and by address.
    StartProxy({"203.0.113.1/32", "10.250.0.1"});
    std::string head;
    UniqueFd by_name = Tunnel(absl::StrCat("own.test:", pub.port()), &head);
    ASSERT_EQ(head, kEstablished);
    ExpectEcho(by_name.get(), "named");
    UniqueFd priv_fd = Tunnel(priv_dest, &head);
    ASSERT_EQ(head, kEstablished);
    ExpectEcho(priv_fd.get(), "private");
  });
}

// ---------------------------------------------------------------------------------------------------------
// The request ceiling, verdict rules, and the ask gate

EgressRule Rule(const char* text) {
  absl::StatusOr<EgressRule> r = ParseEgressRule(text);
  EXPECT_TRUE(IsOk(r)) << text;
  return r.ok() ? *r : EgressRule{};
}

TEST(EgressRuleTest, CoversBySyntax) {
  struct Case {
    const char* host;
    const char* request;
    bool covered;
  } cases[] = {
      {"example.com", "example.com", true},
      {"example.com", "EXAMPLE.com.", true},
      {"example.com", "a.example.com", false},
      {"example.com", "*.example.com", false},
      {"*.example.com", "a.example.com", true},
      {"*.example.com", "a.b.example.com", true},
      {"*.example.com", "example.com", false},
      {"*.example.com", "badexample.com", false},
      {"*.example.com", "*.example.com", true},
      {"*.example.com", "*.a.example.com", true},
      {"*.a.example.com", "*.example.com", false},
      {"*", "example.com", true},
      {"*", "*.example.com", true},
      {"*", "*", true},
      {"*", "10.0.0.0/8", false},  // a CIDR rule opens special ranges "*" does not
      {"example.com", "*", false},
      {"10.0.0.0/8", "10.1.0.0/16", true},
      {"10.0.0.0/8", "10.1.2.3", true},
      {"10.0.0.0/16", "10.0.0.0/8", false},
      {"10.0.0.0/8", "11.0.0.0/8", false},
      {"10.0.0.0/8", "example.com", false},
      {"fd00::/8", "[fd00::1]:443", true},
      {"fd00::/8", "10.0.0.1", false},
      {"example.com", "example.com:443", true},
      {"example.com:443", "example.com:443", true},
      {"example.com:443", "example.com:80", false},
      {"example.com:443", "example.com", false},  // every port is wider than one
      {"*:443", "a.example.com:443", true},
      {"*:443", "a.example.com", false},
      {"10.0.0.0/8:22", "10.0.0.1/32:22", true},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Rule(c.host).Covers(Rule(c.request)), c.covered) << c.host << " over " << c.request;
  }
}

TEST(EgressPolicyTest, VerdictsNameTheRuleThatDecided) {
  EgressPolicy p(*ParseEgressRules({"a.test", "*.b.test:443", "198.51.100.0/24:80"}));
  EgressPolicy::Verdict v = p.Check("x.b.test", false, 443, Addrs({kPublic}));
  EXPECT_TRUE(v.allowed);
  EXPECT_EQ(v.rule, "*.b.test:443");
  v = p.Check("198.51.100.7", true, 80, Addrs({"198.51.100.7"}));
  EXPECT_TRUE(v.allowed);
  EXPECT_EQ(v.rule, "198.51.100.0/24:80");
  v = p.Check("c.test", false, 443, Addrs({kPublic}));
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.rule, "default deny");
  v = p.Check("a.test", false, 443, Addrs({"10.1.2.3"}));
  EXPECT_FALSE(v.allowed);
  EXPECT_EQ(v.rule, "special range 10.0.0.0/8");
}

TEST(EgressPolicyTest, AskRulesAskOnlyAboutWhatTheAllowRulesRefuse) {
  EgressPolicy p(*ParseEgressRules({"*.github.com"}), {}, *ParseEgressRules({"api.github.com", "*.gitlab.com", "10.9.0.0/16"}));
  // Allowed wins over ask.
  EgressPolicy::Verdict v = p.Check("api.github.com", false, 443, Addrs({kPublic}));
  EXPECT_TRUE(v.allowed);
  EXPECT_FALSE(v.ask);
  EXPECT_EQ(v.rule, "*.github.com");
  v = p.Check("x.gitlab.com", false, 443, Addrs({kPublic}));
  EXPECT_FALSE(v.allowed);
  EXPECT_TRUE(v.ask);
  EXPECT_EQ(v.rule, "*.gitlab.com");
  EXPECT_TRUE(p.MayResolve("x.gitlab.com", 443).allowed);  // an ask rule's name is resolved to be checked
  // A name on the ask list that resolves to a private address is refused, not asked about.
  v = p.Check("x.gitlab.com", false, 443, Addrs({"10.1.2.3"}));
  EXPECT_FALSE(v.allowed);
  EXPECT_FALSE(v.ask);
  EXPECT_EQ(v.rule, "special range 10.0.0.0/8");
  // A CIDR ask rule inside a private range names it, as an allow rule would.
  v = p.Check("10.9.1.1", true, 22, Addrs({"10.9.1.1"}));
  EXPECT_TRUE(v.ask);
  EXPECT_EQ(v.rule, "10.9.0.0/16");
  v = p.Check("nothing.test", false, 443, Addrs({kPublic}));
  EXPECT_FALSE(v.allowed || v.ask);
  EXPECT_EQ(v.rule, "default deny");
}

// A fake ask hook: records each question and its `done`; the test answers.
struct FakeAsker {
  std::mutex mu;
  std::vector<EgressAsk> asks;      // GUARDED_BY(mu)
  std::vector<EgressAnswerFn> done;  // GUARDED_BY(mu)
  std::optional<EgressAnswer> at_once;  // answer inside the hook (an earlier session-scoped decision)

  std::string Ask(const EgressAsk& a, EgressAnswerFn fn) {
    std::lock_guard lock(mu);
    asks.push_back(a);
    const std::string id = absl::StrCat("hr-", asks.size());
    if (at_once) {
      fn(*at_once);
      done.push_back(nullptr);
    } else {
      done.push_back(std::move(fn));
    }
    return id;
  }
  size_t count() {
    std::lock_guard lock(mu);
    return asks.size();
  }
  EgressAsk ask(size_t i) {
    std::lock_guard lock(mu);
    return asks.at(i);
  }
  // Answers question i from another thread, as Approvals' timer or an RPC handler would.
  void Answer(size_t i, EgressAnswer::Decision d, std::string reason = "") {
    EgressAnswerFn fn;
    {
      std::lock_guard lock(mu);
      fn = done.at(i);
    }
    std::thread([fn, d, reason] { fn(EgressAnswer{d, reason}); }).join();
  }
};

// True when nothing arrives on `fd` within `t` (the connection is open and silent).
bool Silent(int fd, milliseconds t = milliseconds(300)) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, static_cast<int>(t.count())) == 0;
}

class EgressAskTest : public EgressProxyTest {
 protected:
  void StartAsking(const std::vector<std::string>& allow, const std::vector<std::string>& ask,
                   const std::function<void(EgressProxyOptions&)>& tweak = {}) {
    StartProxy(allow, [&](EgressProxyOptions& o) {
      o.ask = *ParseEgressRules(ask);
      o.ask_hook = [this](const EgressAsk& a, EgressAnswerFn done) { return asker_.Ask(a, std::move(done)); };
      if (tweak) tweak(o);
    });
  }
  std::vector<EgressAudit> WithAction(const std::string& action) {
    std::lock_guard lock(mu_);
    std::vector<EgressAudit> out;
    for (const EgressAudit& a : audits_) {
      if (a.action == action) out.push_back(a);
    }
    return out;
  }
  FakeAsker asker_;
};

TEST_F(EgressAskTest, AnAskListedHostIsHeldUntilApprovedWhileOthersAreServed) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartAsking({"allowed.test"}, {"*.example.test"});
  const std::string dest = absl::StrCat("sub.example.test:", echo.port());
  UniqueFd held = Client();
  ASSERT_TRUE(SendAll(held.get(), absl::StrCat("CONNECT ", dest, " HTTP/1.1\r\nHost: x\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 1; }));
  const EgressAsk ask = asker_.ask(0);
  EXPECT_EQ(ask.destination, dest);
  EXPECT_EQ(ask.rule, "*.example.test");
  EXPECT_EQ(ask.call_id, kCallId);
  EXPECT_EQ(ask.summary, absl::StrCat("CONNECT ", dest));
  // Held: no answer, no upstream connection; the proxy serves another client meanwhile.
  EXPECT_TRUE(Silent(held.get()));
  EXPECT_EQ(echo.accepted(), 0);
  std::string head;
  UniqueFd other = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  ExpectEcho(other.get(), "meanwhile");
  std::vector<EgressAudit> asked = WithAction("egress_asked");
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].destination, dest);
  EXPECT_EQ(asked[0].rule, "*.example.test");
  EXPECT_EQ(asked[0].call_id, kCallId);
  EXPECT_EQ(asked[0].request_id, "hr-1");

  asker_.Answer(0, EgressAnswer::Decision::kApproved);
  EXPECT_EQ(ReadUntil(held.get(), "\r\n\r\n"), kEstablished);
  ExpectEcho(held.get(), "approved");
  std::vector<EgressAudit> approved = WithAction("egress_approved");
  ASSERT_EQ(approved.size(), 1u);
  EXPECT_EQ(approved[0].destination, dest);
  EXPECT_EQ(approved[0].rule, "*.example.test");
  EXPECT_EQ(approved[0].request_id, "hr-1");
  EXPECT_EQ(approved[0].call_id, kCallId);
  EXPECT_EQ(proxy_->stats().approved, 1u);
}

TEST_F(EgressAskTest, RejectedAndTimedOutAnswer403NamingTheReason) {
  TestServer http("127.0.0.2", EchoHandler(nullptr));
  StartAsking({}, {"example.test", "other.test"});
  UniqueFd a = Client();
  ASSERT_TRUE(SendAll(a.get(), absl::StrCat("GET http://example.test:", http.port(), "/x?y=1 HTTP/1.1\r\n\r\n")));
  UniqueFd b = Client();
  ASSERT_TRUE(SendAll(b.get(), absl::StrCat("CONNECT other.test:", http.port(), " HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 2; }));
  // Plain HTTP: the question shows the request line.
  const EgressAsk first = asker_.ask(0).destination == absl::StrCat("example.test:", http.port()) ? asker_.ask(0) : asker_.ask(1);
  EXPECT_EQ(first.summary, absl::StrCat("example.test:", http.port(), ": GET http://example.test:", http.port(),
                                        "/x?y=1 HTTP/1.1"));
  const size_t ia = asker_.ask(0).destination == first.destination ? 0 : 1;
  asker_.Answer(ia, EgressAnswer::Decision::kRejected, "rejected by local: not today");
  asker_.Answer(1 - ia, EgressAnswer::Decision::kTimedOut, "no decision within 1000 ms");
  bool eof = false;
  const std::string ra = ReadAll(a.get(), &eof);
  EXPECT_TRUE(StartsWith(ra, "HTTP/1.1 403 Forbidden\r\n")) << ra;
  EXPECT_NE(ra.find("egress_rejected: rejected by local: not today"), std::string::npos) << ra;
  const std::string rb = ReadAll(b.get(), &eof);
  EXPECT_TRUE(StartsWith(rb, "HTTP/1.1 403 Forbidden\r\n")) << rb;
  EXPECT_NE(rb.find("egress_timed_out: no decision within 1000 ms"), std::string::npos) << rb;
  EXPECT_EQ(http.accepted(), 0);
  ASSERT_EQ(WithAction("egress_rejected").size(), 1u);
  EXPECT_EQ(WithAction("egress_rejected")[0].destination, absl::StrCat("example.test:", http.port()));
  EXPECT_EQ(WithAction("egress_rejected")[0].rule, "example.test");
  ASSERT_EQ(WithAction("egress_timed_out").size(), 1u);
  EXPECT_EQ(WithAction("egress_timed_out")[0].destination, absl::StrCat("other.test:", http.port()));
  EXPECT_EQ(WithAction("egress_timed_out")[0].request_id, absl::StrCat("hr-", 2 - ia));  // question 1 - ia
  EXPECT_EQ(proxy_->stats().rejected, 2u);
}

TEST_F(EgressAskTest, AClientThatLeavesWhileHeldIsDroppedAndItsLaterAnswerIgnored) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  std::mutex canceled_mu;
  std::vector<std::string> canceled;
  StartAsking({}, {"example.test"}, [&](EgressProxyOptions& o) {
    o.ask_cancel = [&](const std::string& id) {
      std::lock_guard lock(canceled_mu);
      canceled.push_back(id);
    };
  });
  {
    UniqueFd held = Client();
    ASSERT_TRUE(SendAll(held.get(), absl::StrCat("CONNECT example.test:", echo.port(), " HTTP/1.1\r\n\r\n")));
    ASSERT_TRUE(WaitFor([&] { return asker_.count() == 1; }));
  }
  ASSERT_TRUE(WaitFor([&] { return proxy_->stats().active == 0; }));
  {
    // Nobody waits on the question any more: it is withdrawn.
    std::lock_guard lock(canceled_mu);
    EXPECT_EQ(canceled, std::vector<std::string>{"hr-1"});
  }
  asker_.Answer(0, EgressAnswer::Decision::kApproved);
  asker_.Answer(0, EgressAnswer::Decision::kRejected);  // a second answer: ignored too
  // The proxy is fine: a new question for the same destination is asked and answered.
  UniqueFd again = Client();
  ASSERT_TRUE(SendAll(again.get(), absl::StrCat("CONNECT example.test:", echo.port(), " HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 2; }));
  asker_.Answer(1, EgressAnswer::Decision::kApproved);
  EXPECT_EQ(ReadUntil(again.get(), "\r\n\r\n"), kEstablished);
  // The echo server counts the connection on its own thread, after the proxy's 200 may already be here.
  EXPECT_TRUE(WaitFor([&] { return echo.accepted() == 1; }));
  // An answer after the proxy is gone goes nowhere.
  UniqueFd last = Client();
  ASSERT_TRUE(SendAll(last.get(), absl::StrCat("CONNECT example.test:", echo.port(), " HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 3; }));
  proxy_.reset();
  asker_.Answer(2, EgressAnswer::Decision::kApproved);
}

TEST_F(EgressAskTest, ConnectionsToOneDestinationWaitOnOneQuestion) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartAsking({}, {"example.test"});
  std::vector<UniqueFd> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(Client());
    ASSERT_TRUE(SendAll(clients.back().get(), absl::StrCat("CONNECT example.test:", echo.port(), " HTTP/1.1\r\n\r\n")));
  }
  ASSERT_TRUE(WaitFor([&] { return proxy_->stats().active == 3 && asker_.count() == 1; }));
  EXPECT_TRUE(Silent(clients[2].get(), milliseconds(100)));
  EXPECT_EQ(asker_.count(), 1u);
  asker_.Answer(0, EgressAnswer::Decision::kApproved);
  for (UniqueFd& c : clients) {
    EXPECT_EQ(ReadUntil(c.get(), "\r\n\r\n"), kEstablished);
    ExpectEcho(c.get(), "each");
  }
  EXPECT_EQ(WithAction("egress_asked").size(), 1u);
  EXPECT_EQ(WithAction("egress_approved").size(), 1u);
}

TEST_F(EgressAskTest, AnAnswerGivenAtOnceIsNotAuditedAsAsked) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  asker_.at_once = EgressAnswer{EgressAnswer::Decision::kApproved, ""};
  StartAsking({}, {"example.test"});
  std::string head;
  UniqueFd fd = Tunnel(absl::StrCat("example.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  EXPECT_TRUE(WithAction("egress_asked").empty());
  ASSERT_EQ(WithAction("egress_approved").size(), 1u);
  EXPECT_EQ(WithAction("egress_approved")[0].request_id, "hr-1");
}

TEST_F(EgressAskTest, WithoutAHookAnAskListedHostIsRefused) {
  StartProxy({}, [](EgressProxyOptions& o) { o.ask = *ParseEgressRules({"example.test"}); });
  const std::string r = Exchange("CONNECT example.test:443 HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(StartsWith(r, "HTTP/1.1 403")) << r;
  EXPECT_NE(r.find("nobody to ask"), std::string::npos) << r;
}

TEST_F(EgressAskTest, OpenQuestionsAreCapped) {
  StartAsking({}, {"*.example.test", "other.test"}, [](EgressProxyOptions& o) { o.max_pending_asks = 1; });
  UniqueFd held = Client();
  ASSERT_TRUE(SendAll(held.get(), "CONNECT sub.example.test:443 HTTP/1.1\r\n\r\n"));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 1; }));
  const std::string r = Exchange("CONNECT other.test:443 HTTP/1.1\r\n\r\n");
  EXPECT_TRUE(StartsWith(r, "HTTP/1.1 403")) << r;
  EXPECT_NE(r.find("max_pending_asks"), std::string::npos) << r;
  EXPECT_EQ(asker_.count(), 1u);
}

TEST_F(EgressAskTest, AllowedDecisionsAreAuditedOncePerDestinationAndCall) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  std::string call = "call-1";
  std::mutex call_mu;
  StartProxy({"allowed.test", "*.example.test"}, [&](EgressProxyOptions& o) {
    o.current_call_id = [&] {
      std::lock_guard lock(call_mu);
      return call;
    };
  });
  std::string head;
  for (int i = 0; i < 3; ++i) {
    UniqueFd fd = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
    ASSERT_EQ(head, kEstablished);
  }
  UniqueFd sub = Tunnel(absl::StrCat("sub.example.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  {
    std::lock_guard lock(call_mu);
    call = "call-2";
  }
  UniqueFd later = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  const std::vector<EgressAudit> allowed = AllowedAudits();
  ASSERT_EQ(allowed.size(), 3u);
  EXPECT_EQ(allowed[0].destination, absl::StrCat("allowed.test:", echo.port()));
  EXPECT_EQ(allowed[0].rule, "allowed.test");
  EXPECT_EQ(allowed[0].call_id, "call-1");
  EXPECT_EQ(allowed[1].destination, absl::StrCat("sub.example.test:", echo.port()));
  EXPECT_EQ(allowed[1].rule, "*.example.test");
  EXPECT_EQ(allowed[2].call_id, "call-2");
  EXPECT_EQ(proxy_->stats().allowed, 5u);
}

TEST_F(EgressAskTest, DeniedAuditsNameTheRule) {
  StartProxy({"allowed.test"});
  Exchange("CONNECT evil.test:443 HTTP/1.1\r\n\r\n");
  Exchange("CONNECT 10.0.0.1:443 HTTP/1.1\r\n\r\n");
  const std::vector<EgressAudit> audits = Audits();
  ASSERT_EQ(audits.size(), 2u);
  EXPECT_EQ(audits[0].rule, "default deny");
  EXPECT_EQ(audits[1].rule, "default deny");
}

// A request's rules under the host's: what the host refuses stays refused, and what the host only asks about
// is asked about, though a request rule allows it.
TEST_F(EgressAskTest, TheCeilingRefusesWhatTheHostRulesRefuseAndAsksWhatTheyAsk) {
  TestServer echo("127.0.0.2", EchoHandler(nullptr));
  StartAsking({"*"}, {}, [](EgressProxyOptions& o) {
    EgressCeiling ceiling;
    ceiling.allow = *ParseEgressRules({"allowed.test"});
    ceiling.ask = *ParseEgressRules({"example.test"});
    o.ceiling = std::move(ceiling);
  });
  std::string head;
  UniqueFd ok = Tunnel(absl::StrCat("allowed.test:", echo.port()), &head);
  ASSERT_EQ(head, kEstablished);
  const std::string r = Exchange(absl::StrCat("CONNECT other.test:", echo.port(), " HTTP/1.1\r\n\r\n"));
  EXPECT_TRUE(StartsWith(r, "HTTP/1.1 403")) << r;
  EXPECT_NE(r.find("outside the host policy's rules"), std::string::npos) << r;
  ASSERT_EQ(Audits().size(), 1u);
  EXPECT_EQ(Audits()[0].rule, "host policy: default deny");
  EXPECT_TRUE(Resolved().size() == 1u) << "a name the host's rules do not name is not resolved";
  UniqueFd held = Client();
  ASSERT_TRUE(SendAll(held.get(), absl::StrCat("CONNECT example.test:", echo.port(), " HTTP/1.1\r\n\r\n")));
  ASSERT_TRUE(WaitFor([&] { return asker_.count() == 1; }));
  EXPECT_EQ(asker_.ask(0).rule, "example.test");
  EXPECT_TRUE(Silent(held.get()));
}

TEST(EgressProxyStartTest, RefusesASocketThatIsNotListening) {
  UniqueFd not_listening(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(StatusIs(EgressProxy::Start(std::move(not_listening), {}), absl::StatusCode::kInvalidArgument,
                       "not a listening socket"));
  EXPECT_TRUE(StatusIs(EgressProxy::Start(UniqueFd(), {}), absl::StatusCode::kInvalidArgument));
  uint16_t port;
  UniqueFd listen = Listen("127.0.0.1", &port);
  EgressProxyOptions options;
  options.max_connections = 0;
  EXPECT_TRUE(StatusIs(EgressProxy::Start(std::move(listen), std::move(options)), absl::StatusCode::kInvalidArgument,
                       "max_connections"));
}

// The pieces of HTTP/1 the proxy used to parse itself, now behind net/http1_parser.h.
TEST(Http1ParserTest, FindHeadEndFindsTheBlankLineAcrossReads) {
  const std::string head = "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\nBODY";
  EXPECT_EQ(http1::FindHeadEnd(head, 0), head.size() - 4);
  // Searched up to the middle of the CRLFCRLF before: the next search still finds it.
  EXPECT_EQ(http1::FindHeadEnd(head, head.size() - 6), head.size() - 4);
  EXPECT_EQ(http1::FindHeadEnd("GET / HTTP/1.1\r\nHost: a\r\n", 0), std::nullopt);
  EXPECT_EQ(http1::FirstLine(head), "GET http://a/ HTTP/1.1");
}

TEST(Http1ParserTest, ClassifyTunnelStartSeesAConnectAfterBlankLines) {
  std::string_view line;
  EXPECT_EQ(http1::ClassifyTunnelStart("\r\n \t", false, &line), http1::TunnelStart::kBlank);
  EXPECT_EQ(http1::ClassifyTunnelStart("\x16\x03\x01", false, &line), http1::TunnelStart::kNotConnect);
  EXPECT_EQ(http1::ClassifyTunnelStart("\r\nconn", false, &line), http1::TunnelStart::kUndecided);
  EXPECT_EQ(http1::ClassifyTunnelStart("\r\nconn", true, &line), http1::TunnelStart::kNotConnect);
  EXPECT_EQ(http1::ClassifyTunnelStart("\nConnect evil:443 HTTP/1.1\r\n", false, &line), http1::TunnelStart::kConnect);
  EXPECT_EQ(line, "Connect evil:443 HTTP/1.1");
}

TEST(Http1ParserTest, ErrorResponseClosesWithAOneLineBody) {
  EXPECT_EQ(http1::ErrorResponse(403, "egress proxy: denied"),
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 21\r\n"
            "Connection: close\r\n\r\negress proxy: denied\n");
}

}  // namespace
}  // namespace sbx::agent
