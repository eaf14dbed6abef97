#include "agent/egress/egress_proxy.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <stop_token>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "net/http1_parser.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Request parsing and the host and text helpers the rules share live in http1_parser.h.
using http1::BodyFramer;
using http1::CheckPartialHead;
using http1::EqualsIgnoreCase;
using http1::HostPort;
using http1::HttpError;
using http1::Ip;
using http1::IpToString;
using http1::IsDigits;
using http1::NormalizeName;
using http1::ParseHead;
using http1::ParseIp;
using http1::ParsePort;
using http1::Printable;
using http1::Request;

// ---------------------------------------------------------------------------------------------------------
// Addresses

std::optional<Ip> IpFromSockaddr(const sockaddr_storage& ss) {
  Ip ip;
  if (ss.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(ss);
    ip.family = AF_INET;
    std::memcpy(ip.bytes.data(), &sin.sin_addr, 4);
    return ip;
  }
  if (ss.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
      ip.family = AF_INET;
      std::memcpy(ip.bytes.data(), sin6.sin6_addr.s6_addr + 12, 4);
    } else {
      ip.family = AF_INET6;
      std::memcpy(ip.bytes.data(), sin6.sin6_addr.s6_addr, 16);
    }
    return ip;
  }
  return std::nullopt;
}

sockaddr_storage SockaddrFromIp(const Ip& ip, uint16_t port) {
  sockaddr_storage ss{};
  if (ip.family == AF_INET) {
    auto& sin = reinterpret_cast<sockaddr_in&>(ss);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    std::memcpy(&sin.sin_addr, ip.data(), 4);
  } else {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    std::memcpy(&sin6.sin6_addr, ip.data(), 16);
  }
  return ss;
}

socklen_t SockaddrLen(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}


bool PrefixEqual(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

int MaxPrefix(int family) { return family == AF_INET ? 32 : 128; }

// ---------------------------------------------------------------------------------------------------------
// Special address ranges

struct SpecialRange {
  IpNetwork network;
  std::string what;  // "a private address"
};

IpNetwork MakeNetwork(const Ip& ip, int prefix) {
  IpNetwork n;
  n.family = ip.family;
  n.prefix_len = prefix;
  const int whole = prefix / 8;
  for (int i = 0; i < 16; ++i) {
    if (i < whole) {
      n.address[i] = ip.bytes[i];
    } else if (i == whole && prefix % 8 != 0) {
      n.address[i] = static_cast<uint8_t>(ip.bytes[i] & (0xff << (8 - prefix % 8)));
    }
  }
  if (ip.family == AF_INET) std::fill(n.address.begin() + 4, n.address.end(), 0);
  return n;
}

// Most specific first, so the first match names the address best.
const std::vector<SpecialRange>& SpecialRanges() {
  static const std::vector<SpecialRange>* const kRanges = [] {
    struct Entry {
      const char* net;
      int prefix;
      const char* what;
    };
    static constexpr Entry kV4[] = {
        {"169.254.169.254", 32, "the cloud metadata address"},
        {"0.0.0.0", 8, "a 'this network' address"},
        {"10.0.0.0", 8, "a private address"},
        {"100.64.0.0", 10, "a carrier-grade NAT address"},
        {"127.0.0.0", 8, "a loopback address"},
        {"169.254.0.0", 16, "a link-local address"},
        {"172.16.0.0", 12, "a private address"},
        {"192.0.0.0", 24, "an IETF protocol address"},
        {"192.168.0.0", 16, "a private address"},
        {"198.18.0.0", 15, "a benchmarking address"},
        {"224.0.0.0", 4, "a multicast address"},
        {"240.0.0.0", 4, "a reserved address"},
    };
    static constexpr Entry kV6[] = {
        {"::", 128, "the unspecified address"},
        {"::1", 128, "a loopback address"},
        {"::", 96, "an IPv4-compatible address"},
        {"100::", 64, "a discard address"},
        {"fc00::", 7, "a unique local (private) address"},
        {"fe80::", 10, "a link-local address"},
        {"fec0::", 10, "a site-local address"},
        {"ff00::", 8, "a multicast address"},
    };
    auto* ranges = new std::vector<SpecialRange>;
    for (const Entry& e : kV4) ranges->push_back({MakeNetwork(*ParseIp(e.net), e.prefix), e.what});
    for (const Entry& e : kV6) ranges->push_back({MakeNetwork(*ParseIp(e.net), e.prefix), e.what});
    // The NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) forms of each IPv4 range.
    const Ip nat64 = *ParseIp("64:ff9b::");
    const Ip six_to_four = *ParseIp("2002::");
    for (const Entry& e : kV4) {
      const Ip v4 = *ParseIp(e.net);
      Ip a = nat64;
      std::memcpy(a.bytes.data() + 12, v4.data(), 4);
      ranges->push_back({MakeNetwork(a, 96 + e.prefix), absl::StrCat("the NAT64 form of ", e.what)});
      Ip b = six_to_four;
      std::memcpy(b.bytes.data() + 2, v4.data(), 4);
      ranges->push_back({MakeNetwork(b, 16 + e.prefix), absl::StrCat("the 6to4 form of ", e.what)});
    }
    return ranges;
  }();
  return *kRanges;
}

const SpecialRange* FirstSpecialRange(const Ip& ip) {
  for (const SpecialRange& r : SpecialRanges()) {
    if (r.network.Contains(ip.family, ip.data())) return &r;
  }
  return nullptr;
}


std::string StatusText(int status) {
  switch (status) {
    case 200:
      return "Connection established";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

std::string ErrorResponse(int status, std::string_view body_line) {
  const std::string body = absl::StrCat(ToAbsl(body_line), "\n");
  return absl::StrCat("HTTP/1.1 ", status, " ", StatusText(status),
                      "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

absl::StatusOr<std::vector<sockaddr_storage>> GetAddrInfo(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc == EAI_SYSTEM) return ErrnoToStatus(errno, absl::StrCat("resolving ", host));
  if (rc != 0) return absl::UnavailableError(absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
  std::vector<sockaddr_storage> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    out.push_back(ss);
  }
  freeaddrinfo(res);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// IpNetwork, rules, policy

bool IpNetwork::Contains(int other_family, const uint8_t* bytes) const {
  return other_family == family && PrefixEqual(address.data(), bytes, prefix_len);
}

bool IpNetwork::Covers(const IpNetwork& other) const {
  return other.family == family && other.prefix_len >= prefix_len && Contains(other.family, other.address.data());
}

std::string IpNetwork::ToString() const {
  Ip ip;
  ip.family = family;
  ip.bytes = address;
  return absl::StrCat(IpToString(ip), "/", prefix_len);
}

absl::StatusOr<EgressRule> ParseEgressRule(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  auto error = [&](std::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat("egress rule \"", Printable(text), "\": ", ToAbsl(problem)));
  };
  if (s.empty()) return error("empty rule");

  EgressRule rule;
  rule.text = std::string(s);
  std::string_view host;
  std::optional<std::string_view> port;
  bool bracketed = false;
  if (s[0] == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) return error("unclosed '['");
    bracketed = true;
    host = s.substr(1, close - 1);
    const std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return error("unexpected text after ']'");
      port = rest.substr(1);
    }
  } else if (std::count(s.begin(), s.end(), ':') >= 2) {
    host = s;  // IPv6 without a port
  } else if (const size_t colon = s.find(':'); colon != std::string_view::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  } else {
    host = s;
  }
  if (port) {
    std::optional<uint16_t> p = ParsePort(*port);
    if (!p) return error(absl::StrCat("port \"", Printable(*port), "\" is not a number from 1 to 65535"));
    rule.port = p;
  }
  if (host.empty()) return error("no host");

  if (host == "*") {
    if (bracketed) return error("'[...]' must hold an IPv6 address or network");
    rule.kind = EgressRule::Kind::kAnyHost;
    return rule;
  }
  const bool has_slash = host.find('/') != std::string_view::npos;
  if (has_slash || ParseIp(host, /*allow_v4=*/!bracketed)) {
    std::string_view address_text = host;
    int prefix = -1;
    std::string_view len;
    if (has_slash) {
      const size_t slash = host.find('/');
      address_text = host.substr(0, slash);
      len = host.substr(slash + 1);
    }
    std::optional<Ip> ip = ParseIp(address_text, /*allow_v4=*/!bracketed);
    if (!ip) return error(absl::StrCat("\"", Printable(address_text), "\" is not an IP address"));
    if (has_slash) {
      if (!IsDigits(len) || len.size() > 3)
        return error(absl::StrCat("prefix length \"", Printable(len), "\" is not a number"));
      prefix = std::stoi(std::string(len));
    }
    // An IPv4-mapped network ("::ffff:10.0.0.0/104") is taken as the IPv4 network it maps.
    const bool mapped = ip->family == AF_INET && address_text.find(':') != std::string_view::npos;
    if (mapped && prefix >= 0) {
      if (prefix < 96) return error("an IPv4-mapped network needs a prefix of at least 96");
      prefix -= 96;
    }
    if (prefix < 0) prefix = MaxPrefix(ip->family);
    if (prefix > MaxPrefix(ip->family)) {
      return error(absl::StrCat("prefix length ", prefix, " is longer than ", MaxPrefix(ip->family)));
    }
    IpNetwork network = MakeNetwork(*ip, prefix);
    if (network.address != ip->bytes) {
      return error(
          absl::StrCat("address has bits set past the /", prefix, " prefix (did you mean ", network.ToString(), "?)"));
    }
    rule.kind = EgressRule::Kind::kNetwork;
    rule.network = network;
    return rule;
  }
  if (bracketed) return error("'[...]' must hold an IPv6 address or network");
  std::string_view name = host;
  rule.kind = EgressRule::Kind::kDomain;
  if (name.size() >= 2 && name.substr(0, 2) == "*.") {
    rule.kind = EgressRule::Kind::kSubdomains;
    name.remove_prefix(2);
  }
  if (name.find('*') != std::string_view::npos) {
    return error("'*' is allowed only as the whole host or as a leading \"*.\" label");
  }
  absl::StatusOr<std::string> normalized = NormalizeName(name);
  if (!normalized.ok()) return error(std::string(normalized.status().message()));
  rule.domain = *std::move(normalized);
  return rule;
}

absl::StatusOr<std::vector<EgressRule>> ParseEgressRules(const std::vector<std::string>& texts) {
  std::vector<EgressRule> rules;
  for (const std::string& text : texts) {
    ASSIGN_OR_RETURN(EgressRule rule, ParseEgressRule(text));
    rules.push_back(std::move(rule));
  }
  return rules;
}

absl::StatusOr<IpNetwork> ParseIpNetwork(std::string_view text) {
  absl::StatusOr<EgressRule> rule = ParseEgressRule(text);
  if (!rule.ok() || rule->kind != EgressRule::Kind::kNetwork || rule->port) {
    return absl::InvalidArgumentError(absl::StrCat("\"", Printable(text),
                                                   "\" is not an IP network (\"10.0.0.0/8\", \"fd00::/8\", "
                                                   "\"192.0.2.1\"; no port)"));
  }
  return rule->network;
}

absl::StatusOr<std::vector<IpNetwork>> ReadHostNetworks() {
  std::vector<IpNetwork> out = {MakeNetwork(*ParseIp("127.0.0.0"), 8), MakeNetwork(*ParseIp("::1"), 128),
                                MakeNetwork(*ParseIp("0.0.0.0"), 32), MakeNetwork(*ParseIp("::"), 128)};
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return ErrnoToStatus(errno, "getifaddrs");
  for (const ifaddrs* ifa = list; ifa != nullptr; ifa = ifa->ifa_next) {
    if (ifa->ifa_addr == nullptr) continue;
    const int family = ifa->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, ifa->ifa_addr, family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
    const std::optional<Ip> ip = IpFromSockaddr(ss);
    if (!ip) continue;
    out.push_back(MakeNetwork(*ip, MaxPrefix(ip->family)));
    if (ip->family != AF_INET || ifa->ifa_netmask == nullptr) continue;
    // The subnet's network and broadcast addresses reach the host too (as far as TCP gets to them at all).
    uint32_t mask = 0, addr = 0;
    std::memcpy(&mask, &reinterpret_cast<const sockaddr_in*>(ifa->ifa_netmask)->sin_addr, 4);
    std::memcpy(&addr, ip->data(), 4);
    mask = ntohl(mask);
    addr = ntohl(addr);
    if (mask == 0xffffffffu || mask == 0xfffffffeu) continue;  // /32 and /31 have neither
    for (const uint32_t edge : {addr & mask, addr | ~mask}) {
      Ip e;
      e.family = AF_INET;
      const uint32_t be = htonl(edge);
      std::memcpy(e.bytes.data(), &be, 4);
      out.push_back(MakeNetwork(e, 32));
    }
  }
  freeifaddrs(list);
  return out;
}

EgressPolicy::EgressPolicy(std::vector<EgressRule> allow, std::vector<IpNetwork> deny, std::vector<EgressRule> ask)
    : allow_(std::move(allow)), deny_(std::move(deny)), ask_(std::move(ask)) {
  all_ = allow_;
  all_.insert(all_.end(), ask_.begin(), ask_.end());
}

namespace {
bool PortMatches(const EgressRule& r, uint16_t port) { return !r.port || *r.port == port; }

// The first name rule (exact, *.suffix or *) in `rules` matching host:port, or nullptr.
const EgressRule* NameRule(const std::vector<EgressRule>& rules, std::string_view host, bool host_is_address,
                           uint16_t port) {
  for (const EgressRule& r : rules) {
    if (!PortMatches(r, port)) continue;
    switch (r.kind) {
      case EgressRule::Kind::kAnyHost:
        return &r;
      case EgressRule::Kind::kDomain:
        if (!host_is_address && host == r.domain) return &r;
        break;
      case EgressRule::Kind::kSubdomains:
        if (!host_is_address && host.size() > r.domain.size() + 1 && host.ends_with(r.domain) &&
            host[host.size() - r.domain.size() - 1] == '.') {
          return &r;
        }
        break;
      case EgressRule::Kind::kNetwork:
        break;
    }
  }
  return nullptr;
}

// The first CIDR rule in `rules` matching `port` and containing the address, or nullptr.
const EgressRule* NetworkRule(const std::vector<EgressRule>& rules, const Ip& ip, uint16_t port) {
  for (const EgressRule& r : rules) {
    if (r.kind == EgressRule::Kind::kNetwork && PortMatches(r, port) && r.network.Contains(ip.family, ip.data())) {
      return &r;
    }
  }
  return nullptr;
}

// Whether a CIDR rule in `rules` matching `port` contains the address and lies wholly inside one of `ranges`
// that contains it.
bool NamedInside(const std::vector<EgressRule>& rules, int family, const uint8_t* bytes, uint16_t port,
                 const std::vector<IpNetwork>& ranges) {
  for (const EgressRule& r : rules) {
    if (r.kind != EgressRule::Kind::kNetwork || !PortMatches(r, port) || !r.network.Contains(family, bytes)) continue;
    for (const IpNetwork& range : ranges) {
      if (range.Contains(family, bytes) && range.Covers(r.network)) return true;
    }
  }
  return false;
}
}  // namespace

bool EgressRule::Covers(const EgressRule& other) const {
  if (port && other.port != port) return false;  // a port rule covers only rules with that same port
  switch (kind) {
    case Kind::kAnyHost:
      return other.kind != Kind::kNetwork;
    case Kind::kDomain:
      return other.kind == Kind::kDomain && other.domain == domain;
    case Kind::kSubdomains: {
      if (other.kind != Kind::kDomain && other.kind != Kind::kSubdomains) return false;
      const std::string& d = other.domain;
      if (other.kind == Kind::kSubdomains && d == domain) return true;  // *.x under *.x
      return d.size() > domain.size() + 1 && d.ends_with(domain) && d[d.size() - domain.size() - 1] == '.';
    }
    case Kind::kNetwork:
      return other.kind == Kind::kNetwork && network.Covers(other.network);
  }
  return false;
}

EgressPolicy::Verdict EgressPolicy::MayResolve(std::string_view host, uint16_t port) const {
  if (NameRule(all_, host, false, port) != nullptr) return {true, false, "", ""};
  for (const EgressRule& r : all_) {
    if (r.kind == EgressRule::Kind::kNetwork && PortMatches(r, port)) return {true, false, "", ""};
  }
  return {false, false, absl::StrCat("no allow rule matches ", HostPort(host, port)), "default deny"};
}

EgressPolicy::Verdict EgressPolicy::Check(std::string_view host, bool host_is_address, uint16_t port,
                                          const std::vector<sockaddr_storage>& addresses,
                                          const std::vector<IpNetwork>& host_networks) const {
  Verdict v = CheckWith(allow_, host, host_is_address, port, addresses, host_networks);
  if (v.allowed || ask_.empty()) return v;
  Verdict with_ask = CheckWith(all_, host, host_is_address, port, addresses, host_networks);
  if (!with_ask.allowed) {
    // Refused with the ask rules too: say why in their terms (a special range is the reason, not a missing
    // allow rule), unless no rule matched at all.
    return with_ask.rule == "default deny" ? v : with_ask;
  }
  // Allowed only with an ask rule: name the ask rule that matched (the name, else the first address that an
  // allow rule does not already cover).
  with_ask.allowed = false;
  with_ask.ask = true;
  with_ask.reason = absl::StrCat(HostPort(host, port), " needs a human's approval");
  if (const EgressRule* r = NameRule(ask_, host, host_is_address, port)) {
    with_ask.rule = r->text;
  } else {
    for (const sockaddr_storage& ss : addresses) {
      const Ip ip = *IpFromSockaddr(ss);
      if (NetworkRule(allow_, ip, port) != nullptr) continue;
      if (const EgressRule* n = NetworkRule(ask_, ip, port)) {
        with_ask.rule = n->text;
        break;
      }
    }
  }
  return with_ask;
}

EgressPolicy::Verdict EgressPolicy::CheckWith(const std::vector<EgressRule>& rules, std::string_view host,
                                              bool host_is_address, uint16_t port,
                                              const std::vector<sockaddr_storage>& addresses,
                                              const std::vector<IpNetwork>& host_networks) const {
  const std::string dest = HostPort(host, port);
  if (addresses.empty()) return {false, false, absl::StrCat(ToAbsl(host), " has no address"), "default deny"};
  const EgressRule* name_rule = NameRule(rules, host, host_is_address, port);
  std::string rule = name_rule != nullptr ? name_rule->text : "";
  for (const sockaddr_storage& ss : addresses) {
    const std::optional<Ip> ip = IpFromSockaddr(ss);
    if (!ip) {
      return {false, false, absl::StrCat(ToAbsl(host), " resolves to an address that is not IPv4 or IPv6"),
              "default deny"};
    }
    const std::string subject =
        host_is_address ? IpToString(*ip) : absl::StrCat(ToAbsl(host), " resolves to ", IpToString(*ip));
    const EgressRule* network_rule = NetworkRule(rules, *ip, port);
    if (name_rule == nullptr && network_rule == nullptr) {
      if (host_is_address) return {false, false, absl::StrCat("no allow rule matches ", dest), "default deny"};
      return {false, false, absl::StrCat(subject, ", which no allow rule matches on port ", port), "default deny"};
    }
    if (rule.empty()) rule = network_rule->text;
    const SpecialRange* special = FirstSpecialRange(*ip);
    if (special == nullptr) continue;
    bool named = false;
    for (const EgressRule& r : rules) {
      if (r.kind != EgressRule::Kind::kNetwork || !PortMatches(r, port) ||
          !r.network.Contains(ip->family, ip->data())) {
        continue;
      }
      for (const SpecialRange& range : SpecialRanges()) {
        if (range.network.Contains(ip->family, ip->data()) && range.network.Covers(r.network)) named = true;
      }
    }
    if (!named) {
      return {false, false,
              absl::StrCat(subject, ", ", special->what, " (", special->network.ToString(),
                           "), which only a CIDR rule inside that range can allow"),
              absl::StrCat("special range ", special->network.ToString())};
    }
  }
  // Steps 4 and 5, after the special ranges so their (more specific) reasons come first.
  for (const sockaddr_storage& ss : addresses) {
    const Ip ip = *IpFromSockaddr(ss);
    const std::string subject =
        host_is_address ? IpToString(ip) : absl::StrCat(ToAbsl(host), " resolves to ", IpToString(ip));
    const bool own = std::any_of(host_networks.begin(), host_networks.end(),
                                 [&](const IpNetwork& n) { return n.Contains(ip.family, ip.data()); });
    if (own && !NamedInside(rules, ip.family, ip.data(), port, host_networks)) {
      return {false, false,
              absl::StrCat(subject, ", the host's own address, which only a CIDR rule naming that address"
                                    " can allow (e.g. \"", IpToString(ip), "\")"),
              "host address"};
    }
    for (const IpNetwork& d : deny_) {
      if (d.Contains(ip.family, ip.data()) && !NamedInside(rules, ip.family, ip.data(), port, deny_)) {
        return {false, false,
                absl::StrCat(subject, ", in egress_deny_cidrs (", d.ToString(),
                             "), which only a CIDR rule inside that network can allow"),
                absl::StrCat("egress_deny_cidrs ", d.ToString())};
      }
    }
  }
  return {true, false, "", rule};
}

// ---------------------------------------------------------------------------------------------------------
// The proxy

namespace {

constexpr size_t kRelayBufferBytes = 64 << 10;     // per direction
constexpr auto kLinger = std::chrono::seconds(1);  // to write an answer and drain the client after it
constexpr auto kAcceptPause = milliseconds(100);   // after accept fails for lack of fds or memory
constexpr uint64_t kListenTag = 0;
constexpr uint64_t kWakeTag = 1;
constexpr int kMaxAcceptsPerWake = 64;
constexpr std::string_view kEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";

// Bytes waiting to be written, consumed from the front.
class Buffer {
 public:
  size_t size() const { return data_.size() - off_; }
  bool empty() const { return size() == 0; }
  std::string_view view() const { return std::string_view(data_).substr(off_); }
  void Append(std::string_view s) { data_.append(s.data(), s.size()); }
  void Consume(size_t n) {
    off_ += n;
    if (off_ == data_.size()) {
      Clear();
    } else if (off_ >= kRelayBufferBytes) {
      data_.erase(0, off_);
      off_ = 0;
    }
  }
  void Clear() {
    data_.clear();
    off_ = 0;
  }

 private:
  std::string data_;
  size_t off_ = 0;
};

enum class Phase {
  kHeader,      // reading the request header
  kResolving,   // a resolver thread has the name
  kAsking,      // held for a human: the ask hook has the question (no timer, no upstream)
  kConnecting,  // non-blocking connect to addresses[next_address]
  kRelay,       // bytes flow both ways
  kFinish,      // writing the proxy's own answer, then draining the client until EOF or the deadline
};

// One client connection and its upstream. Owned by the event loop.
struct Conn {
  uint64_t id = 0;
  UniqueFd client, upstream;
  uint32_t client_events = 0, upstream_events = 0;  // registered with epoll; 0: not registered
  Phase phase = Phase::kHeader;
  Clock::time_point deadline;  // its entry in timers_
  Clock::time_point last_activity;
  std::string head;     // kHeader: the bytes read so far
  Buffer up, down;      // client -> upstream; upstream -> client (or the proxy's own answer)
  size_t down_own = 0;  // bytes at the front of `down` that the proxy wrote (the 200), not counted
  bool client_eof = false, upstream_eof = false, upstream_shut = false, client_shut = false;
  Request req;
  std::string destination;                  // "host:port" once known
  std::string request_line;                 // plain HTTP: the client's request line (Printable), for a question
  std::string rule;                         // the rule that decided, once one did (audits)
  uint64_t question = 0;                    // kAsking: the question it waits on
  std::vector<sockaddr_storage> addresses;  // checked, port set
  size_t next_address = 0;
  std::string connect_error;
  bool tunnel_checked = false;    // the nested-CONNECT check has passed
  bool response_started = false;  // an upstream byte arrived
  BodyFramer body;
  bool dead = false;
};

enum class Action { kDenied, kNested, kBadRequest, kFailed, kRejected, kTimedOut };

const char* ActionName(Action a) {
  switch (a) {
    case Action::kDenied:
      return "egress_denied";
    case Action::kNested:
      return "egress_nested_connect";
    case Action::kBadRequest:
      return "egress_bad_request";
    case Action::kFailed:
      return "egress_failed";
    case Action::kRejected:
      return "egress_rejected";
    case Action::kTimedOut:
      return "egress_timed_out";
  }
  return "egress_unknown";
}

bool Transient(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

// Where the ask hook's answers land, from any thread. Shared with every `done` the hook holds, so an answer
// that comes after the proxy is gone finds `closed` and goes nowhere (the eventfd is written only while the
// proxy is alive: `closed` is set under `mu` before the fd is closed).
struct AskInbox {
  std::mutex mu;
  bool closed = false;                                   // GUARDED_BY(mu)
  int wake_fd = -1;                                      // the loop's eventfd; not owned
  std::deque<std::pair<uint64_t, EgressAnswer>> answers;  // GUARDED_BY(mu): question id, answer

  void Post(uint64_t question, EgressAnswer answer) {
    std::lock_guard lock(mu);
    if (closed) return;
    answers.emplace_back(question, std::move(answer));
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof(one));
  }
  bool Has(uint64_t question) {
    std::lock_guard lock(mu);
    return std::any_of(answers.begin(), answers.end(), [&](const auto& a) { return a.first == question; });
  }
};

// One question to the ask hook and the connections waiting on it.
struct Question {
  std::string key;          // destination + "\n" + rule
  std::string destination;
  std::string rule;
  std::string call_id;
  std::string request_id;
  std::vector<uint64_t> conns;
};

}  // namespace

class EgressProxy::Impl {
 public:
  Impl(UniqueFd listen, UniqueFd epoll, UniqueFd wake, EgressProxyOptions options)
      : options_(std::move(options)),
        policy_(options_.allow, options_.deny, options_.ask),
        listen_(std::move(listen)),
        epoll_(std::move(epoll)),
        wake_(std::move(wake)),
        scratch_(kRelayBufferBytes) {
    if (options_.ceiling) ceiling_.emplace(options_.ceiling->allow, options_.deny, options_.ceiling->ask);
    inbox_->wake_fd = wake_.get();
  }

  ~Impl() {
    {
      std::lock_guard lock(inbox_->mu);
      inbox_->closed = true;  // answers from now on go nowhere (the eventfd closes after this)
    }
    loop_.request_stop();
    Wake();
    if (loop_.joinable()) loop_.join();
    for (std::jthread& t : resolvers_) t.request_stop();
    resolve_cv_.notify_all();
    for (std::jthread& t : resolvers_) {
      if (t.joinable()) t.join();
    }
  }

  void StartThreads() {
    for (size_t i = 0; i < options_.resolver_threads; ++i) {
      resolvers_.emplace_back([this](std::stop_token stop) { ResolveLoop(stop); });
    }
    loop_ = std::jthread([this](std::stop_token stop) { Run(stop); });
  }

  Stats stats() const {
    Stats s;
    s.allowed = allowed_.load(std::memory_order_relaxed);
    s.denied = denied_.load(std::memory_order_relaxed);
    s.failed = failed_.load(std::memory_order_relaxed);
    s.bad_requests = bad_requests_.load(std::memory_order_relaxed);
    s.overloaded = overloaded_.load(std::memory_order_relaxed);
    s.asked = asked_.load(std::memory_order_relaxed);
    s.approved = approved_.load(std::memory_order_relaxed);
    s.rejected = rejected_.load(std::memory_order_relaxed);
    s.bytes_up = bytes_up_.load(std::memory_order_relaxed);
    s.bytes_down = bytes_down_.load(std::memory_order_relaxed);
    s.active = active_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  struct Resolved {
    uint64_t id;
    absl::StatusOr<std::vector<sockaddr_storage>> result;
  };

  // ---- threads

  void Wake() {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));  // EAGAIN: already pending
  }

  void ResolveLoop(std::stop_token stop) {
    while (!stop.stop_requested()) {
      std::pair<uint64_t, std::string> job;
      {
        std::unique_lock lock(resolve_mu_);
        if (!resolve_cv_.wait(lock, stop, [this] { return !jobs_.empty(); })) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      absl::StatusOr<std::vector<sockaddr_storage>> result = options_.resolve(job.second);
      {
        std::lock_guard lock(resolve_mu_);
        resolved_.push_back({job.first, std::move(result)});
      }
      Wake();
    }
  }

  void CancelResolve(uint64_t id) {
    std::lock_guard lock(resolve_mu_);
    std::erase_if(jobs_, [id](const auto& job) { return job.first == id; });
  }

  void Run(std::stop_token stop) {
    epoll_event events[64];
    while (!stop.stop_requested()) {
      Clock::time_point next = Clock::time_point::max();
      if (!timers_.empty()) next = timers_.begin()->first;
      if (accept_paused_) next = std::min(next, accept_resume_);
      int timeout = -1;
      if (next != Clock::time_point::max()) {
        const auto wait = std::chrono::ceil<milliseconds>(next - Clock::now()).count();
        timeout = static_cast<int>(std::clamp<int64_t>(wait, 0, 60000));
      }
      const int n = epoll_wait(epoll_.get(), events, 64, timeout);
      if (n < 0 && errno != EINTR) break;  // only on a bug (EBADF, EINVAL)
      for (int i = 0; i < n; ++i) Dispatch(events[i].data.u64, events[i].events);
      const Clock::time_point now = Clock::now();
      if (accept_paused_ && now >= accept_resume_) {
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u64 = kListenTag;
        epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &ev);
        accept_paused_ = false;
      }
      while (!timers_.empty() && timers_.begin()->first <= now) {
        const uint64_t id = timers_.begin()->second;
        timers_.erase(timers_.begin());
        auto it = conns_.find(id);
        if (it == conns_.end() || it->second->dead) continue;
        OnTimeout(*it->second, now);
        if (!it->second->dead) Pump(*it->second);
      }
      for (uint64_t id : dead_) conns_.erase(id);
      dead_.clear();
    }
    for (auto& [id, conn] : conns_) Close(*conn);
    conns_.clear();
    dead_.clear();
  }

  void Dispatch(uint64_t tag, uint32_t events) {
    if (tag == kListenTag) return Accept();
    if (tag == kWakeTag) {
      uint64_t count;
      [[maybe_unused]] ssize_t n = ::read(wake_.get(), &count, sizeof(count));
      ProcessResolved();
      return ProcessAnswers();
    }
    auto it = conns_.find(tag >> 1);
    if (it == conns_.end() || it->second->dead) return;
    Conn& c = *it->second;
    const bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR);
    const bool writable = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
    if ((tag & 1) == 0) {  // client
      switch (c.phase) {
        case Phase::kHeader:
          if (readable) ReadHead(c);
          break;
        case Phase::kRelay:
          if (readable && (c.client_events & EPOLLIN)) ReadClient(c);
          if (!c.dead && writable && (c.client_events & EPOLLOUT)) WriteClient(c);
          break;
        case Phase::kFinish:
          if (!c.down.empty()) {
            if (writable) WriteClient(c);
          } else if (readable) {
            DrainClient(c);
          }
          break;
        case Phase::kAsking:
          // Only EPOLLRDHUP (or a hang-up) is registered: the client left while held. Its answer, when it
          // comes, finds no connection.
          return Close(c);
        default:
          break;
      }
    } else {  // upstream
      if (c.phase == Phase::kConnecting) {
        if (readable || writable) FinishConnect(c);
      } else if (c.phase == Phase::kRelay) {
        if (readable && (c.upstream_events & EPOLLIN)) ReadUpstream(c);
        if (!c.dead && writable && (c.upstream_events & EPOLLOUT)) WriteUpstream(c);
      }
    }
    if (!c.dead) Pump(c);
  }

  // ---- connection lifecycle

  void Accept() {
    for (int i = 0; i < kMaxAcceptsPerWake; ++i) {
      const int fd = accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued; retry later instead of spinning.
        epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listen_.get(), nullptr);
        accept_paused_ = true;
        accept_resume_ = Clock::now() + kAcceptPause;
        return;
      }
      UniqueFd client(fd);
      if (conns_.size() - dead_.size() >= options_.max_connections) {
        Overloaded(std::move(client));
        continue;
      }
      overload_audited_ = false;
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // not TCP (a test's unix socket): ignored
      auto conn = std::make_unique<Conn>();
      Conn& c = *conn;
      c.id = next_id_++;
      c.client = std::move(client);
      c.last_activity = Clock::now();
      conns_.emplace(c.id, std::move(conn));
      active_.fetch_add(1, std::memory_order_relaxed);
      SetDeadline(c, c.last_activity + options_.header_timeout);
      UpdateInterest(c);
    }
  }

  void Overloaded(UniqueFd client) {
    overloaded_.fetch_add(1, std::memory_order_relaxed);
    if (!overload_audited_) {
      overload_audited_ = true;
      Audit(nullptr, "egress_overloaded", "",
            absl::StrCat(options_.max_connections, " connections are open (max_connections); refusing more"));
    }
    const std::string answer = ErrorResponse(503, "egress proxy: too many connections");
    [[maybe_unused]] ssize_t n = send(client.get(), answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(client.get(), SHUT_WR);
  }

  void Close(Conn& c) {
    if (c.dead) return;
    if (c.phase == Phase::kAsking) Withdraw(c);
    c.dead = true;
    timers_.erase({c.deadline, c.id});
    if (c.phase == Phase::kResolving) CancelResolve(c.id);
    c.client.Reset();
    c.upstream.Reset();
    c.client_events = c.upstream_events = 0;
    dead_.push_back(c.id);
    active_.fetch_sub(1, std::memory_order_relaxed);
  }

  void ResetUpstream(Conn& c) {
    c.upstream.Reset();  // closing removes it from the epoll set
    c.upstream_events = 0;
  }

  void SetDeadline(Conn& c, Clock::time_point when) {
    timers_.erase({c.deadline, c.id});
    c.deadline = when;
    timers_.insert({when, c.id});
  }

  void Audit(const Conn* c, const char* action, std::string destination, std::string detail) {
    EgressAudit a;
    a.destination = c ? c->destination : std::move(destination);
    a.action = action;
    a.detail = std::move(detail);
    if (c) a.rule = c->rule;
    if (options_.current_call_id) a.call_id = options_.current_call_id();
    Emit(std::move(a));
  }

  void Emit(EgressAudit a) {
    if (options_.audit) options_.audit(a);
  }

  // Ends the request with the proxy's own answer (or, once upstream bytes reached the client, just closes),
  // audited as `action`.
  void Respond(Conn& c, int status, Action action, std::string detail) {
    switch (action) {
      case Action::kDenied:
      case Action::kNested:
        denied_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Action::kBadRequest:
        bad_requests_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Action::kFailed:
        failed_.fetch_add(1, std::memory_order_relaxed);
        break;
      case Action::kRejected:
      case Action::kTimedOut:
        denied_.fetch_add(1, std::memory_order_relaxed);
        rejected_.fetch_add(1, std::memory_order_relaxed);
        break;
    }
    const bool answered = action == Action::kRejected || action == Action::kTimedOut;
    const std::string body =
        absl::StrCat("egress proxy: ", c.destination.empty() ? "" : absl::StrCat(c.destination, ": "),
                     answered ? absl::StrCat(ActionName(action), ": ") : "", detail);
    // A human's answer is audited once per question (AnswerQuestion), not per connection waiting on it.
    if (!answered) Audit(&c, ActionName(action), "", std::move(detail));
    if (c.response_started || c.phase == Phase::kFinish) return Close(c);
    if (c.phase == Phase::kResolving) CancelResolve(c.id);
    // In a tunnel the rest of the 200 may still be unsent: the answer follows it.
    if (!(c.phase == Phase::kRelay && c.req.connect)) c.down.Clear();
    c.down.Append(ErrorResponse(status, body));
    ResetUpstream(c);
    c.up.Clear();
    c.head.clear();
    c.phase = Phase::kFinish;
    SetDeadline(c, Clock::now() + kLinger);
  }

  void OnTimeout(Conn& c, Clock::time_point now) {
    switch (c.phase) {
      case Phase::kHeader:
        return Respond(c, 408, Action::kBadRequest,
                       absl::StrCat("request header not complete within ", options_.header_timeout.count(), " ms"));
      case Phase::kResolving:
      case Phase::kConnecting:
        return Respond(c, 504, Action::kFailed,
                       absl::StrCat(c.phase == Phase::kResolving ? "resolving " : "connecting to ", c.req.host,
                                    " took longer than ", options_.connect_timeout.count(), " ms"));
      case Phase::kRelay:
        if (c.last_activity + options_.idle_timeout > now)
          return SetDeadline(c, c.last_activity + options_.idle_timeout);
        if (!c.req.connect && !c.response_started) {
          return Respond(c, 504, Action::kFailed,
                         absl::StrCat("no response within ", options_.idle_timeout.count(), " ms"));
        }
        return Close(c);
      case Phase::kFinish:
        return Close(c);
      case Phase::kAsking:
        return;  // no timer is set while held: the hook's deadline bounds it
    }
  }

  // ---- request header

  void ReadHead(Conn& c) {
    const size_t room = options_.max_header_bytes - c.head.size();
    const ssize_t n = recv(c.client.get(), scratch_.data(), std::min(room, scratch_.size()), 0);
    if (n < 0) {
      if (!Transient(errno)) Close(c);
      return;
    }
    if (n == 0) return Close(c);  // gone before a whole header: nobody to answer
    const size_t old = c.head.size();
    c.head.append(scratch_.data(), static_cast<size_t>(n));
    if (std::optional<HttpError> e = CheckPartialHead(c.head)) {
      return Respond(c, e->status, Action::kBadRequest, std::move(e->detail));
    }
    const size_t end = c.head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
    if (end == std::string::npos) {
      if (c.head.size() >= options_.max_header_bytes) {
        return Respond(c, 431, Action::kBadRequest,
                       absl::StrCat("request header larger than ", options_.max_header_bytes, " bytes"));
      }
      return;
    }
    if (std::optional<HttpError> e = ParseHead(std::string_view(c.head).substr(0, end + 4), &c.req)) {
      return Respond(c, e->status, Action::kBadRequest, std::move(e->detail));
    }
    c.destination = HostPort(c.req.host, c.req.port);
    if (!c.req.connect) c.request_line = Printable(std::string_view(c.head).substr(0, c.head.find("\r\n")), 300);
    const std::string leftover = c.head.substr(end + 4);
    std::string().swap(c.head);
    if (c.req.connect) {
      c.up.Append(leftover);
    } else {
      c.up.Append(c.req.upstream_head);
      std::string().swap(c.req.upstream_head);
      c.body = BodyFramer(c.req.body, c.req.content_length);
      const size_t k = c.body.Feed(leftover);
      if (c.body.error()) return Respond(c, 400, Action::kBadRequest, "malformed chunked request body");
      c.up.Append(std::string_view(leftover).substr(0, k));
    }
    BeginResolve(c);
  }

  // ---- decision and connect

  void BeginResolve(Conn& c) {
    c.phase = Phase::kResolving;
    SetDeadline(c, Clock::now() + options_.connect_timeout);
    if (c.req.address) return Decide(c, {SockaddrFromIp(*c.req.address, c.req.port)});
    EgressPolicy::Verdict verdict = policy_.MayResolve(c.req.host, c.req.port);
    if (verdict.allowed && ceiling_) {
      verdict = ceiling_->MayResolve(c.req.host, c.req.port);
      if (!verdict.allowed) {
        verdict.reason = absl::StrCat("outside the host policy's rules: ", verdict.reason);
        verdict.rule = absl::StrCat("host policy: ", verdict.rule);
      }
    }
    if (!verdict.allowed) {
      c.rule = verdict.rule;
      return Respond(c, 403, Action::kDenied, verdict.reason);
    }
    {
      std::lock_guard lock(resolve_mu_);
      jobs_.emplace_back(c.id, c.req.host);
    }
    resolve_cv_.notify_one();
  }

  void ProcessResolved() {
    std::deque<Resolved> done;
    {
      std::lock_guard lock(resolve_mu_);
      done.swap(resolved_);
    }
    for (Resolved& r : done) {
      auto it = conns_.find(r.id);
      if (it == conns_.end() || it->second->dead || it->second->phase != Phase::kResolving) continue;
      Conn& c = *it->second;
      if (!r.result.ok()) {
        Respond(c, 502, Action::kFailed,
                absl::StrCat("cannot resolve ", c.req.host, ": ", r.result.status().message()));
      } else if (r.result->empty()) {
        Respond(c, 502, Action::kFailed, absl::StrCat("cannot resolve ", c.req.host, ": no addresses"));
      } else {
        Decide(c, *r.result);
      }
      if (!c.dead) Pump(c);
    }
  }

  // The host's own networks, re-read when older than kHostAddressesMaxAge (interfaces and addresses come and
  // go; a netlink dump per decision is cheap, this bounds it under a flood of requests).
  const absl::StatusOr<std::vector<IpNetwork>>& HostNetworks() {
    const Clock::time_point now = Clock::now();
    if (!host_networks_read_ || now - *host_networks_read_ >= kHostAddressesMaxAge || !host_networks_.ok()) {
      host_networks_ = ReadHostNetworks();
      host_networks_read_ = now;
    }
    return host_networks_;
  }

  void Decide(Conn& c, const std::vector<sockaddr_storage>& resolved) {
    const absl::StatusOr<std::vector<IpNetwork>>& host = HostNetworks();
    if (!host.ok()) {
      // Fail closed: without the host's addresses no destination can be shown not to be the host.
      return Respond(c, 502, Action::kFailed,
                     absl::StrCat("cannot read the host's own addresses (", host.status().message(), ")"));
    }
    EgressPolicy::Verdict verdict = policy_.Check(c.req.host, c.req.address.has_value(), c.req.port, resolved, *host);
    if ((verdict.allowed || verdict.ask) && ceiling_) {
      // The host's rules over the request's (see "Ceiling"): the lower of the two decisions stands.
      const EgressPolicy::Verdict host_verdict =
          ceiling_->Check(c.req.host, c.req.address.has_value(), c.req.port, resolved, *host);
      if (!host_verdict.allowed && !host_verdict.ask) {
        verdict = host_verdict;
        verdict.reason = absl::StrCat("outside the host policy's rules: ", host_verdict.reason);
        verdict.rule = absl::StrCat("host policy: ", host_verdict.rule);
      } else if (verdict.allowed && host_verdict.ask) {
        verdict = host_verdict;
      }
    }
    c.rule = verdict.rule;
    if (!verdict.allowed && !verdict.ask) return Respond(c, 403, Action::kDenied, verdict.reason);
    c.addresses.clear();
    for (const sockaddr_storage& ss : resolved) {
      const sockaddr_storage a = SockaddrFromIp(*IpFromSockaddr(ss), c.req.port);
      const bool seen = std::any_of(c.addresses.begin(), c.addresses.end(),
                                    [&](const sockaddr_storage& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; });
      if (!seen) c.addresses.push_back(a);
    }
    if (verdict.ask) return Hold(c);
    AuditAllowed(c);
    StartConnect(c);
  }

  void StartConnect(Conn& c) {
    c.phase = Phase::kConnecting;
    c.next_address = 0;
    TryConnect(c);
  }

  // egress_allowed, once per destination and tool call (see the header).
  void AuditAllowed(const Conn& c) {
    if (!options_.audit) return;
    const std::string call_id = options_.current_call_id ? options_.current_call_id() : "";
    std::string key = absl::StrCat(c.destination, "\n", call_id);
    if (allowed_audited_.count(key) != 0 || allowed_audited_.size() >= kMaxAllowedAuditKeys) return;
    allowed_audited_.insert(std::move(key));
    EgressAudit a;
    a.destination = c.destination;
    a.action = "egress_allowed";
    a.rule = c.rule;
    a.call_id = call_id;
    a.detail = absl::StrCat("allowed by \"", c.rule, "\"");
    Emit(std::move(a));
  }

  // ---- the ask gate

  // Holds `c` for a human: joins the open question about its destination and rule, or asks a new one.
  void Hold(Conn& c) {
    timers_.erase({c.deadline, c.id});  // the hook's deadline bounds the wait, not connect_timeout
    if (!options_.ask_hook) {
      return Respond(c, 403, Action::kDenied,
                     absl::StrCat(c.destination, " needs a human's approval (rule \"", c.rule,
                                  "\") and this proxy has nobody to ask"));
    }
    const std::string key = absl::StrCat(c.destination, "\n", c.rule);
    if (auto it = question_by_key_.find(key); it != question_by_key_.end()) {
      questions_[it->second].conns.push_back(c.id);
      c.phase = Phase::kAsking;
      c.question = it->second;
      return;
    }
    if (questions_.size() >= options_.max_pending_asks) {
      return Respond(c, 403, Action::kDenied,
                     absl::StrCat(options_.max_pending_asks,
                                  " destinations are already waiting for a human's approval (max_pending_asks)"));
    }
    c.phase = Phase::kAsking;
    const uint64_t qid = next_question_++;
    c.question = qid;
    Question& q = questions_[qid];
    q.key = key;
    q.destination = c.destination;
    q.rule = c.rule;
    q.call_id = options_.current_call_id ? options_.current_call_id() : "";
    q.conns.push_back(c.id);
    question_by_key_[key] = qid;
    EgressAsk ask;
    ask.destination = c.destination;
    ask.rule = c.rule;
    ask.call_id = q.call_id;
    ask.summary = c.req.connect ? absl::StrCat("CONNECT ", c.destination)
                                : absl::StrCat(c.destination, ": ", c.request_line);
    asked_.fetch_add(1, std::memory_order_relaxed);
    // `q` may not survive the hook (it only posts to the inbox, but keep no reference across a callback).
    std::string request_id = options_.ask_hook(
        ask, [inbox = inbox_, qid](EgressAnswer answer) { inbox->Post(qid, std::move(answer)); });
    auto it = questions_.find(qid);
    if (it == questions_.end()) return;
    it->second.request_id = std::move(request_id);
    if (inbox_->Has(qid)) return;  // decided at once (an earlier session-scoped decision): nobody was asked
    EgressAudit a;
    a.destination = it->second.destination;
    a.action = "egress_asked";
    a.rule = it->second.rule;
    a.call_id = it->second.call_id;
    a.request_id = it->second.request_id;
    a.detail = absl::StrCat("waiting for a human's approval: ", ask.summary);
    Emit(std::move(a));
  }

  // `c` (held) is going away: when nobody else waits on its question, the question is withdrawn.
  void Withdraw(const Conn& c) {
    auto it = questions_.find(c.question);
    if (it == questions_.end()) return;
    std::erase(it->second.conns, c.id);
    if (!it->second.conns.empty()) return;
    const std::string request_id = std::move(it->second.request_id);
    question_by_key_.erase(it->second.key);
    questions_.erase(it);
    if (options_.ask_cancel && !request_id.empty()) options_.ask_cancel(request_id);
  }

  void ProcessAnswers() {
    std::deque<std::pair<uint64_t, EgressAnswer>> answers;
    {
      std::lock_guard lock(inbox_->mu);
      answers.swap(inbox_->answers);
    }
    for (auto& [qid, answer] : answers) {
      auto it = questions_.find(qid);
      if (it == questions_.end()) continue;  // answered twice: the first answer stands
      Question q = std::move(it->second);
      questions_.erase(it);
      question_by_key_.erase(q.key);
      AnswerQuestion(q, answer);
    }
  }

  void AnswerQuestion(const Question& q, const EgressAnswer& answer) {
    std::vector<Conn*> waiting;
    for (uint64_t id : q.conns) {
      auto it = conns_.find(id);
      if (it != conns_.end() && !it->second->dead && it->second->phase == Phase::kAsking) {
        waiting.push_back(it->second.get());
      }
    }
    EgressAudit a;
    a.destination = q.destination;
    a.rule = q.rule;
    a.call_id = q.call_id;
    a.request_id = q.request_id;
    const std::string connections =
        absl::StrCat(waiting.size(), waiting.size() == 1 ? " connection" : " connections", " waiting");
    switch (answer.decision) {
      case EgressAnswer::Decision::kApproved:
        a.action = "egress_approved";
        a.detail = absl::StrCat("approved (", connections, ")");
        break;
      case EgressAnswer::Decision::kRejected:
        a.action = "egress_rejected";
        a.detail = absl::StrCat(answer.reason.empty() ? "rejected" : answer.reason, " (", connections, ")");
        break;
      case EgressAnswer::Decision::kTimedOut:
        a.action = "egress_timed_out";
        a.detail = absl::StrCat(answer.reason.empty() ? "no decision in time" : answer.reason, " (", connections, ")");
        break;
    }
    Emit(std::move(a));
    for (Conn* c : waiting) {
      if (answer.decision == EgressAnswer::Decision::kApproved) {
        approved_.fetch_add(1, std::memory_order_relaxed);
        SetDeadline(*c, Clock::now() + options_.connect_timeout);
        StartConnect(*c);
      } else {
        const bool timed_out = answer.decision == EgressAnswer::Decision::kTimedOut;
        Respond(*c, 403, timed_out ? Action::kTimedOut : Action::kRejected,
                answer.reason.empty() ? (timed_out ? "no decision in time" : "rejected") : answer.reason);
      }
      if (!c->dead) Pump(*c);
    }
  }

  void TryConnect(Conn& c) {
    for (; c.next_address < c.addresses.size(); ++c.next_address) {
      const sockaddr_storage ss = options_.connect_address_for_testing
                                      ? options_.connect_address_for_testing(c.addresses[c.next_address])
                                      : c.addresses[c.next_address];
      const int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        c.connect_error = std::strerror(errno);
        continue;
      }
      c.upstream.Reset(fd);
      c.upstream_events = 0;
      if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), SockaddrLen(ss)) == 0) return Connected(c);
      if (errno == EINPROGRESS) return;  // Pump registers EPOLLOUT
      c.connect_error = absl::StrCat(IpToString(*IpFromSockaddr(ss)), ": ", std::strerror(errno));
      ResetUpstream(c);
    }
    Respond(c, 502, Action::kFailed, absl::StrCat("cannot connect (", c.connect_error, ")"));
  }

  void FinishConnect(Conn& c) {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c.upstream.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == 0) return Connected(c);
    c.connect_error = absl::StrCat(IpToString(*IpFromSockaddr(c.addresses[c.next_address])), ": ", std::strerror(err));
    ResetUpstream(c);
    ++c.next_address;
    TryConnect(c);
  }

  void Connected(Conn& c) {
    allowed_.fetch_add(1, std::memory_order_relaxed);
    const int one = 1;
    setsockopt(c.upstream.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c.phase = Phase::kRelay;
    c.last_activity = Clock::now();
    SetDeadline(c, c.last_activity + options_.idle_timeout);
    if (c.req.connect) {
      c.down.Append(kEstablished);
      c.down_own = kEstablished.size();
      CheckTunnel(c);
    }
  }

  // ---- relay

  // The first client bytes in a tunnel must not be a CONNECT request (see the header).
  void CheckTunnel(Conn& c) {
    const std::string_view v = c.up.view();
    size_t i = 0;
    while (i < v.size() && (v[i] == '\r' || v[i] == '\n' || v[i] == ' ' || v[i] == '\t')) ++i;
    const std::string_view rest = v.substr(i);
    constexpr std::string_view kConnect = "CONNECT ";
    if (rest.empty()) {
      if (c.client_eof) {
        c.tunnel_checked = true;
      } else if (c.up.size() >= kRelayBufferBytes) {
        Respond(c, 403, Action::kNested, "the tunnel opened with a buffer full of blank lines");
      }
      return;
    }
    const size_t n = std::min(rest.size(), kConnect.size());
    if (!EqualsIgnoreCase(rest.substr(0, n), kConnect.substr(0, n)) || (n < kConnect.size() && c.client_eof)) {
      c.tunnel_checked = true;
      return;
    }
    if (n < kConnect.size()) return;  // "CONN": wait for more
    const std::string_view line = rest.substr(0, std::min(rest.find_first_of("\r\n"), size_t{200}));
    Respond(c, 403, Action::kNested,
            absl::StrCat("a CONNECT request inside the tunnel is not allowed (\"", Printable(line), "\")"));
  }

  bool ForwardAllowed(const Conn& c) const { return !c.req.connect || c.tunnel_checked; }

  void ReadClient(Conn& c) {
    const size_t room = kRelayBufferBytes - std::min(c.up.size(), kRelayBufferBytes);
    if (room == 0) return;
    const ssize_t n = recv(c.client.get(), scratch_.data(), room, 0);
    if (n < 0) {
      if (!Transient(errno)) Close(c);
      return;
    }
    if (n == 0) {
      c.client_eof = true;
      if (c.req.connect && !c.tunnel_checked) CheckTunnel(c);
      return;
    }
    c.last_activity = Clock::now();
    const std::string_view data(scratch_.data(), static_cast<size_t>(n));
    if (c.req.connect) {
      c.up.Append(data);
      if (!c.tunnel_checked) CheckTunnel(c);
      return;
    }
    const size_t k = c.body.Feed(data);
    if (c.body.error()) return Respond(c, 400, Action::kBadRequest, "malformed chunked request body");
    c.up.Append(data.substr(0, k));  // bytes after the body are dropped
  }

  void WriteUpstream(Conn& c) {
    const std::string_view v = c.up.view();
    const ssize_t n = send(c.upstream.get(), v.data(), v.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (!Transient(errno)) UpstreamFailed(c, errno);
      return;
    }
    c.up.Consume(static_cast<size_t>(n));
    bytes_up_.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
    c.last_activity = Clock::now();
  }

  void ReadUpstream(Conn& c) {
    const size_t room = kRelayBufferBytes - std::min(c.down.size(), kRelayBufferBytes);
    if (room == 0) return;
    const ssize_t n = recv(c.upstream.get(), scratch_.data(), room, 0);
    if (n < 0) {
      if (!Transient(errno)) UpstreamFailed(c, errno);
      return;
    }
    if (n == 0) {
      c.upstream_eof = true;
      if (!c.req.connect && !c.response_started) {
        Respond(c, 502, Action::kFailed, "the server closed the connection without a response");
      }
      return;
    }
    c.response_started = true;
    c.last_activity = Clock::now();
    c.down.Append(std::string_view(scratch_.data(), static_cast<size_t>(n)));
  }

  void UpstreamFailed(Conn& c, int err) {
    if (!c.req.connect && !c.response_started) {
      return Respond(c, 502, Action::kFailed, absl::StrCat("the server failed: ", std::strerror(err)));
    }
    Close(c);
  }

  void WriteClient(Conn& c) {
    const std::string_view v = c.down.view();
    const ssize_t n = send(c.client.get(), v.data(), v.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (!Transient(errno)) Close(c);
      return;
    }
    const size_t sent = static_cast<size_t>(n);
    const size_t own = std::min(sent, c.down_own);
    c.down_own -= own;
    if (c.phase == Phase::kRelay) bytes_down_.fetch_add(sent - own, std::memory_order_relaxed);
    c.down.Consume(sent);
    c.last_activity = Clock::now();
  }

  void DrainClient(Conn& c) {
    const ssize_t n = recv(c.client.get(), scratch_.data(), scratch_.size(), 0);
    if (n == 0 || (n < 0 && !Transient(errno))) Close(c);
  }

  // Moves what can move without waiting, passes half-closes on, ends finished connections, and updates the
  // epoll interest. Called after every event on a connection.
  void Pump(Conn& c) {
    if (c.phase == Phase::kRelay) {
      if (!c.up.empty() && ForwardAllowed(c) && !(c.upstream_events & EPOLLOUT)) WriteUpstream(c);
      if (!c.dead && !c.down.empty() && !(c.client_events & EPOLLOUT)) WriteClient(c);
      if (c.dead || c.phase != Phase::kRelay) return Pump2(c);
      // Client done sending: pass it on (plain HTTP: only a body cut short; a complete one needs no EOF).
      if (c.client_eof && c.up.empty() && !c.upstream_shut && (c.req.connect || !c.body.done())) {
        shutdown(c.upstream.get(), SHUT_WR);
        c.upstream_shut = true;
      }
      if (c.upstream_eof && c.down.empty()) {
        if (!c.req.connect) {
          // The response is complete: close upstream, then the client (after draining it).
          ResetUpstream(c);
          c.phase = Phase::kFinish;
          SetDeadline(c, Clock::now() + kLinger);
        } else {
          if (!c.client_shut) {
            shutdown(c.client.get(), SHUT_WR);
            c.client_shut = true;
          }
          if (c.client_eof && c.up.empty()) return Close(c);
        }
      }
    }
    Pump2(c);
  }

  void Pump2(Conn& c) {
    if (c.dead) return;
    if (c.phase == Phase::kFinish) {
      if (!c.down.empty() && !(c.client_events & EPOLLOUT)) WriteClient(c);
      if (c.dead) return;
      if (c.down.empty() && !c.client_shut) {
        shutdown(c.client.get(), SHUT_WR);
        c.client_shut = true;
      }
    }
    UpdateInterest(c);
  }

  void UpdateInterest(Conn& c) {
    uint32_t ce = 0, ue = 0;
    switch (c.phase) {
      case Phase::kHeader:
        ce = EPOLLIN;
        break;
      case Phase::kResolving:
        break;
      case Phase::kAsking:
        ce = EPOLLRDHUP;  // only to see the client leave; its bytes wait in the socket until approved
        break;
      case Phase::kConnecting:
        ue = EPOLLOUT;
        break;
      case Phase::kRelay:
        if (!c.client_eof && c.up.size() < kRelayBufferBytes && (c.req.connect || !c.body.done())) ce |= EPOLLIN;
        if (!c.down.empty()) ce |= EPOLLOUT;
        if (!c.upstream_eof && c.down.size() < kRelayBufferBytes) ue |= EPOLLIN;
        if (!c.up.empty() && ForwardAllowed(c)) ue |= EPOLLOUT;
        break;
      case Phase::kFinish:
        ce = c.down.empty() ? EPOLLIN : EPOLLOUT;
        break;
    }
    SetInterest(c.client, c.id << 1, &c.client_events, ce);
    SetInterest(c.upstream, c.id << 1 | 1, &c.upstream_events, ue);
  }

  // Registers `fd` for `wanted` (level-triggered). An fd with nothing wanted is taken out of the set, so a
  // hang-up the loop cannot act on yet does not wake it over and over.
  void SetInterest(const UniqueFd& fd, uint64_t tag, uint32_t* current, uint32_t wanted) {
    if (!fd.valid()) {
      *current = 0;
      return;
    }
    if (*current == wanted) return;
    epoll_event ev{};
    ev.events = wanted;
    ev.data.u64 = tag;
    if (wanted == 0) {
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
    } else {
      epoll_ctl(epoll_.get(), *current == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd.get(), &ev);
    }
    *current = wanted;
  }

  const EgressProxyOptions options_;
  const EgressPolicy policy_;
  UniqueFd listen_, epoll_, wake_;

  // Event loop thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<uint64_t> dead_;  // closed during this iteration; erased at its end
  std::set<std::pair<Clock::time_point, uint64_t>> timers_;
  uint64_t next_id_ = 1;  // tags: id << 1 | side, so ids from 1 never collide with kListenTag/kWakeTag
  bool accept_paused_ = false;
  Clock::time_point accept_resume_;
  bool overload_audited_ = false;
  std::vector<char> scratch_;
  absl::StatusOr<std::vector<IpNetwork>> host_networks_ = std::vector<IpNetwork>{};
  std::optional<EgressPolicy> ceiling_;  // the host's rules over a request's (options_.ceiling)
  std::set<std::string> allowed_audited_;  // "destination\ncall id" pairs audited as egress_allowed
  std::map<uint64_t, Question> questions_;  // open questions to the ask hook, by id
  std::map<std::string, uint64_t> question_by_key_;
  uint64_t next_question_ = 1;
  const std::shared_ptr<AskInbox> inbox_ = std::make_shared<AskInbox>();
  std::optional<Clock::time_point> host_networks_read_;  // nullopt: never read

  std::mutex resolve_mu_;
  std::condition_variable_any resolve_cv_;
  std::deque<std::pair<uint64_t, std::string>> jobs_;  // GUARDED_BY(resolve_mu_)
  std::deque<Resolved> resolved_;                      // GUARDED_BY(resolve_mu_)

  std::atomic<uint64_t> allowed_{0}, denied_{0}, failed_{0}, bad_requests_{0}, overloaded_{0}, bytes_up_{0},
      bytes_down_{0}, active_{0}, asked_{0}, approved_{0}, rejected_{0};

  std::vector<std::jthread> resolvers_;
  std::jthread loop_;
};

EgressProxy::EgressProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EgressProxy::~EgressProxy() = default;

EgressProxy::Stats EgressProxy::stats() const { return impl_->stats(); }

absl::StatusOr<std::unique_ptr<EgressProxy>> EgressProxy::Start(UniqueFd listen_fd, EgressProxyOptions options) {
  if (!listen_fd.valid()) return absl::InvalidArgumentError("egress proxy: no listening socket");
  int accepting = 0;
  socklen_t len = sizeof(accepting);
  if (getsockopt(listen_fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0) {
    return Annotate(ErrnoToStatus(errno, "getsockopt(SO_ACCEPTCONN)"), "egress proxy: the listen fd");
  }
  if (!accepting) return absl::InvalidArgumentError("egress proxy: the listen fd is not a listening socket");
  if (options.max_connections == 0) return absl::InvalidArgumentError("egress proxy: max_connections is 0");
  if (options.resolver_threads == 0 || options.resolver_threads > 64) {
    return absl::InvalidArgumentError("egress proxy: resolver_threads must be 1 to 64");
  }
  if (options.max_header_bytes < 1024) {
    return absl::InvalidArgumentError("egress proxy: max_header_bytes must be at least 1024");
  }
  if (options.connect_timeout.count() <= 0 || options.idle_timeout.count() <= 0 ||
      options.header_timeout.count() <= 0) {
    return absl::InvalidArgumentError("egress proxy: timeouts must be positive");
  }
  if (!options.resolve) options.resolve = GetAddrInfo;

  const int flags = fcntl(listen_fd.get(), F_GETFL);
  if (flags < 0 || fcntl(listen_fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "egress proxy: fcntl(O_NONBLOCK) on the listen fd");
  }
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoToStatus(errno, "egress proxy: epoll_create1");
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) return ErrnoToStatus(errno, "egress proxy: eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listen_fd.get(), &ev) != 0) {
    return ErrnoToStatus(errno, "egress proxy: epoll_ctl(listen fd)");
  }
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0) {
    return ErrnoToStatus(errno, "egress proxy: epoll_ctl(eventfd)");
  }
  auto impl = std::make_unique<Impl>(std::move(listen_fd), std::move(epoll), std::move(wake), std::move(options));
  impl->StartThreads();
  return std::unique_ptr<EgressProxy>(new EgressProxy(std::move(impl)));
}

}  // namespace sbx::agent
