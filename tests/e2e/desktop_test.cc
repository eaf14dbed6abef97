// Desktop sessions end to end: the real daemon starts Xvfb in a jail; tool calls drive it through
// sandbox-init (XTEST input, screenshots); xprobe (tests/testcases) draws a known pattern and logs the input
// it receives.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/sha256.h"
#include "tests/common/png_image.h"
#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/e2e/desktop_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using ::testing::Not;
using Clock = std::chrono::steady_clock;

class DesktopTest : public DesktopSessionTest {
 protected:
  DesktopTest() : DesktopSessionTest("sbx-desktop-policy") {}

  CallResult Action(const std::string& id, const pb::DesktopAction& action) {
    pb::ToolCall call;
    *call.mutable_desktop() = action;
    return RunCall(stub_.get(), id, call);
  }

  // Takes a screenshot; returns the decoded image and the result.
  pb::DesktopResult Screenshot(const std::string& id, uint32_t target_width, Image* image) {
    pb::DesktopAction a;
    a.mutable_screenshot()->set_target_width(target_width);
    CallResult r = Action(id, a);
    EXPECT_TRUE(r.has_finished && r.finished.has_result()) << r.finished.DebugString();
    std::string png;
    for (const pb::Event& e : r.events) {
      if (e.has_file()) {
        EXPECT_EQ(e.file().offset(), png.size());
        png += e.file().data();
      }
    }
    const pb::DesktopResult& d = r.finished.result().desktop();
    EXPECT_EQ(Sha256Hex(png), d.sha256());
    EXPECT_EQ(png.size(), d.image_bytes());
    EXPECT_TRUE(DecodePng(png, image)) << "the screenshot is not a PNG";
    return d;
  }
};

pb::DesktopAction Click(int x, int y, pb::DesktopAction::Button button = pb::DesktopAction::LEFT, int count = 1) {
  pb::DesktopAction a;
  a.mutable_click()->set_x(x);
  a.mutable_click()->set_y(y);
  a.mutable_click()->set_button(button);
  a.mutable_click()->set_count(static_cast<uint32_t>(count));
  return a;
}

TEST_F(DesktopTest, ScreenshotPixelsMatchThePatternAtNativeAndScaledSizes) {
  const std::string id = Create();
  StartXprobe(id);
  Image image;
  pb::DesktopResult native = Screenshot(id, 0, &image);
  EXPECT_EQ(native.image_width(), 1280u);
  EXPECT_EQ(native.image_height(), 800u);
  EXPECT_EQ(native.display_width(), 1280u);
  EXPECT_DOUBLE_EQ(native.scale(), 1.0);
  ASSERT_EQ(image.width, 1280u);
  EXPECT_EQ(image.Pixel(320, 200), 0xFF0000u);
  EXPECT_EQ(image.Pixel(960, 200), 0x00FF00u);
  EXPECT_EQ(image.Pixel(320, 600), 0x0000FFu);
  EXPECT_EQ(image.Pixel(960, 600), 0xFFFFFFu);

  pb::DesktopResult scaled = Screenshot(id, 640, &image);
  EXPECT_EQ(scaled.image_width(), 640u);
  EXPECT_EQ(scaled.image_height(), 400u);
  EXPECT_EQ(scaled.display_width(), 1280u);
  EXPECT_EQ(scaled.display_height(), 800u);
  EXPECT_DOUBLE_EQ(scaled.scale(), 0.5);
  ASSERT_EQ(image.width, 640u);
  EXPECT_EQ(image.Pixel(160, 100), 0xFF0000u);
  EXPECT_EQ(image.Pixel(480, 100), 0x00FF00u);
  EXPECT_EQ(image.Pixel(160, 300), 0x0000FFu);
  EXPECT_EQ(image.Pixel(480, 300), 0xFFFFFFu);
  EXPECT_NE(scaled.image_path(), native.image_path());
}

TEST_F(DesktopTest, InputArrivesExactlyAsSentWithAndWithoutScaling) {
  const std::string id = Create();
  StartXprobe(id);
  ASSERT_TRUE(Action(id, Click(100, 200)).finished.has_result());
  ASSERT_TRUE(Action(id, Click(300, 400, pb::DesktopAction::RIGHT)).finished.has_result());
  ASSERT_TRUE(Action(id, Click(50, 60, pb::DesktopAction::MIDDLE)).finished.has_result());
  ASSERT_TRUE(Action(id, Click(700, 500, pb::DesktopAction::LEFT, 2)).finished.has_result());
  // In the space of a 640x400 screenshot: (50, 60) is display pixel (101, 121), the center of the 2x2
  // block that image pixel shows.
  pb::DesktopAction scaled = Click(50, 60);
  scaled.mutable_space()->set_width(640);
  scaled.mutable_space()->set_height(400);
  ASSERT_TRUE(Action(id, scaled).finished.has_result());
  pb::DesktopAction drag;
  drag.mutable_left_click_drag()->set_from_x(10);
  drag.mutable_left_click_drag()->set_from_y(20);
  drag.mutable_left_click_drag()->set_to_x(900);
  drag.mutable_left_click_drag()->set_to_y(700);
  ASSERT_TRUE(Action(id, drag).finished.has_result());
  pb::DesktopAction scroll;
  scroll.mutable_scroll()->set_direction(pb::DesktopAction::DOWN);
  scroll.mutable_scroll()->set_amount(3);
  scroll.mutable_scroll()->set_x(640);
  scroll.mutable_scroll()->set_y(400);
  ASSERT_TRUE(Action(id, scroll).finished.has_result());
  pb::DesktopAction key;
  key.mutable_key()->set_chord("ctrl+shift+t");
  ASSERT_TRUE(Action(id, key).finished.has_result());
  pb::DesktopAction type;
  type.mutable_type()->set_text("héllo 日本 🙂");
  ASSERT_TRUE(Action(id, type).finished.has_result());
  pb::DesktopAction ret;
  ret.mutable_key()->set_chord("Return");
  ASSERT_TRUE(Action(id, ret).finished.has_result());
  ASSERT_TRUE(WaitForLog(id, "input.log", "keysym=0xff0d")) << ReadLog(id);

  const std::string log = ReadLog(id);
  EXPECT_THAT(log, HasSubstr("press button=1 x=100 y=200"));
  EXPECT_THAT(log, HasSubstr("press button=3 x=300 y=400"));
  EXPECT_THAT(log, HasSubstr("press button=2 x=50 y=60"));
  // The double click: two presses at the same place.
  const size_t first = log.find("press button=1 x=700 y=500");
  ASSERT_NE(first, std::string::npos);
  EXPECT_NE(log.find("press button=1 x=700 y=500", first + 1), std::string::npos);
  EXPECT_THAT(log, HasSubstr("press button=1 x=101 y=121"));
  EXPECT_THAT(log, HasSubstr("press button=1 x=10 y=20"));
  EXPECT_THAT(log, HasSubstr("release button=1 x=900 y=700"));
  // Three wheel clicks down (button 5) where the pointer was taken.
  size_t wheel = 0;
  for (size_t at = log.find("press button=5 x=640 y=400"); at != std::string::npos;
       at = log.find("press button=5 x=640 y=400", at + 1)) {
    ++wheel;
  }
  EXPECT_EQ(wheel, 3u);
  // ctrl+shift+t: the t arrives with Control (0x4) and Shift (0x1) held.
  EXPECT_THAT(log, ::testing::ContainsRegex("key keysym=0x(74|54) text=[tT] state=0x5"));
  // The typed text, character by character, in order.
  std::string typed;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    const size_t t = line.find(" text=");
    if (line.rfind("key ", 0) != 0 || t == std::string::npos) continue;
    if (line.find("state=0x5") != std::string::npos) continue;  // the chord
    const size_t end = line.find(" state=", t);
    typed += line.substr(t + 6, end - t - 6);
  }
  EXPECT_THAT(typed, HasSubstr("héllo 日本 🙂"));

  pb::DesktopAction move;
  move.mutable_mouse_move()->set_x(333);
  move.mutable_mouse_move()->set_y(222);
  ASSERT_TRUE(Action(id, move).finished.has_result());
  pb::DesktopAction where;
  where.mutable_cursor_position();
  CallResult pos = Action(id, where);
  EXPECT_EQ(pos.finished.result().desktop().x(), 333);
  EXPECT_EQ(pos.finished.result().desktop().y(), 222);
  where.mutable_space()->set_width(640);
  where.mutable_space()->set_height(400);
  pos = Action(id, where);
  EXPECT_EQ(pos.finished.result().desktop().x(), 166);
  EXPECT_EQ(pos.finished.result().desktop().y(), 111);
}

TEST_F(DesktopTest, BadActionsAreRefusedByName) {
  const std::string id = Create(1024, 768);
  CallResult outside = Action(id, Click(1024, 10));
  EXPECT_THAT(outside.finished.error().message(), HasSubstr("outside the 1024x768"));
  pb::DesktopAction key;
  key.mutable_key()->set_chord("ctrl+NoSuchKey");
  EXPECT_THAT(Action(id, key).finished.error().message(), HasSubstr("NoSuchKey"));
  pb::DesktopAction half;
  half.mutable_space()->set_width(640);
  EXPECT_THAT(Action(id, half).finished.error().message(), HasSubstr("no action given"));
  pb::DesktopAction nothing;
  EXPECT_THAT(Action(id, nothing).finished.error().message(), HasSubstr("no action given"));
  // The session is still usable.
  Image image;
  EXPECT_EQ(Screenshot(id, 0, &image).display_width(), 1024u);

  // Not a desktop session: the action is refused.
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::FILE);
  pb::Session file;
  ASSERT_TRUE(stub_->Create(&ctx, req, &file).ok());
  EXPECT_THAT(Action(file.id(), Click(1, 1)).finished.error().message(), HasSubstr("not a desktop session"));
  // Display options on a file session, and an absurd display.
  grpc::ClientContext ctx2;
  req.mutable_desktop()->set_width(1024);
  grpc::Status status = stub_->Create(&ctx2, req, &file);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT);
  grpc::ClientContext ctx3;
  req.set_kind(pb::DESKTOP);
  req.mutable_desktop()->set_width(100000);
  status = stub_->Create(&ctx3, req, &file);
  EXPECT_EQ(status.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("100000x0"));
}

TEST_F(DesktopTest, XtermStartedByExecRunsWhatIsTyped) {
  if (access("/usr/bin/xterm", X_OK) != 0) GTEST_SKIP() << "this machine lacks xterm (deploy/install-deps.sh installs it)";
  const std::string id = Create(1024, 768, /*wm=*/true);
  CallResult started = RunExec(stub_.get(), id, {"/bin/sh", "-c", "xterm -geometry 80x24+0+0 >/dev/null 2>&1 &"});
  ASSERT_TRUE(started.has_finished);
  // Wait until the xterm window is drawn (the screen is no longer one colour), then give it the pointer
  // (twm focuses the window under it) and type.
  bool drawn = false;
  for (int i = 0; i < 100 && !drawn; ++i) {
    Image image;
    Screenshot(id, 0, &image);
    drawn = image.width > 0 && image.Pixel(100, 100) != image.Pixel(1000, 700);
    if (!drawn) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(drawn) << "no xterm window appeared";
  ASSERT_TRUE(Action(id, Click(100, 100)).finished.has_result());
  pb::DesktopAction type;
  type.mutable_type()->set_text("echo typed > /workspace/from-xterm.txt");
  ASSERT_TRUE(Action(id, type).finished.has_result());
  pb::DesktopAction ret;
  ret.mutable_key()->set_chord("Return");
  ASSERT_TRUE(Action(id, ret).finished.has_result());
  ASSERT_TRUE(WaitForLog(id, "from-xterm.txt", "typed")) << "the command typed into xterm did not run";
}

TEST_F(DesktopTest, DisplaysAreIsolatedFromTheHostAndFromEachOther) {
  const std::string a = Create();
  const std::string b = Create();
  StartXprobe(a);
  // Session b's display is its own: not a's pattern.
  Image image;
  Screenshot(b, 0, &image);
  ASSERT_EQ(image.width, 1280u);
  EXPECT_NE(image.Pixel(320, 200), 0xFF0000u);
  // An X client in b reaches b's display only: xprobe there draws on b, and a's log sees no input from it.
  StartXprobe(b, "b.log");
  Screenshot(b, 0, &image);
  EXPECT_EQ(image.Pixel(320, 200), 0xFF0000u);
  ASSERT_TRUE(Action(b, Click(11, 12)).finished.has_result());
  ASSERT_TRUE(WaitForLog(b, "b.log", "press button=1 x=11 y=12"));
  EXPECT_THAT(ReadLog(a), Not(HasSubstr("x=11 y=12")));
  // NOTE: no host-side connect is tried: Xvfb runs with -nolisten local and its socket file is in the jail's own
  // /tmp, so such a check could not fail. B's own pixels and A's log without B's click are the proof.
}

TEST_F(DesktopTest, XvfbKilledFromInsideFailsTheNextActionAndEndsTheSession) {
  const std::string id = Create();
  CallResult kill = RunExec(stub_.get(), id, {"/bin/sh", "-c", "pkill -KILL -x Xvfb; sleep 0.3"});
  ASSERT_TRUE(kill.has_finished);
  Image image;
  pb::DesktopAction a;
  a.mutable_screenshot();
  CallResult r = Action(id, a);
  ASSERT_TRUE(r.finished.has_error()) << r.finished.DebugString();
  EXPECT_EQ(r.finished.error().code(), grpc::UNAVAILABLE);
  EXPECT_THAT(r.finished.error().message(), HasSubstr("display"));
  // The session ends failed, naming why.
  pb::Session session;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    pb::GetRequest get;
    get.set_session_id(id);
    ASSERT_TRUE(stub_->Get(&ctx, get, &session).ok());
    if (session.state() == pb::ENDED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(session.state(), pb::ENDED);
  EXPECT_EQ(session.outcome().status(), pb::Outcome::FAILED);
  EXPECT_EQ(session.outcome().reason(), "display_lost");
}


TEST_F(DesktopTest, SandboxctlDesktopCommands) {
  const std::string id = Create(1024, 768);
  StartXprobe(id);
  const std::string png = policy_dir_ + "/shot.png";
  int rc = 0;
  std::string out = RunCtl(*daemon_, {"desktop", id, "screenshot", "-o", png, "--width", "512"}, &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("512x384 (display 1024x768, scale 0.5000)"));
  std::ifstream f(png, std::ios::binary);
  std::stringstream bytes;
  bytes << f.rdbuf();
  Image image;
  ASSERT_TRUE(DecodePng(bytes.str(), &image));
  EXPECT_EQ(image.Pixel(128, 96), 0xFF0000u);
  EXPECT_EQ(RunCtl(*daemon_, {"desktop", id, "click", "100", "50", "--space", "512x384"}, &rc), "");
  EXPECT_EQ(rc, 0);
  ASSERT_TRUE(WaitForLog(id, "input.log", "press button=1 x=201 y=101")) << ReadLog(id);
  EXPECT_EQ(RunCtl(*daemon_, {"desktop", id, "cursor"}, &rc), "201 101\n");
  RunCtl(*daemon_, {"desktop", id, "key", "NoSuchKey"}, &rc);
  EXPECT_EQ(rc, 1);
}

TEST_F(DesktopTest, VncLiveViewSpeaksRfbOnlyWhenTheSessionAllowsIt) {
  const std::string plain = Create();
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Vnc(&ctx);
    pb::VncData first;
    first.set_session_id(plain);
    stream->Write(first);
    stream->WritesDone();
    pb::VncData ignored;
    while (stream->Read(&ignored)) {
    }
    grpc::Status status = stream->Finish();
    EXPECT_EQ(status.error_code(), grpc::FAILED_PRECONDITION);
    EXPECT_THAT(status.error_message(), HasSubstr("desktop.vnc"));
  }
  if (access("/usr/bin/x11vnc", X_OK) != 0) GTEST_SKIP() << "this machine lacks x11vnc (deploy/install-deps.sh installs it)";
  const std::string id = Create(1280, 800, false, /*vnc=*/true);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    auto stream = stub_->Vnc(&ctx);
    pb::VncData first;
    first.set_session_id(id);
    stream->Write(first);
    std::string greeting;
    pb::VncData in;
    while (greeting.size() < 12 && stream->Read(&in)) greeting += in.data();
    EXPECT_EQ(greeting.substr(0, 12), "RFB 003.008\n");
    ctx.TryCancel();
  }
  // The same through sandboxctl, on a local TCP port a VNC viewer would use.
  SpawnOptions ctl;
  ctl.args = {CtlBin(), "--addr", daemon_->address(), "desktop", id, "vnc", "--listen", "127.0.0.1:0"};
  ctl.stdout_pipe = true;
  ctl.stderr_inherit = true;
  const Spawned spawned = Spawn(ctl);
  const pid_t pid = spawned.pid;
  ASSERT_GT(pid, 0);
  std::string line;
  char c;
  while (read(spawned.stdout_fd, &c, 1) == 1 && c != '\n') line += c;
  close(spawned.stdout_fd);
  ASSERT_EQ(line.rfind("listening on 127.0.0.1:", 0), 0u) << line;
  const int port = atoi(line.c_str() + strlen("listening on 127.0.0.1:"));
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char greeting[12];
  size_t got = 0;
  while (got < sizeof(greeting)) {
    const ssize_t n = read(fd, greeting + got, sizeof(greeting) - got);
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  EXPECT_EQ(std::string(greeting, got), "RFB 003.008\n");
  close(fd);
  kill(pid, SIGTERM);
  int status;
  waitpid(pid, &status, 0);
}


// Issue 11 item 8: a display's size decides a screenshot's, so the policy caps it (limits.display_max_width
// and display_max_height, 3840x2160 by default); a bigger one is refused at Create, naming the field.
TEST_F(DesktopTest, ADisplayAboveThePolicysCapIsRefusedAtCreate) {
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::DESKTOP);
  req.mutable_desktop()->set_width(7680);
  req.mutable_desktop()->set_height(4320);
  pb::Session session;
  grpc::Status status = stub_->Create(&ctx, req, &session);
  EXPECT_EQ(status.error_code(), grpc::PERMISSION_DENIED) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("limits.display_max_width"));
}

// Issue 11 item 8: screenshots (like downloads) are file events under one per-session budget,
// limits.file_events_max_bytes; one that would pass it is not sent, its call fails RESOURCE_EXHAUSTED
// naming the field, and a `dropped` event records it.
TEST_F(DesktopTest, AScreenshotOverTheFileEventBudgetIsRefusedAndRecorded) {
  // The sizes of a small and a full screenshot of this display, from a session with the default budget.
  const std::string probe = Create();
  Image image;
  const uint64_t small = Screenshot(probe, 64, &image).image_bytes();
  const uint64_t full = Screenshot(probe, 0, &image).image_bytes();
  ASSERT_LT(small * 2, full) << "the test needs a full screenshot well above a 64-pixel-wide one";

  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::DESKTOP);
  req.mutable_policy()->mutable_limits()->set_file_events_max_bytes((small + full) / 2);
  pb::Session session;
  ASSERT_TRUE(stub_->Create(&ctx, req, &session).ok());
  Screenshot(session.id(), 64, &image);  // fits

  pb::DesktopAction a;
  a.mutable_screenshot();
  CallResult r = Action(session.id(), a);
  ASSERT_TRUE(r.has_finished);
  ASSERT_TRUE(r.finished.has_error()) << r.finished.DebugString();
  EXPECT_EQ(r.finished.error().code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_THAT(r.finished.error().message(), HasSubstr("limits.file_events_max_bytes"));
  bool recorded = false;
  for (const pb::Event& e : r.events) {
    EXPECT_FALSE(e.has_file()) << "nothing of the refused image is sent";
    if (e.has_dropped()) {
      recorded = true;
      EXPECT_EQ(e.dropped().budget(), "limits.file_events_max_bytes");
      EXPECT_EQ(e.dropped().bytes(), full);
    }
  }
  EXPECT_TRUE(recorded) << "going over the budget is an event";
}

// warm_desktops (issue 15): a Create without display options takes a pooled desktop (started before it, its
// display working); one with display options gets a desktop started for it.
TEST(DesktopPoolTest, ACreateWithoutDisplayOptionsTakesAPooledDesktop) {
  if (access("/usr/bin/Xvfb", X_OK) != 0) GTEST_SKIP() << "this machine lacks Xvfb (deploy/install-deps.sh installs it)";
  const std::string policy_dir =
      std::filesystem::temp_directory_path() / ("sbx-desktop-pool-" + std::to_string(getpid()));
  Daemon::Options o = DesktopDaemon(policy_dir);
  o.config_lines.push_back("warm_desktops: 1");
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  const auto now_ms = [] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  const auto create = [&](pb::CreateRequest req) {
    req.set_kind(pb::DESKTOP);
    grpc::ClientContext ctx;
    pb::Session session;
    const grpc::Status status = stub->Create(&ctx, req, &session);
    EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << daemon.Log();
    return session;
  };
  ASSERT_TRUE(daemon.WaitForMetric("sandbox_agent_warm_sessions{kind=\"desktop\"}", 1, std::chrono::seconds(60)))
      << daemon.Log();
  const int64_t before = now_ms();
  const pb::Session pooled = create(pb::CreateRequest());
  EXPECT_LT(pooled.created_unix_ms(), before) << "not a desktop from the pool";
  pb::ToolCall call;
  call.mutable_desktop()->mutable_screenshot()->set_target_width(320);
  const CallResult shot = RunCall(stub.get(), pooled.id(), call);
  ASSERT_TRUE(shot.has_finished && shot.finished.has_result()) << shot.finished.DebugString();
  EXPECT_EQ(shot.finished.result().desktop().image_width(), 320u);
  EXPECT_EQ(shot.finished.result().desktop().display_width(), 1280u);
  pb::CreateRequest sized;
  sized.mutable_desktop()->set_width(800);
  sized.mutable_desktop()->set_height(600);
  const int64_t before_sized = now_ms();
  const pb::Session cold = create(sized);
  EXPECT_GE(cold.created_unix_ms(), before_sized);
  std::error_code ec;
  std::filesystem::remove_all(policy_dir, ec);
}

}  // namespace
}  // namespace sbx::testing
