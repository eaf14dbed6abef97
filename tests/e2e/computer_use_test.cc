// The `computer` tool call end to end: Anthropic's computer-use tool input JSON, as the documentation's
// examples write it, goes as-is through the real daemon into a desktop session; xprobe (tests/testcases) logs
// what the X server delivered (buttons, keys, modifier state, timestamps) and draws a known pattern for the
// image checks.
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "tests/common/png_image.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/e2e/desktop_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// One xprobe log line, parsed: "press button=1 x=10 y=20 state=0x1 time=123".
struct Event {
  std::string kind;  // press, release, motion, key, keyrelease
  int button = 0, x = 0, y = 0;
  uint32_t keysym = 0, state = 0, time = 0;
};

std::vector<Event> Parse(const std::string& log) {
  std::vector<Event> out;
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    Event e;
    words >> e.kind;
    if (e.kind == "ready") continue;
    for (std::string w; words >> w;) {
      const size_t eq = w.find('=');
      if (eq == std::string::npos) continue;
      const std::string k = w.substr(0, eq), v = w.substr(eq + 1);
      if (v.empty()) continue;
      if (k == "button") e.button = std::stoi(v);
      if (k == "x") e.x = std::stoi(v);
      if (k == "y") e.y = std::stoi(v);
      if (k == "keysym") e.keysym = static_cast<uint32_t>(std::stoul(v, nullptr, 16));
      if (k == "state") e.state = static_cast<uint32_t>(std::stoul(v, nullptr, 16));
      if (k == "time") e.time = static_cast<uint32_t>(std::stoul(v));
    }
    out.push_back(e);
  }
  return out;
}

constexpr uint32_t kShiftMask = 0x1, kControlMask = 0x4, kButton1Mask = 0x100;
constexpr uint32_t kXkShiftL = 0xffe1;

class ComputerToolCallTest : public DesktopSessionTest {
 protected:
  ComputerToolCallTest() : DesktopSessionTest("sbx-computer-policy") {}

  // One computer call with the model's input JSON; `w` x `h` is the display declared to the model.
  CallResult Computer(const std::string& id, const std::string& json, uint32_t w = 0, uint32_t h = 0,
                      bool screenshot_after = false, const std::string& version = "") {
    pb::ToolCall call;
    pb::ComputerUse* c = call.mutable_computer();
    c->set_input_json(json);
    c->set_display_width_px(w);
    c->set_display_height_px(h);
    c->set_skip_screenshot(!screenshot_after);
    c->set_tool_version(version);
    return RunCall(stub_.get(), id, call);
  }
  // The same, expecting success.
  pb::ComputerResult Ok(const std::string& id, const std::string& json, uint32_t w = 0, uint32_t h = 0,
                        bool screenshot_after = false) {
    CallResult r = Computer(id, json, w, h, screenshot_after);
    EXPECT_TRUE(r.has_finished && r.finished.has_result())
        << json << ": " << r.status.error_message() << r.finished.DebugString();
    return r.finished.result().computer();
  }

  static Image DecodeResultImage(const pb::ComputerResult& r) {
    std::string png;
    EXPECT_TRUE(absl::Base64Unescape(r.image_base64(), &png)) << "image_base64 is not base64";
    Image image;
    EXPECT_TRUE(DecodePng(png, &image)) << "the image is not a PNG";
    return image;
  }

  // xprobe logging pointer motion and event times too.
  void StartXprobe(const std::string& id) { DesktopSessionTest::StartXprobe(id, "input.log", "--motion --time "); }

  // Every event xprobe logged after a marker click at (x, y) with button 2 (middle), which the test sends
  // to cut the log into parts.
  std::vector<Event> EventsSince(const std::string& id, int mark_x, int mark_y) {
    std::vector<Event> all = Parse(ReadLog(id));
    size_t from = all.size();
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].kind == "press" && all[i].button == 2 && all[i].x == mark_x && all[i].y == mark_y) from = i + 1;
    }
    return std::vector<Event>(all.begin() + static_cast<ptrdiff_t>(std::min(from, all.size())), all.end());
  }
  void Mark(const std::string& id, int x, int y) {
    Ok(id, "{\"action\": \"middle_click\", \"coordinate\": [" + std::to_string(x) + ", " + std::to_string(y) + "]}");
    ASSERT_TRUE(WaitForLog(id, "input.log", "release button=2 x=" + std::to_string(x) + " y=" + std::to_string(y)));
  }
};

TEST_F(ComputerToolCallTest, ScreenshotIsABase64PngInTheDeclaredSpaceAndInputActionsReturnOne) {
  const std::string id = Create();
  StartXprobe(id);
  // {"action": "screenshot"} with the display declared at half size: the image is what the model sees.
  pb::ComputerResult shot = Ok(id, R"({"action": "screenshot"})", 640, 400);
  EXPECT_EQ(shot.media_type(), "image/png");
  EXPECT_EQ(shot.image_width(), 640u);
  EXPECT_EQ(shot.image_height(), 400u);
  Image image = DecodeResultImage(shot);
  ASSERT_EQ(image.width, 640u);
  ASSERT_EQ(image.height, 400u);
  EXPECT_EQ(image.Pixel(160, 100), 0xFF0000u);
  EXPECT_EQ(image.Pixel(480, 100), 0x00FF00u);
  EXPECT_EQ(image.Pixel(160, 300), 0x0000FFu);
  EXPECT_EQ(image.Pixel(480, 300), 0xFFFFFFu);
  // Undeclared: the display's own size.
  image = DecodeResultImage(Ok(id, R"({"action": "screenshot"})"));
  EXPECT_EQ(image.width, 1280u);
  // An input action answers with a screenshot taken after it (unless skip_screenshot).
  pb::ComputerResult click = Ok(id, R"({"action": "left_click", "coordinate": [500, 300]})", 640, 400,
                                /*screenshot_after=*/true);
  EXPECT_EQ(click.media_type(), "image/png");
  EXPECT_EQ(DecodeResultImage(click).width, 640u);
  ASSERT_TRUE(WaitForLog(id, "input.log", "press button=1 x=1001 y=601"));  // (500, 300) of 640x400
  pb::ComputerResult quiet = Ok(id, R"({"action": "left_click", "coordinate": [10, 10]})", 640, 400);
  EXPECT_EQ(quiet.image_base64(), "");
  EXPECT_EQ(quiet.media_type(), "");
}

TEST_F(ComputerToolCallTest, ClicksMoveAndCursorPositionFollowTheDocumentedExamples) {
  const std::string id = Create(1024, 768);
  StartXprobe(id);
  Ok(id, R"({"action": "mouse_move", "coordinate": [500, 300]})");
  EXPECT_EQ(Ok(id, R"({"action": "cursor_position"})").text(), "X=500,Y=300");
  EXPECT_EQ(Ok(id, R"({"action": "cursor_position"})", 512, 384).text(), "X=250,Y=150");
  Ok(id, R"({"action": "left_click", "coordinate": [100, 110]})");
  Ok(id, R"({"action": "right_click", "coordinate": [120, 130]})");
  Ok(id, R"({"action": "double_click", "coordinate": [140, 150]})");
  Ok(id, R"({"action": "triple_click", "coordinate": [160, 170]})");
  Ok(id, R"({"action": "left_click"})");  // where the pointer is: (160, 170)
  Mark(id, 1, 1);
  std::vector<Event> all = Parse(ReadLog(id));
  auto presses = [&](int button, int x, int y) {
    int n = 0;
    for (const Event& e : all) n += e.kind == "press" && e.button == button && e.x == x && e.y == y;
    return n;
  };
  EXPECT_EQ(presses(1, 100, 110), 1);
  EXPECT_EQ(presses(3, 120, 130), 1);
  EXPECT_EQ(presses(1, 140, 150), 2);
  EXPECT_EQ(presses(1, 160, 170), 3 + 1);
}

TEST_F(ComputerToolCallTest, ModifierClicksAndScrollsHoldTheModifierAndReleaseIt) {
  const std::string id = Create();
  StartXprobe(id);
  // Shift-click (the documented `text`), ctrl+shift click, and a ctrl+scroll: the button event's state has
  // the modifiers.
  Ok(id, R"({"action": "left_click", "coordinate": [200, 210], "text": "shift"})");
  Ok(id, R"({"action": "left_click", "coordinate": [220, 230], "text": "ctrl+shift"})");
  Ok(id, R"({"action": "scroll", "coordinate": [640, 400], "scroll_direction": "up", "scroll_amount": 2,
              "text": "ctrl"})");
  Ok(id, R"({"action": "scroll", "coordinate": [600, 300], "scroll_direction": "down", "scroll_amount": 3})");
  // A plain click after them: nothing is left held.
  Ok(id, R"({"action": "left_click", "coordinate": [240, 250]})");
  // A bad modifier is refused, and leaves nothing held either.
  CallResult bad = Computer(id, R"({"action": "left_click", "coordinate": [5, 5], "text": "shift+NoSuchKey"})");
  EXPECT_THAT(bad.finished.error().message(), HasSubstr("NoSuchKey"));
  Ok(id, R"({"action": "left_click", "coordinate": [260, 270]})");
  Mark(id, 2, 2);
  int shift_clicks = 0, both_clicks = 0, ctrl_wheel = 0, plain_wheel = 0;
  for (const Event& e : Parse(ReadLog(id))) {
    if (e.kind != "press") continue;
    if (e.button == 1 && e.x == 200 && e.y == 210) shift_clicks += (e.state & 0xff) == kShiftMask;
    if (e.button == 1 && e.x == 220 && e.y == 230) both_clicks += (e.state & 0xff) == (kShiftMask | kControlMask);
    if (e.button == 4 && e.x == 640 && e.y == 400) ctrl_wheel += (e.state & 0xff) == kControlMask;
    if (e.button == 5 && e.x == 600 && e.y == 300) plain_wheel += (e.state & 0xff) == 0;
    if (e.button == 1 && (e.x == 240 || e.x == 260)) {
      EXPECT_EQ(e.state & 0xff, 0u) << "a modifier stayed held";
    }
    if (e.button == 1 && e.x == 5) ADD_FAILURE() << "the click with a bad modifier was sent";
  }
  EXPECT_EQ(shift_clicks, 1);
  EXPECT_EQ(both_clicks, 1);
  EXPECT_EQ(ctrl_wheel, 2);
  EXPECT_EQ(plain_wheel, 3);
}

TEST_F(ComputerToolCallTest, DragsHoldTheButtonThroughoutAndMouseDownUpLeaveItAsTheModelExpects) {
  const std::string id = Create();
  StartXprobe(id);
  Ok(id, R"({"action": "left_click_drag", "start_coordinate": [100, 100], "coordinate": [900, 600]})");
  Mark(id, 3, 3);
  // Between the press at the start and the release at the end, every motion has Button1 held.
  std::vector<Event> all = Parse(ReadLog(id));
  bool pressed = false, released = false;
  int held_motions = 0;
  for (const Event& e : all) {
    if (e.kind == "press" && e.button == 1 && e.x == 100 && e.y == 100) pressed = true;
    if (pressed && !released && e.kind == "motion") {
      EXPECT_TRUE(e.state & kButton1Mask) << "motion to (" << e.x << ", " << e.y << ") without the button";
      ++held_motions;
    }
    if (pressed && e.kind == "release" && e.button == 1) {
      EXPECT_EQ(e.x, 900);
      EXPECT_EQ(e.y, 600);
      released = true;
    }
  }
  EXPECT_TRUE(pressed && released);
  EXPECT_GE(held_motions, 2);

  // left_mouse_down, mouse_move, mouse_move, left_mouse_up: the button stays down across the calls.
  Ok(id, R"({"action": "mouse_move", "coordinate": [300, 300]})");
  Ok(id, R"({"action": "left_mouse_down"})");
  Ok(id, R"({"action": "mouse_move", "coordinate": [400, 350]})");
  Ok(id, R"({"action": "mouse_move", "coordinate": [500, 420]})");
  Ok(id, R"({"action": "left_mouse_down"})");  // already down: nothing more is pressed
  Ok(id, R"({"action": "left_mouse_up"})");
  Ok(id, R"({"action": "left_mouse_up"})");  // already up: nothing
  Ok(id, R"({"action": "mouse_move", "coordinate": [600, 500]})");
  Mark(id, 4, 4);
  std::vector<Event> steps = EventsSince(id, 3, 3);
  int presses = 0, releases = 0;
  bool at_400 = false, at_500 = false, after = false;
  for (const Event& e : steps) {
    if (e.kind == "press" && e.button == 1) {
      ++presses;
      EXPECT_EQ(e.x, 300);
      EXPECT_EQ(e.y, 300);
    }
    if (e.kind == "release" && e.button == 1) {
      ++releases;
      EXPECT_EQ(e.x, 500);
      EXPECT_EQ(e.y, 420);
    }
    if (e.kind == "motion" && e.x == 400 && e.y == 350) at_400 = (e.state & kButton1Mask) != 0;
    if (e.kind == "motion" && e.x == 500 && e.y == 420) at_500 = (e.state & kButton1Mask) != 0;
    if (e.kind == "motion" && e.x == 600 && e.y == 500) after = (e.state & kButton1Mask) == 0;
  }
  EXPECT_EQ(presses, 1);
  EXPECT_EQ(releases, 1);
  EXPECT_TRUE(at_400 && at_500) << "the moves between down and up were not with the button held";
  EXPECT_TRUE(after) << "the button stayed held after left_mouse_up";

  // The button's state is the server's: a click after left_mouse_down leaves it up, so the next
  // left_mouse_down presses it again (and left_mouse_up releases it).
  Ok(id, R"({"action": "left_mouse_down", "coordinate": [700, 100]})");
  Ok(id, R"({"action": "left_click", "coordinate": [710, 110]})");
  Ok(id, R"({"action": "left_mouse_down", "coordinate": [720, 120]})");
  Ok(id, R"({"action": "left_mouse_up", "coordinate": [730, 130]})");
  Mark(id, 6, 6);
  int down_again = 0, up_again = 0;
  for (const Event& e : EventsSince(id, 4, 4)) {
    if (e.kind == "press" && e.button == 1 && e.x == 720 && e.y == 120) ++down_again;
    if (e.kind == "release" && e.button == 1 && e.x == 730 && e.y == 130) ++up_again;
  }
  EXPECT_EQ(down_again, 1) << "left_mouse_down after a click did not press";
  EXPECT_EQ(up_again, 1);
}

TEST_F(ComputerToolCallTest, KeysTypeAndHoldKeyForItsDuration) {
  const std::string id = Create();
  StartXprobe(id);
  Ok(id, R"({"action": "type", "text": "Hi!"})");
  Ok(id, R"({"action": "key", "text": "ctrl+s"})");
  const auto start = Clock::now();
  Ok(id, R"({"action": "hold_key", "text": "shift", "duration": 1})");
  const auto took = Clock::now() - start;
  EXPECT_GE(took, std::chrono::milliseconds(1000));
  // A hold that cannot press its keys fails and leaves nothing held.
  CallResult bad = Computer(id, R"({"action": "hold_key", "text": "shift+NoSuchKey", "duration": 5})");
  EXPECT_THAT(bad.finished.error().message(), HasSubstr("NoSuchKey"));
  Ok(id, R"({"action": "left_click", "coordinate": [10, 10]})");
  Mark(id, 5, 5);
  std::vector<Event> all = Parse(ReadLog(id));
  std::string typed;
  uint32_t shift_down = 0, shift_up = 0;
  bool ctrl_s = false;
  for (const Event& e : all) {
    if (e.kind == "key" && e.keysym >= 0x20 && e.keysym < 0x7f && !(e.state & kControlMask)) {
      typed += static_cast<char>(e.keysym);
    }
    if (e.kind == "key" && e.keysym == 's' && (e.state & kControlMask)) ctrl_s = true;
    if (e.kind == "key" && e.keysym == kXkShiftL && shift_down == 0 && typed.size() >= 3 && ctrl_s) shift_down = e.time;
    if (e.kind == "keyrelease" && e.keysym == kXkShiftL && shift_down != 0 && shift_up == 0) shift_up = e.time;
    if (e.kind == "press" && e.x == 10 && e.y == 10) {
      EXPECT_EQ(e.state & 0xff, 0u) << "a key stayed held";
    }
  }
  EXPECT_EQ(typed, "Hi!");
  EXPECT_TRUE(ctrl_s);
  ASSERT_NE(shift_down, 0u);
  ASSERT_NE(shift_up, 0u);
  EXPECT_GE(shift_up - shift_down, 1000u) << "shift was held " << shift_up - shift_down << " ms";
  EXPECT_LT(shift_up - shift_down, 5000u);
}

TEST_F(ComputerToolCallTest, ZoomReturnsTheRegionAtFullResolution) {
  const std::string id = Create();
  StartXprobe(id);
  // The full-resolution screen, and a zoom on a region across the quadrants' corner, given in a declared
  // 640x400 space: [300, 190, 340, 210] is display [600, 380, 680, 420], returned 80x40.
  Image full = DecodeResultImage(Ok(id, R"({"action": "screenshot"})"));
  ASSERT_EQ(full.width, 1280u);
  pb::ComputerResult zoom = Ok(id, R"({"action": "zoom", "region": [300, 190, 340, 210]})", 640, 400);
  EXPECT_EQ(zoom.media_type(), "image/png");
  EXPECT_EQ(zoom.image_width(), 80u);
  EXPECT_EQ(zoom.image_height(), 40u);
  Image z = DecodeResultImage(zoom);
  ASSERT_EQ(z.width, 80u);
  ASSERT_EQ(z.height, 40u);
  for (uint32_t y = 0; y < z.height; ++y) {
    for (uint32_t x = 0; x < z.width; ++x) {
      ASSERT_EQ(z.Pixel(x, y), full.Pixel(600 + x, 380 + y)) << "at (" << x << ", " << y << ")";
    }
  }
  // All four colours are in it: the offset is right, not just the size.
  EXPECT_EQ(z.Pixel(0, 0), 0xFF0000u);
  EXPECT_EQ(z.Pixel(79, 0), 0x00FF00u);
  EXPECT_EQ(z.Pixel(0, 39), 0x0000FFu);
  EXPECT_EQ(z.Pixel(79, 39), 0xFFFFFFu);
  // The whole display, in display pixels.
  EXPECT_EQ(DecodeResultImage(Ok(id, R"({"action": "zoom", "region": [0, 0, 1280, 800]})")).width, 1280u);
  // Zoom is computer_20251124's.
  CallResult old = Computer(id, R"({"action": "zoom", "region": [0, 0, 10, 10]})", 0, 0, false, "computer_20250124");
  EXPECT_THAT(old.finished.error().message(), HasSubstr("not an action of computer_20250124"));
}

TEST_F(ComputerToolCallTest, WrongInputIsAToolErrorNamingTheField) {
  const std::string id = Create(1024, 768);
  struct Case {
    const char* json;
    const char* field;
  };
  const Case cases[] = {
      {R"({"action": "left_click", "coordinate": [100]})", "computer.input.coordinate"},
      {R"({"action": "left_click", "coordinate": [2000, 10]})", "computer.input.coordinate"},
      {R"({"action": "fly"})", "computer.input.action"},
      {R"({"action": "scroll", "scroll_direction": "diagonal", "scroll_amount": 1})", "computer.input.scroll_direction"},
      {R"({"action": "hold_key", "text": "a"})", "computer.input.duration"},
      {R"({"action": "type"})", "computer.input.text"},
      {R"({"action": "zoom", "region": "all"})", "computer.input.region"},
      {R"(not json)", "computer.input_json"},
  };
  for (const Case& c : cases) {
    CallResult r = Computer(id, c.json, 1024, 768);
    ASSERT_TRUE(r.has_finished) << c.json;
    ASSERT_TRUE(r.finished.has_error()) << c.json;
    EXPECT_EQ(r.finished.error().code(), grpc::INVALID_ARGUMENT) << c.json;
    EXPECT_THAT(r.finished.error().message(), HasSubstr(c.field)) << c.json;
  }
  // wait: a screenshot after the pause, as the reference implementation answers.
  const auto start = Clock::now();
  pb::ComputerResult waited = Ok(id, R"({"action": "wait", "duration": 0.3})", 0, 0, /*screenshot_after=*/true);
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(300));
  EXPECT_EQ(waited.media_type(), "image/png");
}

TEST_F(ComputerToolCallTest, SandboxctlComputerPrintsTheResultJson) {
  const std::string id = Create(1024, 768);
  int rc = -1;
  std::string out = RunCtl(*daemon_, {"desktop", id, "computer", R"({"action": "mouse_move", "coordinate": [20, 30]})"},
                           &rc);
  EXPECT_EQ(rc, 0) << out;
  out = RunCtl(*daemon_, {"desktop", id, "computer", R"({"action": "cursor_position"})"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("\"text\":\"X=20,Y=30\""));
  out = RunCtl(*daemon_, {"desktop", id, "computer", R"({"action": "screenshot"})", "--display", "512x384"}, &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_THAT(out, HasSubstr("\"media_type\":\"image/png\""));
  EXPECT_THAT(out, HasSubstr("\"image_width\":512"));
  out = RunCtl(*daemon_, {"desktop", id, "computer", R"({"action": "nope"})"}, &rc);
  EXPECT_NE(rc, 0);
}

}  // namespace
}  // namespace sbx::testing
