// Network mode EGRESS end to end: the real daemon runs a file session whose only way out is the agent's proxy
// on the jail's loopback (HTTP_PROXY is set); upstream test servers listen on the host's loopback.
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/http_server.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;

// An upstream on `ip` answering every request with `body`; it records the request heads it got.
class Upstream : public HttpServer {
 public:
  explicit Upstream(const char* ip, std::string body = "hello from upstream")
      : HttpServer(ip, [body = std::move(body)](const std::string&) {
          return HttpResponse("200 OK", "text/html", body);
        }) {}
};

// The built-in file (or another) policy with network EGRESS and the given rules.
std::string EgressPolicy(const std::vector<std::string>& allow, const char* base = SBX_FILE_POLICY,
                         const std::vector<std::string>& ask = {}) {
  return PolicyWithEgress(base, allow, ask);
}

// Fetches argv[1] through the proxy (for every host: NO_PROXY would send localhost straight to the jail's
// own loopback).
constexpr char kFetch[] =
    "import os, sys, urllib.request, urllib.error\n"
    "os.environ.pop('no_proxy', None); os.environ.pop('NO_PROXY', None)\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())\n"
    "except urllib.error.HTTPError as e:\n"
    "    print('HTTP', e.code)\n"
    "except Exception as e:\n"
    "    print('ERROR', type(e).__name__, e)\n";

class EgressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    allowed_ = std::make_unique<Upstream>("127.0.0.2");
    denied_ = std::make_unique<Upstream>("127.0.0.3");
    dir_ = std::filesystem::temp_directory_path() / ("sbx-egress-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    const std::string policy =
        EgressPolicy({"127.0.0.2/32:" + std::to_string(allowed_->port()), "localhost", "example.invalid"});
    ASSERT_FALSE(policy.empty()) << "policies/file.textproto has no network { mode: NONE } block to replace";
    std::ofstream(dir_ + "/file.textproto") << policy;
    host_ip_ = HostIPv4();
    if (!host_ip_.empty()) {
      on_host_ip_ = std::make_unique<Upstream>(
          host_ip_.c_str(), "<html><body>hello from upstream<form action=/submit><input id=v name=v>"
                            "<button id=go>go</button></form></body></html>");
      std::ofstream(dir_ + "/browser.textproto")
          << EgressPolicy({host_ip_ + "/32:" + std::to_string(on_host_ip_->port())}, SBX_BROWSER_POLICY);
    }
    Daemon::Options o;
    o.config_lines = {"policy_dir: \"" + dir_ + "\""};
    daemon_ = std::make_unique<Daemon>(o);
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
    pb::Session session;
    grpc::Status status = CreateSession(stub_.get(), pb::FILE, &session);
    ASSERT_TRUE(status.ok()) << status.error_message() << daemon_->Log();
    id_ = session.id();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  CallResult Fetch(const std::string& url) { return RunExec(stub_.get(), id_, {"python3", "-c", kFetch, url}); }

  std::vector<pb::Audit> Audits() {
    return SessionAudits(stub_.get(), id_);
  }

  std::string CallIdOf(const CallResult& r) { return r.finished.call_id(); }

  std::unique_ptr<Upstream> allowed_, denied_, on_host_ip_;
  std::string host_ip_;
  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
  std::string id_;
};

TEST_F(EgressTest, AllowedHostLoadsThroughTheProxy) {
  CallResult r = Fetch("http://127.0.0.2:" + std::to_string(allowed_->port()) + "/page?q=1");
  EXPECT_EQ(r.out, "hello from upstream\n") << r.err;
  ASSERT_EQ(allowed_->requests().size(), 1u);
  // The proxy sends origin-form upstream.
  EXPECT_EQ(allowed_->requests()[0].rfind("GET /page?q=1 HTTP/1.1\r\n", 0), 0u) << allowed_->requests()[0];
  // The one audit event is the decision that let it through, naming the host policy's rule.
  std::vector<pb::Audit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].action(), "egress_allowed");
  EXPECT_EQ(audits[0].destination(), "127.0.0.2:" + std::to_string(allowed_->port()));
  EXPECT_EQ(audits[0].rule(), "127.0.0.2/32:" + std::to_string(allowed_->port()));
  EXPECT_EQ(audits[0].call_id(), CallIdOf(r));
  // Without an egress section in the request, the session applies the host policy's rules.
  grpc::ClientContext ctx;
  pb::GetRequest get;
  get.set_session_id(id_);
  pb::Session session;
  ASSERT_TRUE(stub_->Get(&ctx, get, &session).ok());
  EXPECT_EQ(session.egress().source(), pb::EffectiveEgress::HOST);
  EXPECT_THAT(session.egress().allow(), ::testing::Contains("127.0.0.2/32:" + std::to_string(allowed_->port())));
}

TEST_F(EgressTest, DeniedHostGets403AndOneAuditEventNamingItAndTheCall) {
  const std::string dest = "127.0.0.3:" + std::to_string(denied_->port());
  CallResult r = Fetch("http://" + dest + "/");
  EXPECT_EQ(r.out, "HTTP 403\n") << r.err;
  EXPECT_TRUE(denied_->requests().empty());
  std::vector<pb::Audit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].action(), "egress_denied");
  EXPECT_EQ(audits[0].destination(), dest);
  EXPECT_EQ(audits[0].call_id(), CallIdOf(r));
  EXPECT_EQ(audits[0].rule(), "default deny");
}

// A workload denied in a loop cannot grow the agent without bound: past 1000 audit events, one more says so.
TEST_F(EgressTest, AuditEventsAreBoundedPerSession) {
  const std::string script =
      "import socket, sys\n"
      "for i in range(1100):\n"
      "    s = socket.create_connection(('127.0.0.1', 3128))\n"
      "    s.sendall(('CONNECT 127.0.0.3:%s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' % sys.argv[1]).encode())\n"
      "    s.recv(1024)\n"
      "    s.close()\n"
      "print('done')\n";
  CallResult r = RunExec(stub_.get(), id_, {"python3", "-c", script, std::to_string(denied_->port())});
  ASSERT_EQ(r.out, "done\n") << r.err;
  size_t denied = 0, limit = 0;
  for (const pb::Audit& a : Audits()) {
    denied += a.action() == "egress_denied" ? 1 : 0;
    limit += a.action() == "audit_limit" ? 1 : 0;
  }
  EXPECT_EQ(denied, 1000u);
  EXPECT_EQ(limit, 1u);
  EXPECT_TRUE(denied_->requests().empty());
}

TEST_F(EgressTest, ANameResolvingToLoopbackIsRefusedThoughARuleNamesTheName) {
  CallResult r = Fetch("http://localhost:" + std::to_string(allowed_->port()) + "/");
  EXPECT_EQ(r.out, "HTTP 403\n") << r.err;
  std::vector<pb::Audit> audits = Audits();
  ASSERT_EQ(audits.size(), 1u);
  EXPECT_EQ(audits[0].action(), "egress_denied");
  EXPECT_THAT(audits[0].detail(), HasSubstr("127.0.0.1"));
}

TEST_F(EgressTest, ATunnelCannotCarryASecondConnect) {
  const std::string script =
      "import socket, sys\n"
      "s = socket.create_connection(('127.0.0.1', 3128))\n"
      "s.sendall(('CONNECT 127.0.0.2:%s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' % sys.argv[1]).encode())\n"
      "print(s.recv(1024).split(b'\\r\\n')[0].decode())\n"
      "s.sendall(('CONNECT 127.0.0.3:%s HTTP/1.1\\r\\nHost: y\\r\\n\\r\\n' % sys.argv[2]).encode())\n"
      "rest = b''\n"
      "while True:\n"
      "    d = s.recv(1024)\n"
      "    if not d: break\n"
      "    rest += d\n"
      "print('closed', b'hello from upstream' in rest)\n";
  CallResult r = RunExec(stub_.get(), id_,
                         {"python3", "-c", script, std::to_string(allowed_->port()), std::to_string(denied_->port())});
  EXPECT_THAT(r.out, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(r.out, HasSubstr("closed False"));
  // Neither upstream saw the nested request.
  for (const std::string& req : allowed_->requests()) EXPECT_THAT(req, ::testing::Not(HasSubstr("CONNECT")));
  EXPECT_TRUE(denied_->requests().empty());
  bool nested = false;
  for (const pb::Audit& a : Audits()) nested = nested || a.action() == "egress_nested_connect";
  EXPECT_TRUE(nested);
}

TEST_F(EgressTest, RawSocketsGoNowhereAndTheJailHasNoDns) {
  const std::string script =
      "import socket, sys\n"
      "for host, port in (('127.0.0.2', int(sys.argv[1])), ('198.51.100.7', 80)):\n"
      "    try:\n"
      "        socket.create_connection((host, port), timeout=3)\n"
      "        print(host, 'connected')\n"
      "    except OSError as e:\n"
      "        print(host, 'refused' if isinstance(e, ConnectionRefusedError) else 'unreachable')\n"
      "try:\n"
      "    socket.getaddrinfo('example.invalid', 80)\n"
      "    print('dns works')\n"
      "except OSError:\n"
      "    print('no dns')\n";
  CallResult r = RunExec(stub_.get(), id_, {"python3", "-c", script, std::to_string(allowed_->port())});
  // 127.0.0.2 inside the jail is the jail's own loopback, where nothing listens.
  EXPECT_THAT(r.out, HasSubstr("127.0.0.2 refused"));
  EXPECT_THAT(r.out, HasSubstr("198.51.100.7 unreachable"));
  EXPECT_THAT(r.out, HasSubstr("no dns"));
  EXPECT_TRUE(allowed_->requests().empty());
}

TEST_F(EgressTest, ABrowserSessionBrowsesThroughTheProxyOnly) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  if (host_ip_.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 address for the test's upstream";
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::BROWSER);
  pb::Session browser;
  grpc::Status status = stub_->Create(&ctx, req, &browser);
  ASSERT_TRUE(status.ok()) << status.error_message() << daemon_->Log();
  const auto act = [&](const pb::BrowserAction& a) {
    pb::ToolCall call;
    *call.mutable_browser() = a;
    return RunCall(stub_.get(), browser.id(), call);
  };
  pb::BrowserAction nav;
  nav.mutable_navigate()->set_url("http://" + host_ip_ + ":" + std::to_string(on_host_ip_->port()) + "/from-chromium");
  CallResult loaded = act(nav);
  ASSERT_TRUE(loaded.finished.has_result()) << loaded.finished.DebugString();
  pb::BrowserAction content;
  content.mutable_content()->set_text(true);
  EXPECT_THAT(act(content).finished.result().browser().content(), HasSubstr("hello from upstream"));
  bool seen = false;
  for (const std::string& r : on_host_ip_->requests()) seen = seen || r.rfind("GET /from-chromium ", 0) == 0;
  EXPECT_TRUE(seen);
  // A form: typed into, submitted, and the server receives the value.
  pb::BrowserAction type;
  type.mutable_type()->set_text("typed in a jail");
  type.mutable_type()->set_selector("#v");
  ASSERT_TRUE(act(type).finished.has_result());
  pb::BrowserAction click;
  click.mutable_click()->set_selector("#go");
  ASSERT_TRUE(act(click).finished.has_result());
  pb::BrowserAction wait;
  wait.mutable_wait_for()->set_text("hello from upstream");
  wait.mutable_wait_for()->set_timeout_ms(10000);
  act(wait);
  bool submitted = false;
  for (int i = 0; i < 100 && !submitted; ++i) {
    for (const std::string& r : on_host_ip_->requests()) {
      submitted = submitted || r.rfind("GET /submit?v=typed+in+a+jail ", 0) == 0;
    }
    if (!submitted) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(submitted);
  // A port the policy does not name: the proxy answers 403 and the session gets an audit event.
  const std::string dest = host_ip_ + ":" + std::to_string(denied_->port());
  nav.mutable_navigate()->set_url("http://" + dest + "/");
  act(nav);
  grpc::ClientContext ectx;
  pb::EventsRequest ereq;
  ereq.set_session_id(browser.id());
  auto reader = stub_->Events(&ectx, ereq);
  pb::Event e;
  int denied = 0;
  while (reader->Read(&e)) denied += e.has_audit() && e.audit().destination() == dest ? 1 : 0;
  EXPECT_GE(denied, 1);  // Chromium may ask again for the same page (a retry, its favicon): at least once
}

// ---------------------------------------------------------------------------------------------------------
// Per-request egress: the host policy's rules are the ceiling (loopback servers on 127.0.0.2 and 127.0.0.3,
// the host allowing 127.0.0.0/30 on any port and asking about 127.0.0.4/30, where 127.0.0.5 serves).

class EgressRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    a_ = std::make_unique<Upstream>("127.0.0.2", "hello from a");
    b_ = std::make_unique<Upstream>("127.0.0.3", "hello from b");
    asked_ = std::make_unique<Upstream>("127.0.0.5", "hello from asked");
    dir_ = std::filesystem::temp_directory_path() / ("sbx-egress-req-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    const std::string policy = EgressPolicy({"127.0.0.0/30"}, SBX_FILE_POLICY, {"127.0.0.4/30"});
    ASSERT_FALSE(policy.empty());
    std::ofstream(dir_ + "/file.textproto") << policy << ApprovalLines();
    Daemon::Options o;
    o.config_lines = {"policy_dir: \"" + dir_ + "\""};
    daemon_ = std::make_unique<Daemon>(o);
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Extra host policy text (the approval gates' deadline for the ask tests).
  virtual std::string ApprovalLines() { return ""; }

  std::string A() const { return "127.0.0.2:" + std::to_string(a_->port()); }
  std::string B() const { return "127.0.0.3:" + std::to_string(b_->port()); }
  std::string Asked() const { return "127.0.0.5:" + std::to_string(asked_->port()); }

  grpc::Status Create(const std::vector<std::string>& allow, const std::vector<std::string>& ask, pb::Session* out,
                      pb::EgressRequest::Default def = pb::EgressRequest::DENY) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::FILE);
    req.mutable_egress()->mutable_allow()->Add(allow.begin(), allow.end());
    req.mutable_egress()->mutable_ask()->Add(ask.begin(), ask.end());
    req.mutable_egress()->set_default_(def);
    return stub_->Create(&ctx, req, out);
  }
  CallResult Fetch(const std::string& id, const std::string& dest) {
    return RunExec(stub_.get(), id, {"python3", "-c", kFetch, "http://" + dest + "/"});
  }
  std::vector<pb::Audit> Audits(const std::string& id) {
    grpc::ClientContext ctx;
    pb::EventsRequest req;
    req.set_session_id(id);
    auto reader = stub_->Events(&ctx, req);
    std::vector<pb::Audit> out;
    pb::Event e;
    while (reader->Read(&e)) {
      if (e.has_audit()) out.push_back(e.audit());
    }
    return out;
  }
  // The one audit event with `action` and `destination`; fails the test unless there is exactly one.
  pb::Audit OneAudit(const std::string& id, const std::string& action, const std::string& destination) {
    std::vector<pb::Audit> found;
    for (const pb::Audit& a : Audits(id)) {
      if (a.action() == action && a.destination() == destination) found.push_back(a);
    }
    EXPECT_EQ(found.size(), 1u) << action << " " << destination;
    return found.empty() ? pb::Audit() : found[0];
  }

  std::unique_ptr<Upstream> a_, b_, asked_;
  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

TEST_F(EgressRequestTest, ARequestAllowListLetsItsDestinationThroughAndNothingElse) {
  pb::Session s;
  grpc::Status status = Create({"127.0.0.2/32:" + std::to_string(a_->port())}, {}, &s);
  ASSERT_TRUE(status.ok()) << status.error_message() << daemon_->Log();
  CallResult ok = Fetch(s.id(), A());
  EXPECT_EQ(ok.out, "hello from a\n") << ok.err;
  // 127.0.0.3 is inside the host's rules, but not the request's.
  CallResult denied = Fetch(s.id(), B());
  EXPECT_EQ(denied.out, "HTTP 403\n") << denied.err;
  EXPECT_TRUE(b_->requests().empty());
  const pb::Audit allowed = OneAudit(s.id(), "egress_allowed", A());
  EXPECT_EQ(allowed.rule(), "127.0.0.2/32:" + std::to_string(a_->port()));
  EXPECT_EQ(allowed.call_id(), ok.finished.call_id());
  const pb::Audit refused = OneAudit(s.id(), "egress_denied", B());
  EXPECT_EQ(refused.rule(), "default deny");
  EXPECT_EQ(refused.call_id(), denied.finished.call_id());
  // Get shows the rules in force and where they came from.
  grpc::ClientContext ctx;
  pb::GetRequest get;
  get.set_session_id(s.id());
  pb::Session got;
  ASSERT_TRUE(stub_->Get(&ctx, get, &got).ok());
  EXPECT_EQ(got.egress().source(), pb::EffectiveEgress::REQUEST);
  EXPECT_THAT(got.egress().allow(), ::testing::ElementsAre("127.0.0.2/32:" + std::to_string(a_->port())));
  EXPECT_EQ(got.egress().default_(), pb::EgressRequest::DENY);
}

TEST_F(EgressRequestTest, ARuleOutsideTheHostCeilingIsRefusedAtCreateNamingIt) {
  struct Case {
    std::vector<std::string> allow, ask;
    std::string named;
  } cases[] = {
      {{"example.com"}, {}, "egress.allow[0]: rule \"example.com\""},
      {{"127.0.0.2/32", "127.0.0.0/24"}, {}, "egress.allow[1]: rule \"127.0.0.0/24\""},
      {{"*"}, {}, "rule \"*\""},
      {{"127.0.0.5/32"}, {}, "egress.allow[0]: rule \"127.0.0.5/32\""},  // the host only asks about it
      {{}, {"10.0.0.0/8"}, "egress.ask[0]: rule \"10.0.0.0/8\""},
  };
  for (const Case& c : cases) {
    pb::Session s;
    grpc::Status status = Create(c.allow, c.ask, &s);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << c.named;
    EXPECT_THAT(status.error_message(), HasSubstr(c.named));
  }
  // Asking about what the host asks about is no wider.
  pb::Session s;
  grpc::Status status = Create({}, {"127.0.0.5/32"}, &s);
  EXPECT_TRUE(status.ok()) << status.error_message();
  // A malformed rule is INVALID_ARGUMENT, naming it.
  status = Create({"10.0.0.1/8"}, {}, &s);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("10.0.0.1/8"));
  // sandboxctl's flags build the same section.
  int rc = 0;
  RunCtl(*daemon_, {"create", "--allow", "example.com"}, &rc);
  EXPECT_NE(rc, 0);
  const std::string id = RunCtl(*daemon_, {"create", "--allow", "127.0.0.2/32", "--ask", "127.0.0.5/32",
                                           "--egress-default", "ask"}, &rc);
  ASSERT_EQ(rc, 0) << id;
  const std::string shown = RunCtl(*daemon_, {"-o", "json", "get", id.substr(0, id.find_first_of(" \n"))}, &rc);
  EXPECT_THAT(shown, HasSubstr("127.0.0.5/32"));
  EXPECT_THAT(shown, HasSubstr("REQUEST"));
  EXPECT_THAT(shown, HasSubstr("ASK"));
}

TEST_F(EgressRequestTest, TwoSessionsWithDifferentListsStayApart) {
  pb::Session one, two;
  ASSERT_TRUE(Create({"127.0.0.2/32"}, {}, &one).ok());
  ASSERT_TRUE(Create({"127.0.0.3/32"}, {}, &two).ok());
  EXPECT_EQ(Fetch(one.id(), A()).out, "hello from a\n");
  EXPECT_EQ(Fetch(one.id(), B()).out, "HTTP 403\n");
  EXPECT_EQ(Fetch(two.id(), B()).out, "hello from b\n");
  EXPECT_EQ(Fetch(two.id(), A()).out, "HTTP 403\n");
  EXPECT_EQ(a_->requests().size(), 1u);
  EXPECT_EQ(b_->requests().size(), 1u);
  EXPECT_EQ(OneAudit(one.id(), "egress_denied", B()).rule(), "default deny");
  EXPECT_EQ(OneAudit(two.id(), "egress_denied", A()).rule(), "default deny");
}

// The ask gate, wired to the session's human approvals (host approvals timeout 30 s, a request may shorten
// it; query tokens are secrets).
class EgressApprovalTest : public EgressRequestTest {
 protected:
  std::string ApprovalLines() override {
    return "\napprovals { timeout_ms: 30000 secret_patterns: \"token=[^ &]+\" }\n";
  }

  // A file session asking about 127.0.0.5/32 (the request's ask list), with `timeout_ms` for its approvals.
  std::string CreateAsking(uint64_t timeout_ms = 0) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::FILE);
    req.mutable_egress()->add_ask("127.0.0.5/32");
    if (timeout_ms != 0) req.mutable_approvals()->set_timeout_ms(timeout_ms);
    pb::Session s;
    grpc::Status status = stub_->Create(&ctx, req, &s);
    EXPECT_TRUE(status.ok()) << status.error_message() << daemon_->Log();
    return s.id();
  }

  // Runs, on a thread, a workload that sends a plain GET for `dest` through the proxy, records in ./state
  // whether anything came back within a second ("silent" or "early"), then prints the whole answer.
  std::thread StartHeldFetch(const std::string& id, const std::string& dest, CallResult* out) {
    const std::string script =
        "import socket, sys\n"
        "s = socket.create_connection(('127.0.0.1', 3128))\n"
        "s.sendall(('GET http://%s/held?token=t0ps3cret HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (sys.argv[1], sys.argv[1])).encode())\n"
        "s.settimeout(1.0)\n"
        "try:\n"
        "    early = s.recv(100)\n"
        "    state = 'early ' + repr(early)\n"
        "except socket.timeout:\n"
        "    state = 'silent'\n"
        "open('state', 'w').write(state)\n"
        "print(state)\n"
        "s.settimeout(60)\n"
        "data = b''\n"
        "while True:\n"
        "    d = s.recv(65536)\n"
        "    if not d: break\n"
        "    data += d\n"
        "print(data.decode(errors='replace'))\n";
    return std::thread([this, id, dest, script, out] {
      *out = RunExec(stub_.get(), id, {"python3", "-c", script, dest});
    });
  }

  // Waits until the held workload has written ./state; returns it.
  std::string WaitState(const std::string& id) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      CallResult r = RunExec(stub_.get(), id, {"cat", "state"});
      if (!r.out.empty()) return r.out;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return "";
  }

  // Waits for the session's oldest open HumanRequest.
  pb::HumanRequest WaitOpen(const std::string& id) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < end) {
      grpc::ClientContext ctx;
      pb::GetRequest get;
      get.set_session_id(id);
      pb::Session s;
      if (stub_->Get(&ctx, get, &s).ok() && s.open_requests_size() > 0) return s.open_requests(0);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ADD_FAILURE() << "no open human request in session " << id;
    return pb::HumanRequest();
  }

  grpc::Status Respond(const std::string& id, const std::string& request_id, pb::HumanDecision::Decision d,
                       pb::HumanDecision::Scope scope = pb::HumanDecision::REQUEST) {
    grpc::ClientContext ctx;
    pb::RespondHumanRequestRequest req;
    req.set_session_id(id);
    req.set_request_id(request_id);
    req.set_decision(d);
    req.set_scope(scope);
    req.set_note("from the test");
    pb::HumanDecision out;
    return stub_->RespondHumanRequest(&ctx, req, &out);
  }

  size_t HumanRequestEvents(const std::string& id) {
    grpc::ClientContext ctx;
    pb::EventsRequest req;
    req.set_session_id(id);
    auto reader = stub_->Events(&ctx, req);
    size_t n = 0;
    pb::Event e;
    while (reader->Read(&e)) n += e.has_human_request() ? 1 : 0;
    return n;
  }
};

TEST_F(EgressApprovalTest, AnAskedHostWaitsForApprovalAndASessionScopedOneLetsLaterConnectionsThroughUnasked) {
  const std::string id = CreateAsking();
  CallResult held;
  std::thread fetch = StartHeldFetch(id, Asked(), &held);
  const pb::HumanRequest hr = WaitOpen(id);
  EXPECT_EQ(hr.kind(), pb::HumanRequest::EGRESS);
  EXPECT_EQ(hr.destination(), Asked());
  EXPECT_EQ(hr.rule(), "127.0.0.5/32");
  EXPECT_EQ(hr.action(), "egress:" + Asked());
  EXPECT_THAT(hr.question(), HasSubstr("GET http://" + Asked() + "/held"));
  EXPECT_THAT(hr.question(), ::testing::Not(HasSubstr("t0ps3cret")));  // secret_patterns apply
  // Held: the client has had no answer and the server no connection.
  EXPECT_EQ(WaitState(id), "silent");
  EXPECT_TRUE(asked_->requests().empty());
  grpc::Status st = Respond(id, hr.request_id(), pb::HumanDecision::APPROVE, pb::HumanDecision::SESSION);
  ASSERT_TRUE(st.ok()) << st.error_message();
  fetch.join();
  EXPECT_THAT(held.out, HasSubstr("silent\nHTTP/1.0 200 OK"));
  EXPECT_THAT(held.out, HasSubstr("hello from asked"));
  EXPECT_EQ(hr.call_id(), held.finished.call_id());
  // Approved for the session: the next connection goes through at once, with no new request.
  CallResult again = Fetch(id, Asked());
  EXPECT_EQ(again.out, "hello from asked\n") << again.err;
  EXPECT_EQ(HumanRequestEvents(id), 1u);
  EXPECT_EQ(asked_->requests().size(), 2u);
  const pb::Audit asked = OneAudit(id, "egress_asked", Asked());
  EXPECT_EQ(asked.rule(), "127.0.0.5/32");
  EXPECT_EQ(asked.request_id(), hr.request_id());
  EXPECT_EQ(asked.call_id(), held.finished.call_id());
  size_t approved = 0;
  for (const pb::Audit& a : Audits(id)) {
    if (a.action() != "egress_approved") continue;
    ++approved;
    EXPECT_EQ(a.destination(), Asked());
    EXPECT_EQ(a.rule(), "127.0.0.5/32");
    EXPECT_EQ(a.request_id(), hr.request_id());  // the later one names the request whose decision covered it
  }
  EXPECT_EQ(approved, 2u);
}

TEST_F(EgressApprovalTest, ARejectedHostGets403) {
  const std::string id = CreateAsking();
  CallResult held;
  std::thread fetch = StartHeldFetch(id, Asked(), &held);
  const pb::HumanRequest hr = WaitOpen(id);
  ASSERT_TRUE(Respond(id, hr.request_id(), pb::HumanDecision::REJECT).ok());
  fetch.join();
  EXPECT_THAT(held.out, HasSubstr("HTTP/1.1 403 Forbidden"));
  EXPECT_THAT(held.out, HasSubstr("egress_rejected: rejected by local"));
  EXPECT_TRUE(asked_->requests().empty());
  const pb::Audit rejected = OneAudit(id, "egress_rejected", Asked());
  EXPECT_EQ(rejected.request_id(), hr.request_id());
  EXPECT_EQ(rejected.rule(), "127.0.0.5/32");
  EXPECT_EQ(rejected.call_id(), held.finished.call_id());
}

TEST_F(EgressApprovalTest, NoDecisionByTheDeadlineGets403TimedOut) {
  const std::string id = CreateAsking(/*timeout_ms=*/1000);
  CallResult held;
  std::thread fetch = StartHeldFetch(id, Asked(), &held);
  fetch.join();
  EXPECT_THAT(held.out, HasSubstr("HTTP/1.1 403 Forbidden"));
  EXPECT_THAT(held.out, HasSubstr("egress_timed_out"));
  EXPECT_TRUE(asked_->requests().empty());
  const pb::Audit timed_out = OneAudit(id, "egress_timed_out", Asked());
  EXPECT_FALSE(timed_out.request_id().empty());
  EXPECT_EQ(timed_out.call_id(), held.finished.call_id());
}

TEST(EgressPolicyTest, ABadRuleFailsTheDaemonAtStartNamingIt) {
  const std::string dir = std::filesystem::temp_directory_path() / ("sbx-egress-bad-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/file.textproto") << EgressPolicy({"10.0.0.1/8"});
  Daemon::Options o;
  o.config_lines = {"policy_dir: \"" + dir + "\""};
  Daemon daemon(o);
  EXPECT_FALSE(daemon.ok());
  EXPECT_THAT(daemon.Log(), HasSubstr("10.0.0.1/8"));
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

}  // namespace
}  // namespace sbx::testing
