// Playwright and Puppeteer on a browser session through `sandboxctl browser SESSION cdp` (the Cdp RPC, relayed
// by sandbox-init onto Chromium's pipe beside the session's own driver): the real daemon on TCP with a bearer
// token, Chromium in its jail, pages from a server in this test reached through the session's egress proxy.
// The scripts are tests/cdp/*.mjs; their clients are pinned in tests/npm (deploy/install-deps.sh runs npm ci).
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/http_server.h"
#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// Pages for the clients (tests/common/http_server.h answers one request per connection and records heads).
std::string Page(const std::string& head) {
  // "GET http://host:port/path HTTP/1.1" through the proxy's origin-form: "GET /path HTTP/1.1".
  std::string target = RequestTarget(head);
  std::string body;
  if (target.rfind("/submit?v=", 0) == 0) {
    std::string v = target.substr(10);
    for (char& ch : v) ch = ch == '+' ? ' ' : ch;
    body = "<html><head><title>submitted</title></head><body>got " + v + "</body></html>";
  } else if (target == "/second") {
    body = "<html><head><title>second</title></head><body>second tab</body></html>";
  } else if (target == "/popup") {
    body = "<html><head><title>popup</title></head><body>a popup</body></html>";
  } else {
    body = "<html><head><title>form</title></head><body><form action=/submit><input id=v name=v>"
           "<button id=go>go</button></form><a id=pop href=/popup target=_blank>pop</a></body></html>";
  }
  return "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// A child process with its stdout on a pipe.
struct Child {
  pid_t pid = -1;
  int out = -1;
  std::string ReadLine(std::chrono::milliseconds timeout) {
    std::string line;
    const auto until = Clock::now() + timeout;
    while (Clock::now() < until) {
      pollfd p{out, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char c;
      if (read(out, &c, 1) != 1) break;
      if (c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }
  std::string ReadAll() {
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = read(out, buf, sizeof(buf))) > 0) s.append(buf, static_cast<size_t>(n));
    return s;
  }
  int Wait() {
    int status = 127 << 8;  // one that could not be started ends as a failed exec would, with 127
    if (pid > 0) waitpid(pid, &status, 0);
    pid = -1;
    if (out >= 0) close(out);
    out = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  void Kill() {
    if (pid > 0) kill(pid, SIGKILL);
    Wait();
  }
};

// `argv` (argv[0] looked up in PATH) with `env` ("NAME=value" each) on top of the test's environment.
Child StartChild(const std::vector<std::string>& argv, const std::vector<std::string>& env = {}) {
  SpawnOptions options;
  options.args = argv;
  options.env_overrides = env;
  options.stdout_pipe = true;
  options.stderr_inherit = true;
  const Spawned spawned = Spawn(options);
  return Child{spawned.pid, spawned.stdout_fd};
}

std::string NpmDir() { return std::string(SBX_SOURCE_DIR) + "/tests/npm"; }
std::string Script(const char* name) { return std::string(SBX_SOURCE_DIR) + "/tests/cdp/" + name; }

// A raw HTTP request to the endpoint: the status line and headers of its answer.
std::string RawHttp(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect failed";
  }
  (void)!write(fd, request.data(), request.size());
  std::string out;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20000) <= 0) break;
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.find("\r\n\r\n") != std::string::npos && out.rfind("HTTP/1.1 101", 0) == 0) break;
  }
  close(fd);
  return out;
}

class CdpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
      GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
    }
    if (RunShell("node --version >/dev/null 2>&1").exit_code != 0) {
      GTEST_SKIP() << "this machine lacks node (>= 20; deploy/install-deps.sh installs nodejs)";
    }
    if (!std::filesystem::exists(NpmDir() + "/node_modules/playwright-core") ||
        !std::filesystem::exists(NpmDir() + "/node_modules/puppeteer-core")) {
      GTEST_SKIP() << "tests/npm/node_modules lacks playwright-core or puppeteer-core (run: cd tests/npm && npm ci)";
    }
    host_ip_ = HostIPv4();
    if (host_ip_.empty()) GTEST_SKIP() << "this machine has no non-loopback IPv4 address for the test's pages";
    pages_ = std::make_unique<HttpServer>(host_ip_, Page);
    dir_ = std::filesystem::temp_directory_path() / ("sbx-cdp-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_ + "/sync");
    // The browser policy with egress to the page server only.
    const std::string policy =
        PolicyWithEgress(SBX_BROWSER_POLICY, {host_ip_ + "/32:" + std::to_string(pages_->port())});
    ASSERT_NE(policy, "") << "policies/browser.textproto has no network { mode: NONE } block";
    std::ofstream(dir_ + "/browser.textproto") << policy;
    token_file_ = dir_ + "/token";
    std::ofstream(token_file_) << "cdp-s3cret\n";
    std::ofstream(dir_ + "/wrong-token") << "not-the-token\n";
    Daemon::Options o;
    o.config_lines = {"policy_dir: \"" + dir_ + "\"", "tcp_address: \"127.0.0.1:0\"",
                      "bearer_token_file: \"" + token_file_ + "\""};
    daemon_ = std::make_unique<Daemon>(o);
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    const std::string log = daemon_->Log();
    const size_t port_at = log.find("(port ");
    ASSERT_NE(port_at, std::string::npos) << log;
    tcp_addr_ = "127.0.0.1:" + std::to_string(std::stoi(log.substr(port_at + 6)));
    stub_ = daemon_->NewStub();
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::BROWSER);
    pb::Session session;
    grpc::Status status = stub_->Create(&ctx, req, &session);
    ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << daemon_->Log();
    id_ = session.id();
    page_url_ = "http://" + host_ip_ + ":" + std::to_string(pages_->port());
  }
  void TearDown() override {
    for (Child* c : {&endpoint_, &bad_endpoint_}) c->Kill();
    daemon_.reset();
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }

  // sandboxctl browser SESSION cdp on a port of its choosing, over TCP with `token_file`: its port.
  int StartEndpoint(Child* c, const std::string& token_file) {
    *c = StartChild({CtlBin(), "--addr", tcp_addr_, "--token-file", token_file, "browser", id_, "cdp", "--listen",
                "127.0.0.1:0"});
    const std::string line = c->ReadLine(std::chrono::seconds(20));
    const size_t colon = line.rfind(':');
    if (line.rfind("listening on ", 0) != 0 || colon == std::string::npos) return -1;
    return std::stoi(line.substr(colon + 1));
  }

  Child RunNode(const char* script, std::vector<std::string> env) {
    env.push_back("NPM_DIR=" + NpmDir());
    return StartChild({"node", Script(script)}, env);
  }

  CallResult Act(const pb::BrowserAction& action) {
    pb::ToolCall call;
    *call.mutable_browser() = action;
    return RunCall(stub_.get(), id_, call);
  }
  CallResult Evaluate(const std::string& expression) {
    pb::BrowserAction a;
    a.mutable_evaluate()->set_expression(expression);
    return Act(a);
  }

  std::unique_ptr<HttpServer> pages_;
  std::string host_ip_, dir_, token_file_, tcp_addr_, id_, page_url_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
  Child endpoint_, bad_endpoint_;
};

TEST_F(CdpTest, PlaywrightBesideTheSessionsOwnToolCalls) {
  const int port = StartEndpoint(&endpoint_, token_file_);
  ASSERT_GT(port, 0);
  // Chromium's own discovery document, with the WebSocket to connect to.
  const std::string version = RawHttp(port, "GET /json/version HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n\r\n");
  EXPECT_THAT(version, HasSubstr("HTTP/1.1 200"));
  EXPECT_THAT(version, HasSubstr("\"webSocketDebuggerUrl\": \"ws://127.0.0.1:" + std::to_string(port) + "/devtools/browser/"));
  EXPECT_THAT(version, HasSubstr("Chrome/"));
  EXPECT_THAT(RawHttp(port, "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), HasSubstr("\"type\": \"page\""));

  Child node = RunNode("playwright.mjs", {"CDP_URL=http://127.0.0.1:" + std::to_string(port),
                                          "PAGE_URL=" + page_url_, "SYNC_DIR=" + dir_ + "/sync"});
  // Once the client is connected and working, the session's own tool calls run beside it.
  const auto until = Clock::now() + std::chrono::seconds(90);
  while (!std::filesystem::exists(dir_ + "/sync/connected") && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(std::filesystem::exists(dir_ + "/sync/connected")) << node.ReadAll() << daemon_->Log();
  pb::BrowserAction nav;
  nav.mutable_navigate()->set_url(page_url_ + "/second");
  CallResult navigated = Act(nav);
  EXPECT_TRUE(navigated.finished.has_result()) << navigated.finished.DebugString();
  for (int i = 0; i < 5; ++i) {
    CallResult r = Evaluate("document.title + ':' + (20 + " + std::to_string(i) + ")");
    ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
    EXPECT_EQ(r.finished.result().browser().json(), "\"second:" + std::to_string(20 + i) + "\"");
  }
  std::ofstream(dir_ + "/sync/tools-done") << "";
  const std::string out = node.ReadAll();
  ASSERT_EQ(node.Wait(), 0) << out;
  const nlohmann::json seen = nlohmann::json::parse(out.substr(out.rfind('{')), nullptr, false);
  ASSERT_TRUE(seen.is_object()) << out;
  EXPECT_EQ(seen["title"], "form");
  EXPECT_EQ(seen["submitted"], "got typed by playwright");
  EXPECT_EQ(seen["screenshot_png"], true);
  EXPECT_GT(seen["screenshot_bytes"].get<int>(), 1000);
  EXPECT_EQ(seen["second_title"], "second");
  EXPECT_EQ(seen["popup_title"], "popup");
  EXPECT_GT(seen["evaluations_meanwhile"].get<int>(), 0);
  EXPECT_THAT(seen["crash"].get<std::string>(), HasSubstr("refused"));
  EXPECT_EQ(seen["disconnected"], true);
  // The pages came through the session's egress proxy.
  bool submitted = false;
  for (const std::string& r : pages_->requests()) submitted = submitted || r.rfind("GET /submit?v=typed+by+playwright ", 0) == 0;
  EXPECT_TRUE(submitted);
  // Browser.close ended the client's connection only: the session's browser still answers its tool calls.
  CallResult after = Evaluate("1 + 1");
  ASSERT_TRUE(after.finished.has_result()) << after.finished.DebugString();
  EXPECT_EQ(after.finished.result().browser().json(), "2");
}

TEST_F(CdpTest, PuppeteerAndAReconnectAfterADroppedWebSocket) {
  const int port = StartEndpoint(&endpoint_, token_file_);
  ASSERT_GT(port, 0);
  const std::string cdp = "http://127.0.0.1:" + std::to_string(port);
  // A client killed while connected: its WebSocket drops without a close.
  Child hold = RunNode("hold.mjs", {"CDP_URL=" + cdp, "PAGE_URL=" + page_url_});
  const std::string line = hold.ReadLine(std::chrono::seconds(60));
  ASSERT_EQ(line, "connected") << hold.ReadAll();
  hold.Kill();
  // The next client gets in (the first one's connection is cleaned up; one client at a time).
  Child node;
  std::string out;
  int rc = -1;
  for (int attempt = 0; attempt < 3 && rc != 0; ++attempt) {
    node = RunNode("puppeteer.mjs", {"BROWSER_URL=" + cdp, "PAGE_URL=" + page_url_});
    out = node.ReadAll();
    rc = node.Wait();
  }
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json seen = nlohmann::json::parse(out.substr(out.rfind('{')), nullptr, false);
  ASSERT_TRUE(seen.is_object()) << out;
  EXPECT_EQ(seen["title"], "form");
  EXPECT_EQ(seen["submitted"], "got typed by puppeteer");
  EXPECT_EQ(seen["screenshot_png"], true);
  EXPECT_EQ(seen["second_title"], "second");
  EXPECT_EQ(seen["popup_title"], "popup");
  CallResult after = Evaluate("3 + 4");
  ASSERT_TRUE(after.finished.has_result()) << after.finished.DebugString();
  EXPECT_EQ(after.finished.result().browser().json(), "7");
}

TEST_F(CdpTest, AWrongTokenIsARefusedWebSocket) {
  const int port = StartEndpoint(&bad_endpoint_, dir_ + "/wrong-token");
  ASSERT_GT(port, 0);
  const std::string upgrade = RawHttp(port,
                                      "GET /devtools/browser/" + id_ +
                                          " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
  EXPECT_THAT(upgrade, HasSubstr("HTTP/1.1 401"));
  EXPECT_THAT(RawHttp(port, "GET /json/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), HasSubstr("HTTP/1.1 401"));
  // With the right token the same upgrade is accepted (RFC 6455's example key and answer).
  const int good = StartEndpoint(&endpoint_, token_file_);
  ASSERT_GT(good, 0);
  const std::string ok = RawHttp(good,
                                 "GET /devtools/browser/" + id_ +
                                     " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
  EXPECT_THAT(ok, HasSubstr("HTTP/1.1 101"));
  EXPECT_THAT(ok, HasSubstr("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

// The daemon's own TCP port serves the session's CDP endpoint under /cdp/SESSION/ (agent/daemon/mcp_listener.cc),
// with the bearer token of its gRPC and MCP sides: Playwright connects with it as a header.
TEST_F(CdpTest, PlaywrightOnTheDaemonsPortWithTheToken) {
  const std::string base = "/cdp/" + id_;
  const std::string version =
      RawHttp(std::stoi(tcp_addr_.substr(tcp_addr_.rfind(':') + 1)),
              "GET " + base + "/json/version HTTP/1.1\r\nHost: " + tcp_addr_ + "\r\nAuthorization: Bearer cdp-s3cret\r\n\r\n");
  EXPECT_THAT(version, HasSubstr("HTTP/1.1 200"));
  // The WebSocket it names points back at this port and prefix.
  EXPECT_THAT(version, HasSubstr("\"webSocketDebuggerUrl\": \"ws://" + tcp_addr_ + base + "/devtools/browser/" + id_));
  Child node = RunNode("playwright_daemon.mjs", {"CDP_URL=http://" + tcp_addr_ + base, "CDP_TOKEN=cdp-s3cret",
                                                 "PAGE_URL=" + page_url_});
  const std::string out = node.ReadAll();
  ASSERT_EQ(node.Wait(), 0) << out << daemon_->Log();
  const nlohmann::json seen = nlohmann::json::parse(out.substr(out.rfind('{')), nullptr, false);
  ASSERT_TRUE(seen.is_object()) << out;
  EXPECT_EQ(seen["title"], "second");
  EXPECT_EQ(seen["screenshot_png"], true);
  EXPECT_GT(seen["screenshot_bytes"].get<int>(), 1000);
  // The page came through the session's egress proxy.
  bool fetched = false;
  for (const std::string& r : pages_->requests()) fetched = fetched || r.rfind("GET /second ", 0) == 0;
  EXPECT_TRUE(fetched);
}

TEST_F(CdpTest, TheDaemonsPortRefusesCdpWithoutTheToken) {
  const int port = std::stoi(tcp_addr_.substr(tcp_addr_.rfind(':') + 1));
  const std::string base = "/cdp/" + id_;
  const std::string upgrade = "GET " + base + "/devtools/browser/" + id_ +
                              " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
  EXPECT_THAT(RawHttp(port, upgrade + "\r\n"), HasSubstr("HTTP/1.1 401"));
  EXPECT_THAT(RawHttp(port, upgrade + "Authorization: Bearer not-the-token\r\n\r\n"), HasSubstr("HTTP/1.1 401"));
  EXPECT_THAT(RawHttp(port, "GET " + base + "/json/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"), HasSubstr("HTTP/1.1 401"));
  // Before anything else: an unknown session is a 401 too, not a 404 that would tell it exists or not.
  EXPECT_THAT(RawHttp(port, "GET /cdp/no-such-session/json/list HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
              HasSubstr("HTTP/1.1 401"));
  // Playwright without the header is refused.
  Child node = RunNode("playwright_daemon.mjs", {"CDP_URL=http://" + tcp_addr_ + base, "CDP_TOKEN=",
                                                 "PAGE_URL=" + page_url_});
  const std::string out = node.ReadAll();
  EXPECT_NE(node.Wait(), 0) << out;
  // With the token the same upgrade is accepted (RFC 6455's example key and answer).
  const std::string ok = RawHttp(port, upgrade + "Authorization: Bearer cdp-s3cret\r\n\r\n");
  EXPECT_THAT(ok, HasSubstr("HTTP/1.1 101"));
  EXPECT_THAT(ok, HasSubstr("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
}

// No web page drives the browser, as with Chromium's own DevTools server: a request carrying an Origin (a
// page's WebSocket or fetch) is refused, and so is one whose Host is a DNS name over loopback (a page whose
// name was re-pointed at 127.0.0.1), on sandboxctl's endpoint and on the daemon's port, token or not.
TEST_F(CdpTest, WebPagesAreRefusedOnBothEndpoints) {
  const int local = StartEndpoint(&endpoint_, token_file_);
  ASSERT_GT(local, 0);
  const int daemon_port = std::stoi(tcp_addr_.substr(tcp_addr_.rfind(':') + 1));
  struct Endpoint {
    int port;
    std::string base, auth;
  };
  for (const Endpoint& e : {Endpoint{local, "", ""},
                            Endpoint{daemon_port, "/cdp/" + id_, "Authorization: Bearer cdp-s3cret\r\n"}}) {
    SCOPED_TRACE(e.port == local ? "sandboxctl's endpoint" : "the daemon's port");
    const std::string upgrade_path = e.base + "/devtools/browser/" + id_;
    const std::string ws = " HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" + e.auth;
    const std::string here = "Host: 127.0.0.1:" + std::to_string(e.port) + "\r\n";
    EXPECT_THAT(RawHttp(e.port, "GET " + upgrade_path + ws + here + "Origin: http://evil.example\r\n\r\n"),
                HasSubstr("HTTP/1.1 403"));
    EXPECT_THAT(RawHttp(e.port, "GET " + upgrade_path + ws + "Host: evil.example:" + std::to_string(e.port) +
                                    "\r\n\r\n"),
                HasSubstr("HTTP/1.1 403"));
    EXPECT_THAT(RawHttp(e.port, "GET " + e.base + "/json/version HTTP/1.1\r\n" + e.auth +
                                    "Host: 127.0.0.1.evil.example\r\n\r\n"),
                HasSubstr("HTTP/1.1 403"));
    // localhost and literals pass: the same upgrade from a Node client is accepted.
    EXPECT_THAT(RawHttp(e.port, "GET " + upgrade_path + ws + "Host: localhost:" + std::to_string(e.port) + "\r\n\r\n"),
                HasSubstr("HTTP/1.1 101"));
  }
}

// Playwright's storageState: loaded at Create (sandboxctl create --storage-state), seen by the pages, and
// exported again (sandboxctl browser SESSION storage-state) with what a page added.
TEST_F(CdpTest, StorageStateLoadsAtCreateAndExports) {
  const std::string state = R"({"cookies":[{"name":"sid","value":"from-state","domain":")" + host_ip_ +
                            R"(","path":"/","expires":-1,"httpOnly":false,"secure":false,"sameSite":"Lax"}],)"
                            R"("origins":[{"origin":")" + page_url_ + R"(","localStorage":[{"name":"k","value":"v1"}]}]})";
  std::ofstream(dir_ + "/state.json") << state;
  int rc = -1;
  std::string created = RunCtl(*daemon_, {"create", "--kind", "browser", "--storage-state", dir_ + "/state.json"}, &rc);
  ASSERT_EQ(rc, 0) << created << daemon_->Log();
  id_ = created.substr(0, created.find('\n'));
  pb::BrowserAction nav;
  nav.mutable_navigate()->set_url(page_url_ + "/second");
  CallResult loaded = Act(nav);
  ASSERT_TRUE(loaded.finished.has_result()) << loaded.finished.DebugString();
  CallResult seen = Evaluate("document.cookie + '|' + localStorage.getItem('k')");
  ASSERT_TRUE(seen.finished.has_result()) << seen.finished.DebugString();
  EXPECT_EQ(seen.finished.result().browser().json(), "\"sid=from-state|v1\"");
  ASSERT_TRUE(Evaluate("localStorage.setItem('added', 'by page'); 1").finished.has_result());
  const std::string exported = RunCtl(*daemon_, {"browser", id_, "storage-state"}, &rc);
  ASSERT_EQ(rc, 0) << exported;
  const nlohmann::json e = nlohmann::json::parse(exported, nullptr, false);
  ASSERT_TRUE(e.is_object()) << exported;
  ASSERT_EQ(e["cookies"].size(), 1u) << exported;
  EXPECT_EQ(e["cookies"][0]["value"], "from-state");
  ASSERT_EQ(e["origins"].size(), 1u) << exported;
  EXPECT_EQ(e["origins"][0]["origin"], page_url_);
  EXPECT_EQ(e["origins"][0]["localStorage"].size(), 2u) << exported;
  // Not JSON: the Create is refused, naming the option.
  std::ofstream(dir_ + "/bad.json") << "[1]";
  const std::string bad = RunCtl(*daemon_, {"create", "--kind", "browser", "--storage-state", dir_ + "/bad.json"}, &rc);
  EXPECT_NE(rc, 0);
}

}  // namespace
}  // namespace sbx::testing
