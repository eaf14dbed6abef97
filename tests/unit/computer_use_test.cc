// PlanComputerUse: Anthropic's computer-use tool input, as a model writes it (the JSON of the documentation's
// examples), becomes typed DesktopActions in the declared space; anything else is INVALID_ARGUMENT naming
// the field.
#include "agent/session/computer_use.h"

#include <string>

#include <gtest/gtest.h>

#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;

pb::ComputerUse Call(const std::string& json, uint32_t w = 1024, uint32_t h = 768, const std::string& version = "") {
  pb::ComputerUse c;
  c.set_input_json(json);
  c.set_display_width_px(w);
  c.set_display_height_px(h);
  c.set_tool_version(version);
  return c;
}

ComputerPlan Plan(const std::string& json, uint32_t w = 1024, uint32_t h = 768, const std::string& version = "") {
  absl::StatusOr<ComputerPlan> plan = PlanComputerUse(Call(json, w, h, version));
  EXPECT_TRUE(IsOk(plan)) << json;
  return plan.ok() ? *plan : ComputerPlan{};
}

TEST(ComputerUseTest, ScreenshotAndCursorPositionTakeNoSteps) {
  ComputerPlan p = Plan(R"({"action": "screenshot"})");
  EXPECT_EQ(p.action, "screenshot");
  EXPECT_TRUE(p.steps.empty());
  EXPECT_EQ(p.show, ComputerPlan::Show::kScreenshot);
  p = Plan(R"({"action": "cursor_position"})");
  EXPECT_TRUE(p.steps.empty());
  EXPECT_EQ(p.show, ComputerPlan::Show::kCursorPosition);
}

TEST(ComputerUseTest, ClicksCarryButtonCountPointModifiersAndTheDeclaredSpace) {
  ComputerPlan p = Plan(R"({"action": "left_click", "coordinate": [500, 300]})");
  ASSERT_EQ(p.steps.size(), 1u);
  const pb::DesktopAction& a = p.steps[0];
  EXPECT_EQ(a.space().width(), 1024u);
  EXPECT_EQ(a.space().height(), 768u);
  ASSERT_TRUE(a.has_click());
  EXPECT_EQ(a.click().button(), pb::DesktopAction::LEFT);
  EXPECT_EQ(a.click().count(), 1u);
  EXPECT_EQ(a.click().x(), 500);
  EXPECT_EQ(a.click().y(), 300);
  EXPECT_EQ(a.click().modifiers(), "");
  EXPECT_EQ(p.show, ComputerPlan::Show::kScreenshot);

  p = Plan(R"({"action": "right_click", "coordinate": [1, 2]})");
  EXPECT_EQ(p.steps[0].click().button(), pb::DesktopAction::RIGHT);
  p = Plan(R"({"action": "middle_click", "coordinate": [1, 2]})");
  EXPECT_EQ(p.steps[0].click().button(), pb::DesktopAction::MIDDLE);
  p = Plan(R"({"action": "double_click", "coordinate": [1, 2]})");
  EXPECT_EQ(p.steps[0].click().count(), 2u);
  p = Plan(R"({"action": "triple_click", "coordinate": [1, 2]})");
  EXPECT_EQ(p.steps[0].click().count(), 3u);
  // Shift-click (the documented `text`; the reference implementation reads `key`).
  p = Plan(R"({"action": "left_click", "coordinate": [500, 300], "text": "shift"})");
  EXPECT_EQ(p.steps[0].click().modifiers(), "shift");
  p = Plan(R"({"action": "left_click", "key": "ctrl+shift"})");
  EXPECT_EQ(p.steps[0].click().modifiers(), "ctrl+shift");
  EXPECT_FALSE(p.steps[0].click().has_x());  // where the pointer is
}

TEST(ComputerUseTest, WithoutADeclaredDisplayTheSpaceIsTheDisplays) {
  ComputerPlan p = Plan(R"({"action": "mouse_move", "coordinate": [5000, 3000]})", 0, 0);
  ASSERT_EQ(p.steps.size(), 1u);
  EXPECT_FALSE(p.steps[0].has_space());
  EXPECT_EQ(p.steps[0].mouse_move().x(), 5000);
}

TEST(ComputerUseTest, DragsMouseButtonsScrollKeysTypeHoldWaitZoom) {
  ComputerPlan p = Plan(R"({"action": "left_click_drag", "start_coordinate": [10, 20], "coordinate": [300, 400]})");
  ASSERT_EQ(p.steps.size(), 1u);
  EXPECT_EQ(p.steps[0].left_click_drag().from_x(), 10);
  EXPECT_EQ(p.steps[0].left_click_drag().from_y(), 20);
  EXPECT_EQ(p.steps[0].left_click_drag().to_x(), 300);
  EXPECT_EQ(p.steps[0].left_click_drag().to_y(), 400);
  // computer_20241022's drag starts where the pointer is: down, move, up.
  p = Plan(R"({"action": "left_click_drag", "coordinate": [300, 400]})", 1024, 768, "computer_20241022");
  ASSERT_EQ(p.steps.size(), 3u);
  EXPECT_TRUE(p.steps[0].has_mouse_down());
  EXPECT_EQ(p.steps[1].mouse_move().x(), 300);
  EXPECT_TRUE(p.steps[2].has_mouse_up());

  p = Plan(R"({"action": "left_mouse_down", "coordinate": [7, 8]})");
  EXPECT_EQ(p.steps[0].mouse_down().button(), pb::DesktopAction::LEFT);
  EXPECT_EQ(p.steps[0].mouse_down().x(), 7);
  p = Plan(R"({"action": "left_mouse_up"})");
  EXPECT_TRUE(p.steps[0].has_mouse_up());
  EXPECT_FALSE(p.steps[0].mouse_up().has_x());

  p = Plan(R"({"action": "scroll", "coordinate": [500, 400], "scroll_direction": "down", "scroll_amount": 3})");
  EXPECT_EQ(p.steps[0].scroll().direction(), pb::DesktopAction::DOWN);
  EXPECT_EQ(p.steps[0].scroll().amount(), 3u);
  EXPECT_EQ(p.steps[0].scroll().x(), 500);
  p = Plan(R"({"action": "scroll", "scroll_direction": "left", "scroll_amount": 5, "text": "ctrl"})");
  EXPECT_EQ(p.steps[0].scroll().direction(), pb::DesktopAction::LEFT_SCROLL);
  EXPECT_EQ(p.steps[0].scroll().modifiers(), "ctrl");
  p = Plan(R"({"action": "scroll", "coordinate": [5, 6], "scroll_direction": "up", "scroll_amount": 0})");
  ASSERT_EQ(p.steps.size(), 1u);  // no wheel clicks: only the move
  EXPECT_TRUE(p.steps[0].has_mouse_move());

  p = Plan(R"({"action": "key", "text": "ctrl+s"})");
  EXPECT_EQ(p.steps[0].key().chord(), "ctrl+s");
  p = Plan(R"({"action": "key", "text": "ctrl+a  Delete"})");  // xdotool: chords one after another
  ASSERT_EQ(p.steps.size(), 2u);
  EXPECT_EQ(p.steps[1].key().chord(), "Delete");
  p = Plan(R"({"action": "type", "text": "Hello, world!"})");
  EXPECT_EQ(p.steps[0].type().text(), "Hello, world!");
  p = Plan(R"({"action": "hold_key", "text": "shift", "duration": 1.5})");
  EXPECT_EQ(p.steps[0].hold_key().chord(), "shift");
  EXPECT_EQ(p.steps[0].hold_key().duration_ms(), 1500u);
  p = Plan(R"({"action": "wait", "duration": 2})");
  EXPECT_EQ(p.steps[0].wait().ms(), 2000u);
  EXPECT_EQ(p.show, ComputerPlan::Show::kScreenshot);

  p = Plan(R"({"action": "zoom", "region": [0, 0, 512, 384]})");
  ASSERT_EQ(p.steps.size(), 1u);
  EXPECT_EQ(p.steps[0].zoom().x1(), 512);
  EXPECT_EQ(p.steps[0].zoom().y1(), 384);
  EXPECT_EQ(p.show, ComputerPlan::Show::kZoom);
  p = Plan(R"({"action": "zoom", "region": [0, 0, 1024, 768]})");  // the far edges may be the display's
  EXPECT_EQ(p.steps[0].zoom().x1(), 1024);
}

TEST(ComputerUseTest, SkipScreenshotLeavesInputActionsWithoutAnImage) {
  pb::ComputerUse c = Call(R"({"action": "left_click", "coordinate": [1, 1]})");
  c.set_skip_screenshot(true);
  absl::StatusOr<ComputerPlan> p = PlanComputerUse(c);
  ASSERT_TRUE(IsOk(p));
  EXPECT_EQ(p->show, ComputerPlan::Show::kNothing);
  c.set_input_json(R"({"action": "screenshot"})");
  p = PlanComputerUse(c);
  ASSERT_TRUE(IsOk(p));
  EXPECT_EQ(p->show, ComputerPlan::Show::kScreenshot);  // asked for
}

TEST(ComputerUseTest, BadInputNamesTheField) {
  const absl::StatusCode kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call("{")), kBad, "computer.input_json: not JSON"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call("[1]")), kBad, "computer.input_json: must be a JSON object"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call("{}")), kBad, "computer.input.action: missing"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "jump"})")), kBad,
                       "computer.input.action: unknown action \"jump\""));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": 3})")), kBad, "computer.input.action: must be a string"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "mouse_move"})")), kBad,
                       "computer.input.coordinate: required"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "mouse_move", "coordinate": [1]})")), kBad,
                       "computer.input.coordinate: must be an array [x, y]"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "mouse_move", "coordinate": [1.5, 2]})")), kBad,
                       "computer.input.coordinate: must be an array [x, y] of integers"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "mouse_move", "coordinate": [-1, 2]})")), kBad,
                       "computer.input.coordinate: element 0 (-1) must be a non-negative"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "left_click", "coordinate": [1024, 0]})")), kBad,
                       "computer.input.coordinate: [1024,0] is outside the 1024x768 display"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "key", "coordinate": [1, 1], "text": "a"})")), kBad,
                       "computer.input.coordinate: not a parameter of key"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "key"})")), kBad, "computer.input.text: required"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "type", "text": 5})")), kBad,
                       "computer.input.text: must be a string"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "scroll", "scroll_amount": 3})")), kBad,
                       "computer.input.scroll_direction: required"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "scroll", "scroll_direction": "sideways",
                                                "scroll_amount": 3})")),
                       kBad, "computer.input.scroll_direction: \"sideways\""));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "scroll", "scroll_direction": "up", "scroll_amount": -1})")),
                       kBad, "computer.input.scroll_amount: -1 is outside"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "hold_key", "text": "a", "duration": 101})")), kBad,
                       "computer.input.duration: 101 s is too long"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "hold_key", "text": "a", "duration": -1})")), kBad,
                       "computer.input.duration: must not be negative"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "wait"})")), kBad, "computer.input.duration: required"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "zoom", "region": [10, 10, 5, 20]})")), kBad,
                       "computer.input.region: [10, 10, 5, 20] is empty"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "zoom", "region": [0, 0, 1025, 20]})")), kBad,
                       "computer.input.region: [0,0,1025,20] is outside"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "left_click", "text": "shift", "key": "ctrl"})")), kBad,
                       "computer.input.key: give the modifier keys in text or key, not both"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "screenshot"})", 1024, 0)), kBad,
                       "computer.display_width_px: give both"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "screenshot"})", 1024, 768, "computer_1999")), kBad,
                       "computer.tool_version: unknown tool version \"computer_1999\""));
}

TEST(ComputerUseTest, ActionsAreLimitedToTheirToolVersion) {
  const absl::StatusCode kBad = absl::StatusCode::kInvalidArgument;
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "zoom", "region": [0, 0, 5, 5]})", 1024, 768,
                                            "computer_20250124")),
                       kBad, "computer.input.action: \"zoom\" is not an action of computer_20250124"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "hold_key", "text": "a", "duration": 1})", 1024, 768,
                                            "computer_20241022")),
                       kBad, "computer.input.action: \"hold_key\" is not an action of computer_20241022"));
  EXPECT_TRUE(StatusIs(PlanComputerUse(Call(R"({"action": "left_click", "text": "shift"})", 1024, 768,
                                            "computer_20241022")),
                       kBad, "computer.input.text: not a parameter of left_click"));
  EXPECT_TRUE(IsOk(PlanComputerUse(Call(R"({"action": "triple_click"})", 1024, 768, "computer_20250124"))));
  EXPECT_TRUE(IsOk(PlanComputerUse(Call(R"({"action": "zoom", "region": [0, 0, 5, 5]})", 1024, 768,
                                        "computer_20251124"))));
}

}  // namespace
}  // namespace sbx::agent
