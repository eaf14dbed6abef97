// PlanBrowserAction and PlanDesktopAction (agent/session/driver_actions.h): a public BrowserAction or
// DesktopAction becomes the typed init-protocol message, every default filled (as session.proto documents
// them) and every bad field refused by name; desktop coordinates land on display pixels.
#include "agent/session/driver_actions.h"

#include <gtest/gtest.h>

#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;
constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;

BrowserCall Browser(const pb::BrowserAction& action) {
  absl::StatusOr<BrowserCall> call = PlanBrowserAction(action);
  EXPECT_TRUE(IsOk(call));
  return call.ok() ? *call : BrowserCall{};
}

DesktopCall Desktop(const pb::DesktopAction& action, uint32_t w = 1280, uint32_t h = 800) {
  absl::StatusOr<DesktopCall> call = PlanDesktopAction(action, w, h);
  EXPECT_TRUE(IsOk(call));
  return call.ok() ? *call : DesktopCall{};
}

TEST(PlanBrowserActionTest, OwnTimeoutsGetSessionProtosDefaultsAndBound) {
  pb::BrowserAction evaluate;
  evaluate.mutable_evaluate()->set_expression("1+1");
  BrowserCall call = Browser(evaluate);
  EXPECT_EQ(call.request.evaluate().expression(), "1+1");
  EXPECT_EQ(call.request.evaluate().timeout_ms(), 10'000u);  // "0 = 10000", sandbox-init's old default was 30 s
  EXPECT_EQ(call.wanted_ms, 10'000u + kDriverCleanupMs);

  pb::BrowserAction navigate;
  navigate.mutable_navigate()->set_url("http://example.test/");
  call = Browser(navigate);
  EXPECT_EQ(call.request.navigate().timeout_ms(), 30'000u);
  EXPECT_EQ(call.request.navigate().wait_until(), init::WAIT_UNTIL_LOAD);
  navigate.mutable_navigate()->set_timeout_ms(500'000);
  navigate.mutable_navigate()->set_wait_until("networkidle");
  call = Browser(navigate);
  EXPECT_EQ(call.request.navigate().timeout_ms(), kMaxBrowserActionMs);
  EXPECT_EQ(call.request.navigate().wait_until(), init::WAIT_UNTIL_NETWORK_IDLE);
  EXPECT_EQ(call.wanted_ms, kMaxBrowserActionMs + kDriverCleanupMs);

  pb::BrowserAction wait;
  wait.mutable_wait_for()->set_download(true);
  wait.mutable_wait_for()->set_timeout_ms(45'000);
  call = Browser(wait);
  ASSERT_TRUE(call.request.has_wait_for_download());
  EXPECT_EQ(call.request.wait_for_download().timeout_ms(), 45'000u);

  pb::BrowserAction press;
  press.mutable_press()->set_key("Enter");
  EXPECT_EQ(Browser(press).wanted_ms, kDefaultBrowserCallMs + kDriverCleanupMs);
}

TEST(PlanBrowserActionTest, ScreenshotDefaults) {
  pb::BrowserAction shot;
  shot.mutable_screenshot();
  BrowserCall call = Browser(shot);
  EXPECT_EQ(call.request.screenshot().format(), init::IMAGE_FORMAT_PNG);
  EXPECT_EQ(call.request.screenshot().quality(), 80u);
  EXPECT_EQ(call.wanted_ms, kBrowserScreenshotCallMs);
  shot.mutable_screenshot()->set_format("jpeg");
  shot.mutable_screenshot()->set_quality(40);
  shot.mutable_screenshot()->set_width(640);
  call = Browser(shot);
  EXPECT_EQ(call.request.screenshot().format(), init::IMAGE_FORMAT_JPEG);
  EXPECT_EQ(call.request.screenshot().quality(), 40u);
  EXPECT_EQ(call.request.screenshot().scale_width(), 640u);
  shot.mutable_screenshot()->set_format("gif");
  EXPECT_TRUE(StatusIs(PlanBrowserAction(shot).status(), kInvalid, "browser.screenshot.format"));
}

TEST(PlanBrowserActionTest, ClickTargetsAPointOrASelector) {
  pb::BrowserAction click;
  click.mutable_click()->set_selector("#go");
  EXPECT_EQ(Browser(click).request.click().selector(), "#go");
  click.mutable_click()->set_x(3.5);
  click.mutable_click()->set_y(4);
  BrowserCall call = Browser(click);
  ASSERT_TRUE(call.request.click().has_point());
  EXPECT_EQ(call.request.click().point().x(), 3.5);
  EXPECT_EQ(call.request.click().point().y(), 4);
  click.mutable_click()->clear_selector();
  click.mutable_click()->clear_y();
  EXPECT_TRUE(StatusIs(PlanBrowserAction(click).status(), kInvalid, "a selector, or x and y"));
}

TEST(PlanBrowserActionTest, RefusesWhatSandboxInitWouldNotDo) {
  EXPECT_TRUE(StatusIs(PlanBrowserAction(pb::BrowserAction()).status(), kInvalid, "no action given"));
  pb::BrowserAction a;
  a.mutable_navigate();
  EXPECT_TRUE(StatusIs(PlanBrowserAction(a).status(), kInvalid, "browser.navigate.url"));
  a.mutable_wait_for()->set_download(true);
  a.mutable_wait_for()->set_text("x");
  EXPECT_TRUE(StatusIs(PlanBrowserAction(a).status(), kInvalid, "not both"));
  a.mutable_set_viewport()->set_width(800);
  EXPECT_TRUE(StatusIs(PlanBrowserAction(a).status(), kInvalid, "must be positive"));
}

TEST(PlanDesktopActionTest, ClickDefaultsAndMapsTheCallersSpace) {
  pb::DesktopAction click;
  click.mutable_click();
  DesktopCall call = Desktop(click);
  EXPECT_EQ(call.input.click().count(), 1u);
  EXPECT_EQ(call.input.click().button(), init::MOUSE_BUTTON_LEFT);
  EXPECT_FALSE(call.input.click().has_at());  // where the pointer is
  click.mutable_click()->set_button(pb::DesktopAction::RIGHT);
  click.mutable_click()->set_x(10);
  click.mutable_click()->set_y(399);
  click.mutable_space()->set_width(640);
  click.mutable_space()->set_height(400);
  call = Desktop(click);
  EXPECT_EQ(call.input.click().button(), init::MOUSE_BUTTON_RIGHT);
  ASSERT_TRUE(call.input.click().has_at());
  EXPECT_EQ(call.input.click().at().x(), 21);
  EXPECT_EQ(call.input.click().at().y(), 799);
  click.mutable_click()->set_count(4);
  EXPECT_TRUE(StatusIs(PlanDesktopAction(click, 1280, 800).status(), kInvalid, "desktop.click.count"));
  click.mutable_click()->set_count(1);
  click.mutable_click()->set_x(640);
  EXPECT_TRUE(StatusIs(PlanDesktopAction(click, 1280, 800), kInvalid, "outside the 640x400 coordinate space"));
}

TEST(PlanDesktopActionTest, EachActionItsMessage) {
  pb::DesktopAction scroll;
  scroll.mutable_scroll()->set_direction(pb::DesktopAction::LEFT_SCROLL);
  DesktopCall call = Desktop(scroll);
  EXPECT_EQ(call.input.scroll().direction(), init::WHEEL_DIRECTION_LEFT);
  EXPECT_EQ(call.input.scroll().amount(), 1u);

  pb::DesktopAction hold;
  hold.mutable_hold_key()->set_chord("shift");
  hold.mutable_hold_key()->set_duration_ms(5000);
  call = Desktop(hold);
  EXPECT_EQ(call.input.hold_key().chord(), "shift");
  EXPECT_EQ(call.wanted_ms, kDefaultDesktopCallMs + 5000);

  pb::DesktopAction wait;
  wait.mutable_wait()->set_ms(250);
  call = Desktop(wait);
  EXPECT_EQ(call.input.action_case(), init::DesktopInput::ACTION_NOT_SET);
  EXPECT_EQ(call.wait_ms, 250u);

  pb::DesktopAction zoom;
  zoom.mutable_zoom()->set_x0(0);
  zoom.mutable_zoom()->set_y0(0);
  zoom.mutable_zoom()->set_x1(320);
  zoom.mutable_zoom()->set_y1(200);
  zoom.mutable_space()->set_width(640);
  zoom.mutable_space()->set_height(400);
  call = Desktop(zoom);
  EXPECT_EQ(call.input.zoom().to().x(), 640);
  EXPECT_EQ(call.input.zoom().to().y(), 400);

  pb::DesktopAction key;
  key.mutable_key();
  EXPECT_TRUE(StatusIs(PlanDesktopAction(key, 1280, 800).status(), kInvalid, "desktop.key.chord"));
  EXPECT_TRUE(StatusIs(PlanDesktopAction(pb::DesktopAction(), 1280, 800), kInvalid, "no action given"));
}

TEST(PlanDesktopActionTest, CursorPositionMapsBackIntoTheSpace) {
  pb::CoordinateSpace space;
  space.set_width(640);
  space.set_height(400);
  EXPECT_EQ(FromDisplay(space, 1280, 800, 21, 799), std::make_pair(10, 399));
  EXPECT_EQ(FromDisplay(pb::CoordinateSpace(), 1280, 800, 21, 799), std::make_pair(21, 799));
}

}  // namespace
}  // namespace sbx::agent
