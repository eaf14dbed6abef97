// Browser sessions end to end: the real daemon starts Debian's Chromium in a jail; tool calls drive it over
// the DevTools protocol through sandbox-init.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <cstring>
#include <sstream>
#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/sha256.h"
#include "tests/common/png_image.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;

constexpr char kPage[] =
    "<html><head><title>t</title></head><body style=\"margin:0;background:#00ff00\">"
    "<input id=q><button id=go onclick=\"document.getElementById('out').textContent = "
    "document.getElementById('q').value\">go</button><p id=out></p>"
    "<script>console.log('page says hi')</script></body></html>";

class BrowserTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
      GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
    }
    daemon_ = std::make_unique<Daemon>(Daemon::Options{});
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::BROWSER);
    if (file_events_max_bytes_ != 0) {
      req.mutable_policy()->mutable_limits()->set_file_events_max_bytes(file_events_max_bytes_);
    }
    pb::Session session;
    grpc::Status status = stub_->Create(&ctx, req, &session);
    ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << daemon_->Log();
    id_ = session.id();
    pb::ToolCall write;
    write.mutable_write_file()->set_path("/workspace/page.html");
    write.mutable_write_file()->set_data(kPage);
    ASSERT_TRUE(RunCall(stub_.get(), id_, write).finished.has_result());
  }

  CallResult Act(const pb::BrowserAction& action) {
    pb::ToolCall call;
    *call.mutable_browser() = action;
    return RunCall(stub_.get(), id_, call);
  }
  CallResult Navigate(const std::string& url) {
    pb::BrowserAction a;
    a.mutable_navigate()->set_url(url);
    return Act(a);
  }
  CallResult Evaluate(const std::string& expression, uint32_t timeout_ms = 0) {
    pb::BrowserAction a;
    a.mutable_evaluate()->set_expression(expression);
    a.mutable_evaluate()->set_timeout_ms(timeout_ms);
    return Act(a);
  }

  // limits.file_events_max_bytes the session narrows to (0: the policy's).
  uint64_t file_events_max_bytes_ = 0;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
  std::string id_;
};

TEST_F(BrowserTest, NavigateScreenshotAndThePagesConsole) {
  CallResult nav = Navigate("file:///workspace/page.html");
  ASSERT_TRUE(nav.finished.has_result()) << nav.finished.DebugString();
  pb::BrowserAction shot;
  shot.mutable_screenshot();
  CallResult r = Act(shot);
  ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
  std::string png;
  for (const pb::Event& e : r.events) {
    if (e.has_file()) png += e.file().data();
  }
  const pb::BrowserResult& b = r.finished.result().browser();
  EXPECT_EQ(Sha256Hex(png), b.sha256());
  EXPECT_EQ(b.image_width(), 1280u);
  Image image;
  ASSERT_TRUE(DecodePng(png, &image));
  // The page's background, below the form.
  EXPECT_EQ(image.Pixel(600, 400), 0x00ff00u) << std::hex << image.Pixel(600, 400);
  // The console message arrived as a page event, with the call that was running when it was reported.
  bool console = false;
  for (const CallResult* call : {&nav, &r}) {
    for (const pb::Event& e : call->events) {
      console = console || (e.has_page() && e.page().type() == "console" && e.page().text() == "page says hi");
    }
  }
  EXPECT_TRUE(console);
}

TEST_F(BrowserTest, AScaledScreenshotHasTheWidthAsked) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  pb::BrowserAction shot;
  shot.mutable_screenshot()->set_width(640);
  shot.mutable_screenshot()->set_format("jpeg");
  CallResult r = Act(shot);
  ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
  EXPECT_EQ(r.finished.result().browser().image_width(), 640u);
  EXPECT_EQ(r.finished.result().browser().image_height(), 400u);
  EXPECT_EQ(r.finished.result().browser().image_path(), "screenshots/1.jpg");
  shot.mutable_screenshot()->set_width(2);
  r = Act(shot);
  ASSERT_TRUE(r.finished.has_error());
  EXPECT_THAT(r.finished.error().message(), HasSubstr("browser.screenshot.width"));
}

// The page builds a file in memory and downloads it (no network needed): it lands in the workspace and arrives
// as file events whose bytes and sha256 are the file's.
TEST_F(BrowserTest, ADownloadArrivesAsFileEventsWithItsSha256) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  constexpr size_t kSize = 600 * 1000;  // several 256 KiB chunks
  std::string expected(kSize, '\0');
  for (size_t i = 0; i < kSize; ++i) expected[i] = static_cast<char>((i * 7 + i / 1000) & 0xff);
  pb::BrowserAction make;
  make.mutable_evaluate()->set_expression(
      "(() => { const n = 600000, b = new Uint8Array(n);"
      " for (let i = 0; i < n; ++i) b[i] = (i * 7 + Math.floor(i / 1000)) & 0xff;"
      " const a = document.createElement('a'); a.href = URL.createObjectURL(new Blob([b]));"
      " a.download = 'data.bin'; document.body.appendChild(a); a.click(); return true; })()");
  CallResult started = Act(make);
  ASSERT_TRUE(started.finished.has_result()) << started.finished.DebugString();
  pb::BrowserAction wait;
  wait.mutable_wait_for()->set_download(true);
  wait.mutable_wait_for()->set_timeout_ms(20000);
  CallResult waited = Act(wait);
  ASSERT_TRUE(waited.finished.has_result()) << waited.finished.DebugString();

  // The file events may come with either call (the download may finish before the evaluate returns).
  std::string data, sha256, path;
  bool last = false;
  std::vector<std::string> downloads;
  for (const CallResult* call : {&started, &waited}) {
    for (const pb::Event& e : call->events) {
      if (!e.has_file()) continue;
      EXPECT_EQ(e.file().offset(), data.size());
      data += e.file().data();
      path = e.file().path();
      if (e.file().last()) {
        last = true;
        sha256 = e.file().sha256();
      }
    }
    for (const std::string& d : call->finished.result().browser().downloads()) downloads.push_back(d);
  }
  ASSERT_TRUE(last) << "no last file chunk";
  EXPECT_EQ(path, "downloads/data.bin");
  EXPECT_EQ(downloads, std::vector<std::string>{"downloads/data.bin"});
  EXPECT_EQ(data.size(), kSize);
  EXPECT_EQ(sha256, Sha256Hex(expected));
  EXPECT_EQ(Sha256Hex(data), sha256);

  // It is in the workspace, for file tools.
  pb::ToolCall stat;
  stat.mutable_stat()->set_path("downloads/data.bin");
  CallResult st = RunCall(stub_.get(), id_, stat);
  ASSERT_TRUE(st.finished.has_result()) << st.finished.DebugString();
  EXPECT_EQ(st.finished.result().info().size(), kSize);

  // Nothing more to wait for: the next wait times out, naming it.
  wait.mutable_wait_for()->set_timeout_ms(200);
  CallResult none = Act(wait);
  ASSERT_TRUE(none.finished.has_error());
  EXPECT_THAT(none.finished.error().message(), HasSubstr("no download finished"));

}

// A session whose file payloads are budgeted at 64 MiB held at once (limits.file_events_max_bytes).
class BrowserBudgetTest : public BrowserTest {
 protected:
  BrowserBudgetTest() { file_events_max_bytes_ = 64 << 20; }
  // Starts a download of `bytes` zero bytes named `name` and waits for it; returns both calls.
  std::pair<CallResult, CallResult> Download(size_t bytes, const std::string& name) {
    pb::BrowserAction make;
    make.mutable_evaluate()->set_expression(
        "(() => { const a = document.createElement('a');"
        " a.href = URL.createObjectURL(new Blob([new Uint8Array(" + std::to_string(bytes) + ")]));"
        " a.download = '" + name + "'; document.body.appendChild(a); a.click(); return true; })()");
    pb::BrowserAction wait;
    wait.mutable_wait_for()->set_download(true);
    wait.mutable_wait_for()->set_timeout_ms(60000);
    CallResult started = Act(make);
    EXPECT_TRUE(started.finished.has_result()) << started.finished.DebugString();
    CallResult done = Act(wait);
    EXPECT_TRUE(done.finished.has_result()) << done.finished.DebugString();
    return {std::move(started), std::move(done)};
  }
};

// A download larger than the budget stays in the workspace only: a page event and a dropped event say so,
// and no file events come.
TEST_F(BrowserBudgetTest, ADownloadOverTheFileEventBudgetStaysInTheWorkspace) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  constexpr size_t kBig = (64 << 20) + 1;
  auto [started, done] = Download(kBig, "big.bin");
  bool not_sent = false, dropped = false;
  for (const CallResult* call : {&started, &done}) {
    for (const pb::Event& e : call->events) {
      EXPECT_FALSE(e.has_file()) << "a file event for " << e.file().path();
      if (e.has_page() && e.page().type() == "download_not_sent") {
        not_sent = true;
        EXPECT_THAT(e.page().text(), HasSubstr("downloads/big.bin"));
        EXPECT_THAT(e.page().text(), HasSubstr("limits.file_events_max_bytes"));
      }
      if (e.has_dropped() && e.dropped().budget() == "limits.file_events_max_bytes") dropped = true;
    }
  }
  EXPECT_TRUE(not_sent);
  EXPECT_TRUE(dropped);
  pb::ToolCall stat;
  stat.mutable_stat()->set_path("downloads/big.bin");
  CallResult st = RunCall(stub_.get(), id_, stat);
  ASSERT_TRUE(st.finished.has_result()) << st.finished.DebugString();
  EXPECT_EQ(st.finished.result().info().size(), kBig);
}

// The budget bounds what the agent holds at once: a download the caller's Call stream carried is
// acknowledged and released, so the next one fits again. Three 60 MiB downloads under a 64 MiB budget are
// all sent.
TEST_F(BrowserBudgetTest, AcknowledgedDownloadsFreeTheBudgetForTheNextOne) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  size_t sent = 0, not_sent = 0;
  for (int i = 0; i < 3; ++i) {
    auto [started, done] = Download(60 << 20, "part.bin");
    for (const CallResult* call : {&started, &done}) {
      for (const pb::Event& e : call->events) {
        if (e.has_file() && e.file().last()) ++sent;
        if (e.has_page() && e.page().type() == "download_not_sent") ++not_sent;
      }
    }
  }
  EXPECT_EQ(sent, 3u);
  EXPECT_EQ(not_sent, 0u);
}

// A page that reports more than one answer can carry: the call still succeeds, what did not fit is counted.
TEST_F(BrowserTest, APageThatFloodsTheConsoleDoesNotCostTheCallItsAnswer) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  CallResult r = Evaluate("(() => { for (let i = 0; i < 400; ++i) console.log('z'.repeat(8000)); return 7; })()");
  ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
  EXPECT_EQ(r.finished.result().browser().json(), "7");
  bool dropped = false;
  size_t consoles = 0;
  for (const pb::Event& e : r.events) {
    if (e.has_page() && e.page().type() == "dropped") dropped = true;
    if (e.has_page() && e.page().type() == "console") ++consoles;
  }
  EXPECT_TRUE(dropped);
  EXPECT_GT(consoles, 0u);
  EXPECT_LT(consoles, 400u);
}

TEST_F(BrowserTest, TypeClickEvaluateAndContent) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  pb::BrowserAction type;
  type.mutable_type()->set_text("hello jail");
  type.mutable_type()->set_selector("#q");
  ASSERT_TRUE(Act(type).finished.has_result());
  pb::BrowserAction click;
  click.mutable_click()->set_selector("#go");
  ASSERT_TRUE(Act(click).finished.has_result());
  CallResult out = Evaluate("document.getElementById('out').textContent");
  EXPECT_EQ(out.finished.result().browser().json(), "\"hello jail\"");
  EXPECT_EQ(Evaluate("({a: 1 + 1})").finished.result().browser().json(), "{\"a\":2}");
  pb::BrowserAction content;
  content.mutable_content()->set_text(true);
  EXPECT_THAT(Act(content).finished.result().browser().content(), HasSubstr("hello jail"));
}

TEST_F(BrowserTest, ThrowingAndRunawayScriptsFailTheCallNotTheSession) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  CallResult thrown = Evaluate("(() => { throw new Error('boom from test') })()");
  ASSERT_TRUE(thrown.finished.has_error());
  EXPECT_THAT(thrown.finished.error().message(), HasSubstr("boom from test"));
  const auto start = std::chrono::steady_clock::now();
  CallResult loop = Evaluate("while (true) {}", 1000);
  ASSERT_TRUE(loop.finished.has_error());
  EXPECT_THAT(loop.finished.error().message(), HasSubstr("timed out"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(Evaluate("6 * 7").finished.result().browser().json(), "42");
}

// A browser call longer than the agent's default 30 s answer wait runs to its own deadline (init and the agent
// agree on it through the request), and while it waits, sandbox-init keeps serving the session's other calls.
TEST_F(BrowserTest, ALongWaitForRunsToItsOwnDeadlineWhileExecKeepsWorking) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  constexpr uint32_t kWaitMs = 40000;  // past InitClient's 30 s default
  pb::BrowserAction wait;
  wait.mutable_wait_for()->set_selector("#never-there");
  wait.mutable_wait_for()->set_timeout_ms(kWaitMs);
  const auto start = std::chrono::steady_clock::now();
  CallResult waited;
  std::thread waiter([&] { waited = Act(wait); });
  // Nothing observable says the wait reached sandbox-init, so give it a moment; an exec sent after that must
  // still complete promptly (before the fix, init's loop was held for the whole wait).
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const auto exec_start = std::chrono::steady_clock::now();
  CallResult echo = RunExec(stub_.get(), id_, {"echo", "hi"});
  const auto exec_took = std::chrono::steady_clock::now() - exec_start;
  EXPECT_TRUE(echo.has_finished);
  EXPECT_EQ(echo.out, "hi\n");
  EXPECT_LT(exec_took, std::chrono::seconds(5)) << "exec waited behind the browser call";
  waiter.join();
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(waited.finished.has_error()) << waited.finished.DebugString();
  EXPECT_NE(waited.finished.error().code(), grpc::DEADLINE_EXCEEDED) << waited.finished.error().message();
  EXPECT_THAT(waited.finished.error().message(), HasSubstr("did not appear within 40000 ms"));
  EXPECT_GE(took, std::chrono::milliseconds(kWaitMs - 1000));
  EXPECT_LT(took, std::chrono::milliseconds(kWaitMs + 10000));
  // The session is still usable afterwards.
  EXPECT_EQ(Evaluate("6 * 7").finished.result().browser().json(), "42");
}

TEST_F(BrowserTest, ChromiumKilledFromInsideFailsTheNextCallAndEndsTheSession) {
  ASSERT_TRUE(Navigate("file:///workspace/page.html").finished.has_result());
  CallResult kill = RunExec(stub_.get(), id_, {"/bin/sh", "-c", "pkill -KILL -x chromium; sleep 0.5"});
  ASSERT_TRUE(kill.has_finished);
  CallResult after = Evaluate("1");
  ASSERT_TRUE(after.finished.has_error()) << after.finished.DebugString();
  EXPECT_EQ(after.finished.error().code(), grpc::UNAVAILABLE);
  EXPECT_THAT(after.finished.error().message(), HasSubstr("browser is gone"));
  pb::Session session;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    pb::GetRequest get;
    get.set_session_id(id_);
    ASSERT_TRUE(stub_->Get(&ctx, get, &session).ok());
    if (session.state() == pb::ENDED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(session.outcome().status(), pb::Outcome::FAILED);
  EXPECT_EQ(session.outcome().reason(), "browser_lost");
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The parent pid of `pid`, from /proc (0 when it is gone).
pid_t ParentOf(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("PPid:", 0) == 0) return static_cast<pid_t>(std::stol(line.substr(5)));
  }
  return 0;
}

// The cpu-controller directories (v1 cpu.shares, v2 cpu.weight) of the session cgroups of the agent `agent`
// (a jail's init is the agent's child), anywhere under /sys/fs/cgroup: other agents may be running tests too.
std::vector<std::string> SessionCpuDirs(pid_t agent) {
  std::vector<std::string> out;
  for (const std::string& dir : SessionCgroups("")) {
    if (access((dir + "/cpu.shares").c_str(), F_OK) != 0 && access((dir + "/cpu.weight").c_str(), F_OK) != 0) {
      continue;
    }
    std::ifstream procs(dir + "/cgroup.procs");
    pid_t pid = 0;
    bool ours = false;
    while (!ours && procs >> pid) ours = ParentOf(pid) == agent;
    if (ours) out.push_back(dir);
  }
  return out;
}

// Whether a session cgroup is in the CPU background: cpu.idle 1, or (kernels before 5.15) the least weight.
bool CpuBackground(const std::string& dir) {
  std::string value;
  if (std::ifstream idle(dir + "/cpu.idle"); idle >> value) return value == "1";
  if (std::ifstream shares(dir + "/cpu.shares"); shares >> value) return value == "2";
  if (std::ifstream weight(dir + "/cpu.weight"); weight >> value) return value == "1";
  ADD_FAILURE() << dir << " has no cpu.idle, cpu.shares or cpu.weight";
  return false;
}

bool HasCpuController() {
  std::ifstream v2("/sys/fs/cgroup/cgroup.controllers");
  std::string word;
  while (v2 >> word) {
    if (word == "cpu") return true;
  }
  return std::filesystem::exists("/sys/fs/cgroup/cpu/cpu.shares");
}

TEST(BrowserPoolTest, CreateTakesAWarmBrowserThatIsNeverReused) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  Daemon::Options o;
  o.config_lines = {"warm_browsers: 1"};
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  const auto create = [&](bool narrow) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::BROWSER);
    (*req.mutable_labels())["who"] = "test";
    if (narrow) req.mutable_policy()->mutable_limits()->set_pids_max(900);
    pb::Session session;
    EXPECT_TRUE(stub->Create(&ctx, req, &session).ok()) << daemon.Log();
    return session;
  };
  const auto evaluate = [&](const std::string& id, const std::string& expression) {
    pb::ToolCall call;
    call.mutable_browser()->mutable_evaluate()->set_expression(expression);
    return RunCall(stub.get(), id, call).finished.result().browser().json();
  };
  ASSERT_TRUE(daemon.WaitForMetric("sandbox_agent_warm_browsers", 1, std::chrono::seconds(60))) << daemon.Log();
  const int64_t before_first = NowUnixMs();
  const pb::Session first = create(false);
  // It was started before this Create: it came from the pool, and it has the request's labels.
  EXPECT_LT(first.created_unix_ms(), before_first);
  EXPECT_EQ(first.labels().at("who"), "test");
  // Leave a mark in its browser.
  EXPECT_EQ(evaluate(first.id(), "(() => { window.name = 'used once'; return window.name })()"), "\"used once\"");
  ASSERT_TRUE(daemon.WaitForMetric("sandbox_agent_warm_browsers", 1, std::chrono::seconds(60))) << daemon.Log();
  // The pooled browser waits in the CPU background; the taken one left it.
  const std::vector<std::string> pool_dirs = SessionCpuDirs(daemon.pid());
  if (!pool_dirs.empty()) {
    bool saw_pooled = false, saw_first = false;
    for (const std::string& dir : pool_dirs) {
      const bool is_first = dir.ends_with("/session-" + first.id());
      (is_first ? saw_first : saw_pooled) = true;
      EXPECT_EQ(CpuBackground(dir), !is_first) << dir;
    }
    EXPECT_TRUE(saw_first && saw_pooled) << "session cgroups: " << pool_dirs.size();
  } else {
    EXPECT_FALSE(HasCpuController()) << "no session cgroup with a cpu controller was found";
  }
  const int64_t before_second = NowUnixMs();
  const pb::Session second = create(false);
  EXPECT_LT(second.created_unix_ms(), before_second);
  EXPECT_NE(second.id(), first.id());
  EXPECT_GT(second.created_unix_ms(), before_first);  // a fresh browser, started after the first was taken
  EXPECT_EQ(evaluate(second.id(), "window.name"), "\"\"");
  // A request that narrows the policy gets a browser started for it.
  const int64_t before_third = NowUnixMs();
  const pb::Session third = create(true);
  EXPECT_GE(third.created_unix_ms(), before_third);
}


// A pooled browser holds a slot nobody asked for: at capacity, a session of another kind takes its slot.
TEST(BrowserPoolTest, APooledBrowserGivesItsSlotToASessionThatNeedsIt) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  Daemon::Options o;
  o.config_lines = {"warm_browsers: 1", "max_sessions: 1"};
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  ASSERT_TRUE(daemon.WaitForMetric("sandbox_agent_warm_browsers", 1, std::chrono::seconds(60))) << daemon.Log();
  ASSERT_EQ(SessionCpuDirs(daemon.pid()).size(), 1u) << "the pooled browser's cgroup";
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::FILE);
  pb::Session session;
  grpc::Status status = stub->Create(&ctx, req, &session);
  ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << daemon.Log();
  // The pooled browser is gone; only the new session holds the slot, so the pool does not refill.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const std::vector<std::string> dirs = SessionCpuDirs(daemon.pid());
  ASSERT_EQ(dirs.size(), 1u);
  EXPECT_TRUE(dirs[0].ends_with("/session-" + session.id())) << dirs[0];
  // And the slot is taken: another Create is refused.
  grpc::ClientContext ctx2;
  pb::Session refused;
  EXPECT_EQ(stub->Create(&ctx2, req, &refused).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

// A taken browser's idle time starts when it is taken, not when the pool started it.
TEST(BrowserPoolTest, ATakenBrowsersIdleTimeStartsWhenItIsTaken) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  Daemon::Options o;
  o.config_lines = {"warm_browsers: 1", "default_idle_timeout_ms: 3000"};
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  // A pool that is warm (a cold browser on a fresh machine takes seconds), then older than the idle timeout.
  ASSERT_TRUE(daemon.WaitForMetric("sandbox_agent_warm_browsers", 1, std::chrono::seconds(60))) << daemon.Log();
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  const int64_t before = NowUnixMs();
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::BROWSER);
  pb::Session session;
  ASSERT_TRUE(stub->Create(&ctx, req, &session).ok()) << daemon.Log();
  ASSERT_LT(session.created_unix_ms(), before - 3000) << "not a browser from the pool";
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  grpc::ClientContext gctx;
  pb::GetRequest get;
  get.set_session_id(session.id());
  pb::Session now;
  ASSERT_TRUE(stub->Get(&gctx, get, &now).ok());
  EXPECT_EQ(now.state(), pb::RUNNING) << now.DebugString();
}

// SIGHUP resizes the pool: it fills when warm_browsers grows and empties when it shrinks.
TEST(BrowserPoolTest, SighupResizesThePool) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  Daemon::Options o;
  o.config_lines = {"warm_browsers: 0"};
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  const std::string config_path = daemon.dir() + "/agent.textproto";
  std::stringstream text;
  text << std::ifstream(config_path).rdbuf();
  const std::string config = text.str();
  ASSERT_NE(config.find("warm_browsers: 0"), std::string::npos) << config;
  const auto reload_with = [&](const std::string& line) {
    std::string changed = config;
    changed.replace(changed.find("warm_browsers: 0"), std::strlen("warm_browsers: 0"), line);
    std::ofstream(config_path) << changed;
    ASSERT_EQ(kill(daemon.pid(), SIGHUP), 0);
  };
  const auto wait_for_pool = [&](size_t n) {
    for (int i = 0; i < 150; ++i) {
      if (SessionCpuDirs(daemon.pid()).size() == n) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  };
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_TRUE(SessionCpuDirs(daemon.pid()).empty());
  reload_with("warm_browsers: 2");
  ASSERT_TRUE(wait_for_pool(2)) << daemon.Log();
  for (const std::string& dir : SessionCpuDirs(daemon.pid())) EXPECT_TRUE(CpuBackground(dir)) << dir;
  // A reload rebuilds the pool under the new policies: the pooled browsers are fresh ones.
  const std::vector<std::string> before = SessionCpuDirs(daemon.pid());
  reload_with("warm_browsers: 1");
  std::vector<std::string> after;
  for (int i = 0; i < 150; ++i) {
    after = SessionCpuDirs(daemon.pid());
    const bool fresh = after.size() == 1 && std::find(before.begin(), before.end(), after[0]) == before.end();
    if (fresh) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(after.size(), 1u) << daemon.Log();
  EXPECT_EQ(std::find(before.begin(), before.end(), after[0]), before.end()) << after[0] << " was kept\n" << daemon.Log();
  reload_with("warm_browsers: 0");
  EXPECT_TRUE(wait_for_pool(0)) << daemon.Log();
  EXPECT_TRUE(daemon.Alive());
}

// Isolation through the real session path: what Chromium can open as file:// is the jail's. It reads the
// jail's /etc/passwd; the host's /etc/shadow is not there; the agent's pid does not exist in the jail's pid
// namespace. (file:///proc/1/environ would prove nothing: Chromium reads every procfs file as empty, their
// size being 0. That the workload cannot read init's environment is init_protocol_test's.)
TEST(BrowserIsolationTest, TheBrowserSeesTheJailsFilesAndProcessesNotTheHosts) {
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  std::ifstream host_shadow("/etc/shadow");
  std::stringstream shadow_text;
  shadow_text << host_shadow.rdbuf();
  ASSERT_NE(shadow_text.str().find("root:"), std::string::npos) << "the host's /etc/shadow has no root entry";
  Daemon daemon(Daemon::Options{});
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  ASSERT_EQ(access(("/proc/" + std::to_string(daemon.pid()) + "/environ").c_str(), F_OK), 0);

  auto stub = daemon.NewStub();
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::BROWSER);
  pb::Session session;
  ASSERT_TRUE(stub->Create(&ctx, req, &session).ok()) << daemon.Log();
  // What the browser got for a URL: the page's text, or the file it downloaded instead.
  const auto open = [&](const std::string& url, std::string* error) {
    pb::ToolCall nav;
    nav.mutable_browser()->mutable_navigate()->set_url(url);
    CallResult r = RunCall(stub.get(), session.id(), nav);
    std::string got;
    for (const pb::Event& e : r.events) {
      if (e.has_file()) got += e.file().data();
    }
    if (!r.finished.has_result()) {
      *error = r.finished.error().message();
      return got;
    }
    pb::ToolCall content;
    content.mutable_browser()->mutable_content()->set_text(true);
    return got + RunCall(stub.get(), session.id(), content).finished.result().browser().content();
  };
  std::string error;
  EXPECT_THAT(open("file:///etc/passwd", &error), HasSubstr("sandbox:x:1000:1000")) << error;
  error.clear();
  const std::string shadow = open("file:///etc/shadow", &error);
  EXPECT_EQ(shadow.find("root:"), std::string::npos) << shadow;
  EXPECT_THAT(error, HasSubstr("ERR_FILE_NOT_FOUND"));
  error.clear();
  open("file:///proc/" + std::to_string(daemon.pid()) + "/environ", &error);
  EXPECT_THAT(error, HasSubstr("ERR_FILE_NOT_FOUND"));
}

TEST_F(BrowserTest, SandboxctlBrowserCommands) {
  int rc = 0;
  EXPECT_EQ(RunCtl(*daemon_, {"browser", id_, "navigate", "file:///workspace/page.html"}, &rc), "");
  ASSERT_EQ(rc, 0);
  RunCtl(*daemon_, {"browser", id_, "type", "typed by ctl", "--selector", "#q"}, &rc);
  ASSERT_EQ(rc, 0);
  RunCtl(*daemon_, {"browser", id_, "click", "#go"}, &rc);
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(RunCtl(*daemon_, {"browser", id_, "eval", "document.getElementById(\"out\").textContent"}, &rc),
            "\"typed by ctl\"\n");
  EXPECT_THAT(RunCtl(*daemon_, {"browser", id_, "content", "--text"}, &rc), HasSubstr("typed by ctl"));
  EXPECT_EQ(rc, 0);
  const std::string file = "/tmp/sbx-browser-shot-" + std::to_string(getpid()) + ".png";
  EXPECT_THAT(RunCtl(*daemon_, {"browser", id_, "screenshot", "-o", file}, &rc), HasSubstr("1280x800"));
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(access(file.c_str(), F_OK), 0);
  unlink(file.c_str());
  RunCtl(*daemon_, {"browser", id_, "click", "#no-such-element"}, &rc);
  EXPECT_EQ(rc, 1);
}

}  // namespace
}  // namespace sbx::testing
