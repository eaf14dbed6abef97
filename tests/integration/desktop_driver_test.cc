// The desktop driver (sandbox/init/drivers/desktop.h) on the host, against a real Xvfb: xprobe (tests/testcases) covers
// the screen with a known pattern and logs the input it receives, so screenshots and input are checked
// pixel by pixel and event by event.
#include "sandbox/init/drivers/desktop.h"

#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/png_image.h"
#include "tests/common/spawn.h"

namespace sbx::init {
namespace {

using ::sbx::testing::DecodePng;
using ::sbx::testing::Image;

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr char kXvfb[] = "/usr/bin/Xvfb";

long long MsSince(Clock::time_point start) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
}

// A display number no X server on this host uses (no lock file, no socket).
int FreeDisplay(int salt = 0) {
  for (int i = 0; i < 500; ++i) {
    const int d = 100 + (getpid() * 7 + salt * 13 + i) % 800;
    struct stat st;
    if (stat(("/tmp/.X" + std::to_string(d) + "-lock").c_str(), &st) == 0) continue;
    if (stat(("/tmp/.X11-unix/X" + std::to_string(d)).c_str(), &st) == 0) continue;
    return d;
  }
  return 99;
}

DesktopConfig Config(int display) {
  DesktopConfig config;
  config.display = display;
  config.xvfb_path = kXvfb;
  config.env = {"PATH=/usr/bin:/bin"};
  return config;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// xprobe on a display, its log read from a pipe.
class XProbe {
 public:
  ~XProbe() { Stop(); }

  bool Start(const std::string& display) {
    ::sbx::testing::SpawnOptions options;
    options.args = {SBX_XPROBE_BIN, "--motion"};
    options.env = std::vector<std::string>{"DISPLAY=" + display};
    options.stdout_pipe = true;
    options.stderr_inherit = true;
    const ::sbx::testing::Spawned spawned = ::sbx::testing::Spawn(options);
    pid_ = spawned.pid;
    fd_ = spawned.stdout_fd;
    return pid_ > 0 && !Wait("ready ", 1).empty();
  }

  void Stop() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  // Forgets the lines read so far.
  void Clear() {
    ReadAvailable(0);
    lines_.clear();
  }

  // The lines since Clear() that start with `prefix`, once there are at least `n` (or after 5 s).
  std::vector<std::string> Wait(const std::string& prefix, size_t n) {
    const auto until = Clock::now() + std::chrono::seconds(5);
    for (;;) {
      std::vector<std::string> matching;
      for (const std::string& l : lines_) {
        if (l.rfind(prefix, 0) == 0) matching.push_back(l);
      }
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count());
      if (matching.size() >= n || left <= 0) return matching;
      ReadAvailable(left);
    }
  }

  // The text of the "key" lines since Clear(), in order, once it is as long as `expected` (or after 5 s).
  std::string Typed(const std::string& expected) {
    const auto until = Clock::now() + std::chrono::seconds(5);
    for (;;) {
      std::string text;
      for (const std::string& l : lines_) {
        const size_t t = l.find(" text="), end = l.find(" state=");
        if (l.rfind("key ", 0) == 0 && t != std::string::npos && end != std::string::npos) {
          text += l.substr(t + 6, end - t - 6);
        }
      }
      const int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count());
      if (text.size() >= expected.size() || left <= 0) return text;
      ReadAvailable(left);
    }
  }

  std::string Log() const {
    std::string all;
    for (const std::string& l : lines_) all += l + "\n";
    return all;
  }

 private:
  void ReadAvailable(int timeout_ms) {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, timeout_ms) <= 0) return;
    char buf[4096];
    const ssize_t n = read(fd_, buf, sizeof(buf));
    if (n <= 0) return;
    partial_.append(buf, static_cast<size_t>(n));
    for (size_t nl; (nl = partial_.find('\n')) != std::string::npos;) {
      lines_.push_back(partial_.substr(0, nl));
      partial_.erase(0, nl + 1);
    }
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  std::string partial_;
  std::vector<std::string> lines_;
};

class DesktopDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kXvfb, X_OK) != 0) {
      GTEST_SKIP() << "this machine lacks " << kXvfb << " (deploy/install-deps.sh installs it)";
    }
    signal(SIGPIPE, SIG_IGN);  // as in sandbox-init: a write to a dead X server fails instead
    display_ = FreeDisplay();
    std::string error;
    const auto start = Clock::now();
    desktop_ = Desktop::Start(Config(display_), &error);
    ASSERT_NE(desktop_, nullptr) << error;
    started_ = true;
    printf("Desktop::Start took %lld ms\n", MsSince(start));
    ASSERT_TRUE(desktop_->alive());
    EXPECT_EQ(desktop_->display_name(), ":" + std::to_string(display_));
    ASSERT_TRUE(probe_.Start(desktop_->display_name())) << "xprobe did not get ready: " << probe_.Log();
    probe_.Clear();
  }

  void TearDown() override {
    probe_.Stop();
    desktop_.reset();
    // The display was free and ours: after a test killed Xvfb with SIGKILL, its socket file is left behind.
    if (started_) unlink(("/tmp/.X11-unix/X" + std::to_string(display_)).c_str());
  }

  Image Shot(uint32_t target_width, DesktopImage* info = nullptr) {
    DesktopImage image;
    std::string error;
    EXPECT_TRUE(desktop_->Screenshot(target_width, &image, &error)) << error;
    Image decoded;
    EXPECT_TRUE(DecodePng(image.png, &decoded)) << "not a PNG";
    EXPECT_EQ(decoded.width, image.width);
    EXPECT_EQ(decoded.height, image.height);
    if (info != nullptr) *info = image;
    return decoded;
  }

  int display_ = 0;
  bool started_ = false;
  std::unique_ptr<Desktop> desktop_;
  XProbe probe_;
  std::string error_;
};

TEST_F(DesktopDriverTest, ScreenshotAtNativeSizeShowsThePattern) {
  DesktopImage info;
  const Image image = Shot(0, &info);
  ASSERT_EQ(image.width, 1280u);
  ASSERT_EQ(image.height, 800u);
  EXPECT_EQ(info.display_width, 1280u);
  EXPECT_EQ(info.display_height, 800u);
  EXPECT_EQ(image.Pixel(320, 200), 0xFF0000u);
  EXPECT_EQ(image.Pixel(960, 200), 0x00FF00u);
  EXPECT_EQ(image.Pixel(320, 600), 0x0000FFu);
  EXPECT_EQ(image.Pixel(960, 600), 0xFFFFFFu);
  // The quadrants' edges, exactly.
  EXPECT_EQ(image.Pixel(639, 399), 0xFF0000u);
  EXPECT_EQ(image.Pixel(640, 399), 0x00FF00u);
  EXPECT_EQ(image.Pixel(639, 400), 0x0000FFu);
  EXPECT_EQ(image.Pixel(640, 400), 0xFFFFFFu);
  EXPECT_EQ(image.Pixel(0, 0), 0xFF0000u);
  EXPECT_EQ(image.Pixel(1279, 799), 0xFFFFFFu);
  // A target at or above the display's width is the native size.
  EXPECT_EQ(Shot(1280).width, 1280u);
  EXPECT_EQ(Shot(5000).width, 1280u);
}

TEST_F(DesktopDriverTest, ScaledScreenshotKeepsTheAspectRatioAndTheColours) {
  DesktopImage info;
  Image image = Shot(640, &info);
  ASSERT_EQ(image.width, 640u);
  ASSERT_EQ(image.height, 400u);
  EXPECT_EQ(info.display_width, 1280u);
  EXPECT_EQ(info.display_height, 800u);
  EXPECT_EQ(image.Pixel(160, 100), 0xFF0000u);
  EXPECT_EQ(image.Pixel(480, 100), 0x00FF00u);
  EXPECT_EQ(image.Pixel(160, 300), 0x0000FFu);
  EXPECT_EQ(image.Pixel(480, 300), 0xFFFFFFu);
  // 2:1 exactly: the edges stay sharp.
  EXPECT_EQ(image.Pixel(319, 199), 0xFF0000u);
  EXPECT_EQ(image.Pixel(320, 200), 0xFFFFFFu);

  // A ratio that is not a whole number: the edge pixels blend, the rest keep their colour.
  image = Shot(500);
  ASSERT_EQ(image.width, 500u);
  ASSERT_EQ(image.height, 313u);  // 800 * 500 / 1280 = 312.5, rounded
  EXPECT_EQ(image.Pixel(125, 78), 0xFF0000u);
  EXPECT_EQ(image.Pixel(375, 78), 0x00FF00u);
  EXPECT_EQ(image.Pixel(125, 234), 0x0000FFu);
  EXPECT_EQ(image.Pixel(375, 234), 0xFFFFFFu);
  const uint32_t edge = image.Pixel(249, 100);  // covers red and green: 250 = 640 * 500 / 1280 is the edge
  EXPECT_EQ(edge, 0xFF0000u) << "x=249 covers source 637.44..640.0, all red";
  const uint32_t blend = image.Pixel(125, 156);  // source rows 398.72..401.28: half red, half blue
  EXPECT_EQ(blend >> 8 & 0xff, 0u);
  EXPECT_GT(blend >> 16, 0x60u);
  EXPECT_GT(blend & 0xff, 0x60u);
}

TEST_F(DesktopDriverTest, ClicksArriveWithTheirButtonsAndCoordinates) {
  ASSERT_TRUE(desktop_->Click(Button::kLeft, 1, Point{100, 200}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Click(Button::kLeft, 2, Point{700, 500}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Click(Button::kRight, 1, Point{300, 400}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Click(Button::kMiddle, 1, Point{50, 60}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Click(Button::kLeft, 3, std::nullopt, &error_)) << error_;  // where the pointer is
  const std::vector<std::string> presses = probe_.Wait("press ", 8);
  ASSERT_EQ(presses.size(), 8u) << probe_.Log();
  EXPECT_THAT(presses[0], HasSubstr("button=1 x=100 y=200"));
  EXPECT_THAT(presses[1], HasSubstr("button=1 x=700 y=500"));
  EXPECT_THAT(presses[2], HasSubstr("button=1 x=700 y=500"));
  EXPECT_THAT(presses[3], HasSubstr("button=3 x=300 y=400"));
  EXPECT_THAT(presses[4], HasSubstr("button=2 x=50 y=60"));
  for (int i = 5; i < 8; ++i) EXPECT_THAT(presses[i], HasSubstr("button=1 x=50 y=60"));
  EXPECT_EQ(probe_.Wait("release ", 8).size(), 8u);
}

TEST_F(DesktopDriverTest, DragPressesAtTheStartMovesAndReleasesAtTheEnd) {
  ASSERT_TRUE(desktop_->Drag(Point{100, 100}, Point{900, 700}, &error_)) << error_;
  const std::vector<std::string> release = probe_.Wait("release ", 1);
  ASSERT_EQ(release.size(), 1u) << probe_.Log();
  EXPECT_THAT(release[0], HasSubstr("button=1 x=900 y=700"));
  const std::vector<std::string> press = probe_.Wait("press ", 1);
  ASSERT_EQ(press.size(), 1u);
  EXPECT_THAT(press[0], HasSubstr("button=1 x=100 y=100"));
  // Motion with button 1 held (state 0x100) between them, ending at the target.
  const std::string log = probe_.Log();
  const size_t p = log.find("press "), r = log.find("release ");
  const std::string between = log.substr(p, r - p);
  EXPECT_THAT(between, HasSubstr("motion x=500 y=400 state=0x100"));
  EXPECT_THAT(between, HasSubstr("motion x=900 y=700 state=0x100"));
}

TEST_F(DesktopDriverTest, ScrollClicksTheWheelButtons) {
  ASSERT_TRUE(desktop_->Scroll(ScrollDirection::kUp, 3, Point{640, 400}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Scroll(ScrollDirection::kDown, 2, std::nullopt, &error_)) << error_;
  ASSERT_TRUE(desktop_->Scroll(ScrollDirection::kLeft, 1, Point{10, 20}, &error_)) << error_;
  ASSERT_TRUE(desktop_->Scroll(ScrollDirection::kRight, 1, std::nullopt, &error_)) << error_;
  const std::vector<std::string> presses = probe_.Wait("press ", 7);
  ASSERT_EQ(presses.size(), 7u) << probe_.Log();
  for (int i = 0; i < 3; ++i) EXPECT_THAT(presses[i], HasSubstr("button=4 x=640 y=400"));
  for (int i = 3; i < 5; ++i) EXPECT_THAT(presses[i], HasSubstr("button=5 x=640 y=400"));
  EXPECT_THAT(presses[5], HasSubstr("button=6 x=10 y=20"));
  EXPECT_THAT(presses[6], HasSubstr("button=7 x=10 y=20"));
  EXPECT_EQ(probe_.Wait("release ", 7).size(), 7u);
}

TEST_F(DesktopDriverTest, KeyChordsArriveWithTheirModifiers) {
  struct Case {
    const char* chord;
    size_t keys;           // how many keys go down
    const char* last_key;  // the last "key" line's keysym and state
  };
  const Case cases[] = {
      {"ctrl+shift+t", 3, "keysym=0x54 text=T state=0x5"},      // Control|Shift; Shift selects T
      {"Return", 1, "keysym=0xff0d text= state=0x0"},
      {"F5", 1, "keysym=0xffc2 text= state=0x0"},
      {"super", 1, "keysym=0xffeb text= state=0x0"},
      {"KP_Enter", 1, "keysym=0xff8d text= state=0x0"},
      {"Page_Down", 1, "keysym=0xff56 text= state=0x0"},
      {"ctrl+alt+Delete", 3, "keysym=0xffff text= state=0xc"},  // Control|Mod1
      {"CTRL+a", 2, "keysym=0x61 text=a state=0x4"},
      {"A", 2, "keysym=0x41 text=A state=0x1"},                 // Shift added for the shifted level
      {"return", 1, "keysym=0xff0d text= state=0x0"},
      {"Escape", 1, "keysym=0xff1b text= state=0x0"},
      {"BackSpace", 1, "keysym=0xff08 text= state=0x0"},
      {"ctrl++", 3, "keysym=0x2b text=+ state=0x5"},
      {"eacute", 1, "keysym=0xe9 text=é state=0x0"},           // not in the keymap: a spare keycode
      {"shift+F24", 2, "keysym=0xffd5 text= state=0x1"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.chord);
    probe_.Clear();
    ASSERT_TRUE(desktop_->Key(c.chord, &error_)) << error_;
    // Every key pressed is released again, the last key pressed first released first.
    const std::vector<std::string> keys = probe_.Wait("key ", c.keys);
    const std::vector<std::string> releases = probe_.Wait("keyrelease ", c.keys);
    ASSERT_EQ(keys.size(), c.keys) << probe_.Log();
    EXPECT_EQ(keys.back(), std::string("key ") + c.last_key) << probe_.Log();
    EXPECT_EQ(releases.size(), keys.size()) << probe_.Log();
  }
}

TEST_F(DesktopDriverTest, TypeDeliversUnicodeTextInOrder) {
  const std::string text = "hello, wörld 日本 🙂";
  ASSERT_TRUE(desktop_->Type(text, &error_)) << error_;
  EXPECT_EQ(probe_.Typed(text), text) << probe_.Log();

  probe_.Clear();
  const std::string shifted = "Hi! A_b {~} \"Q\"";  // the shifted level: Shift is pressed around those
  ASSERT_TRUE(desktop_->Type(shifted, &error_)) << error_;
  EXPECT_EQ(probe_.Typed(shifted), shifted) << probe_.Log();

  probe_.Clear();
  ASSERT_TRUE(desktop_->Type("a\tb\nc", &error_)) << error_;
  const std::vector<std::string> keys = probe_.Wait("key ", 5);
  ASSERT_EQ(keys.size(), 5u) << probe_.Log();
  EXPECT_THAT(keys[1], HasSubstr("keysym=0xff09"));  // Tab
  EXPECT_THAT(keys[3], HasSubstr("keysym=0xff0d"));  // Return
}

TEST_F(DesktopDriverTest, TypeRebindsSpareKeycodesForManyDistinctCharacters) {
  // More distinct characters (59) outside the keymap than Xvfb has spare keycodes (19): keycodes are rebound.
  const std::string text = "一二三四五六七八九十百千万亿天地人山水火木金土日月星风云雨雪花草鸟鱼虫马牛羊猪狗猫鸡"
                           "ÀÉÎÕÜ€£¥©®αβγδεжзий";
  const auto start = Clock::now();
  ASSERT_TRUE(desktop_->Type(text, &error_)) << error_;
  printf("typed 59 characters outside the keymap in %lld ms\n", MsSince(start));
  EXPECT_EQ(probe_.Typed(text), text) << probe_.Log();
  // And again: some are still bound, the rest are rebound.
  probe_.Clear();
  ASSERT_TRUE(desktop_->Type(text, &error_)) << error_;
  EXPECT_EQ(probe_.Typed(text), text) << probe_.Log();
}

TEST_F(DesktopDriverTest, CursorPositionFollowsMouseMove) {
  ASSERT_TRUE(desktop_->MouseMove(Point{333, 222}, &error_)) << error_;
  Point p;
  ASSERT_TRUE(desktop_->CursorPosition(&p, &error_)) << error_;
  EXPECT_EQ(p.x, 333);
  EXPECT_EQ(p.y, 222);
  ASSERT_TRUE(desktop_->MouseMove(Point{1279, 799}, &error_)) << error_;
  ASSERT_TRUE(desktop_->CursorPosition(&p, &error_)) << error_;
  EXPECT_EQ(p.x, 1279);
  EXPECT_EQ(p.y, 799);
  EXPECT_THAT(probe_.Wait("motion ", 2).back(), HasSubstr("x=1279 y=799"));
}

TEST_F(DesktopDriverTest, BadArgumentsFailWithAMessageAndSendNothing) {
  EXPECT_FALSE(desktop_->Key("ctrl+nosuchkey", &error_));
  EXPECT_THAT(error_, HasSubstr("unknown key name \"nosuchkey\""));
  EXPECT_FALSE(desktop_->Key("", &error_));
  EXPECT_THAT(error_, HasSubstr("empty"));
  EXPECT_FALSE(desktop_->Key("ctrl++a", &error_));
  EXPECT_THAT(error_, HasSubstr("empty key name"));
  EXPECT_FALSE(desktop_->MouseMove(Point{1280, 0}, &error_));
  EXPECT_THAT(error_, HasSubstr("(1280, 0) is outside the display (1280x800)"));
  EXPECT_FALSE(desktop_->Click(Button::kLeft, 1, Point{-1, 5}, &error_));
  EXPECT_THAT(error_, HasSubstr("outside the display"));
  EXPECT_FALSE(desktop_->Drag(Point{0, 0}, Point{10, 800}, &error_));
  EXPECT_THAT(error_, HasSubstr("outside the display"));
  EXPECT_FALSE(desktop_->Scroll(ScrollDirection::kUp, 1, Point{5000, 5}, &error_));
  EXPECT_THAT(error_, HasSubstr("outside the display"));
  EXPECT_FALSE(desktop_->Click(Button::kLeft, 4, std::nullopt, &error_));
  EXPECT_THAT(error_, HasSubstr("1..3"));
  EXPECT_FALSE(desktop_->Scroll(ScrollDirection::kDown, 0, std::nullopt, &error_));
  EXPECT_THAT(error_, HasSubstr("1..100"));
  EXPECT_FALSE(desktop_->Type("ab\xff", &error_));
  EXPECT_THAT(error_, HasSubstr("not valid UTF-8"));
  EXPECT_FALSE(desktop_->Type("a\x01", &error_));
  EXPECT_THAT(error_, HasSubstr("control character"));
  // Nothing arrived, and the desktop still works.
  EXPECT_TRUE(desktop_->alive());
  ASSERT_TRUE(desktop_->Click(Button::kLeft, 1, Point{1, 2}, &error_)) << error_;
  const std::vector<std::string> presses = probe_.Wait("press ", 1);
  ASSERT_EQ(presses.size(), 1u);
  EXPECT_THAT(presses[0], HasSubstr("x=1 y=2"));
  EXPECT_TRUE(probe_.Wait("key ", 0).empty()) << probe_.Log();
}

TEST_F(DesktopDriverTest, EveryCallFailsOnceXvfbIsGone) {
  const pid_t pid = desktop_->xvfb_pid();
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  ASSERT_EQ(waitpid(pid, nullptr, 0), pid);
  // Before the reaper tells it, the broken connection says so.
  DesktopImage image;
  EXPECT_FALSE(desktop_->Screenshot(0, &image, &error_));
  EXPECT_THAT(error_, HasSubstr("is gone"));
  EXPECT_FALSE(desktop_->alive());
  desktop_->ChildExited(pid);
  EXPECT_EQ(desktop_->xvfb_pid(), -1);
  EXPECT_FALSE(desktop_->alive());
  Point p;
  const std::string gone = "the display " + desktop_->display_name() + " is gone";
  EXPECT_FALSE(desktop_->Screenshot(640, &image, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->MouseMove(Point{1, 1}, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->Click(Button::kLeft, 1, Point{1, 1}, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->Drag(Point{1, 1}, Point{2, 2}, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->Scroll(ScrollDirection::kUp, 1, std::nullopt, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->Key("a", &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->Type("a", &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
  EXPECT_FALSE(desktop_->CursorPosition(&p, &error_));
  EXPECT_THAT(error_, HasSubstr(gone));
}

TEST_F(DesktopDriverTest, TheConnectionBreakingWithoutTheReaperMakesCallsFail) {
  // Xvfb killed and not reaped yet (a zombie): every call fails on the broken connection.
  const pid_t pid = desktop_->xvfb_pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  siginfo_t info;
  ASSERT_EQ(waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOWAIT), 0);
  EXPECT_FALSE(desktop_->Key("Return", &error_));
  EXPECT_THAT(error_, HasSubstr("is gone"));
  EXPECT_FALSE(desktop_->alive());
  EXPECT_FALSE(desktop_->MouseMove(Point{1, 1}, &error_));
  EXPECT_THAT(error_, HasSubstr("is gone"));
  // The destructor reaps it.
  desktop_.reset();
  EXPECT_EQ(waitpid(pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
}

TEST(DesktopStartTest, FailuresNameWhatFailed) {
  if (access(kXvfb, X_OK) != 0) GTEST_SKIP() << "this machine lacks " << kXvfb;
  signal(SIGPIPE, SIG_IGN);
  std::string error;
  DesktopConfig config = Config(FreeDisplay(1));
  config.width = 10;
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("display size 10x800 is outside"));
  config = Config(FreeDisplay(1));
  config.height = 5000;
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("outside"));

  config = Config(FreeDisplay(1));
  config.xvfb_path = "/nonexistent/Xvfb";
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("exec /nonexistent/Xvfb: No such file or directory"));

  // A display already in use.
  config = Config(FreeDisplay(2));
  std::unique_ptr<Desktop> first = Desktop::Start(config, &error);
  ASSERT_NE(first, nullptr) << error;
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("the display :" + std::to_string(config.display) + " is in use"));
  EXPECT_TRUE(first->alive());
  first.reset();

  // Xvfb failing: its output is in the message.
  config = Config(FreeDisplay(2));
  config.xvfb_path = "/bin/sh";  // not Xvfb: "sh :N ..." exits at once, complaining that it cannot open ":N"
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("Xvfb exited with status 2 before it was ready (Xvfb said: "));

  // A window manager that exits at once.
  config = Config(FreeDisplay(3));
  config.window_manager = true;
  config.wm_path = "/bin/false";
  EXPECT_EQ(Desktop::Start(config, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("the window manager /bin/false exited with status 1"));
  EXPECT_FALSE(Exists("/tmp/.X11-unix/X" + std::to_string(config.display)));  // Xvfb was stopped
}

TEST(DesktopStartTest, WindowManagerRunsAndEverythingIsReapedOnDestruction) {
  if (access(kXvfb, X_OK) != 0) GTEST_SKIP() << "this machine lacks " << kXvfb;
  if (access("/usr/bin/twm", X_OK) != 0) GTEST_SKIP() << "this machine lacks /usr/bin/twm";
  signal(SIGPIPE, SIG_IGN);
  DesktopConfig config = Config(FreeDisplay(4));
  config.window_manager = true;
  std::string error;
  const auto start = Clock::now();
  std::unique_ptr<Desktop> desktop = Desktop::Start(config, &error);
  ASSERT_NE(desktop, nullptr) << error;
  printf("Desktop::Start with twm took %lld ms\n", MsSince(start));
  const pid_t xvfb = desktop->xvfb_pid(), wm = desktop->wm_pid();
  ASSERT_GT(xvfb, 0);
  ASSERT_GT(wm, 0);
  EXPECT_TRUE(Exists("/tmp/.X11-unix/X" + std::to_string(config.display)));
  // The window manager exiting leaves a working (unmanaged) display.
  ASSERT_EQ(kill(wm, SIGKILL), 0);
  ASSERT_EQ(waitpid(wm, nullptr, 0), wm);
  desktop->ChildExited(wm);
  EXPECT_EQ(desktop->wm_pid(), -1);
  EXPECT_TRUE(desktop->alive());
  ASSERT_TRUE(desktop->MouseMove(Point{5, 6}, &error)) << error;
  DesktopImage image;
  ASSERT_TRUE(desktop->Screenshot(320, &image, &error)) << error;
  EXPECT_EQ(image.width, 320u);
  EXPECT_EQ(image.height, 200u);
  desktop.reset();
  EXPECT_EQ(waitpid(xvfb, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  EXPECT_FALSE(Exists("/tmp/.X11-unix/X" + std::to_string(config.display)));  // a clean SIGTERM exit
  EXPECT_FALSE(Exists("/tmp/.X" + std::to_string(config.display) + "-lock"));
}

// Screenshots at the common display sizes, native and scaled to 1024 wide (what they cost is desktop_bench's).
TEST(DesktopStartTest, ScreenshotsAtTheCommonSizes) {
  if (access(kXvfb, X_OK) != 0) GTEST_SKIP() << "this machine lacks " << kXvfb;
  signal(SIGPIPE, SIG_IGN);
  for (const auto& [w, h] : {std::pair<uint32_t, uint32_t>{1280, 800}, {1920, 1080}}) {
    DesktopConfig config = Config(FreeDisplay(5));
    config.width = w;
    config.height = h;
    std::string error;
    std::unique_ptr<Desktop> desktop = Desktop::Start(config, &error);
    ASSERT_NE(desktop, nullptr) << error;
    for (uint32_t target : {0u, 1024u}) {
      DesktopImage image;
      ASSERT_TRUE(desktop->Screenshot(target, &image, &error)) << error;
      Image decoded;
      ASSERT_TRUE(DecodePng(image.png, &decoded));
      EXPECT_EQ(decoded.width, target == 0 ? w : target);
      EXPECT_EQ(decoded.height, target == 0 ? h : (h * target + w / 2) / w) << w << "x" << h << " -> " << target;
    }
  }
}

}  // namespace
}  // namespace sbx::init
