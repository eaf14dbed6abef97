// Anthropic's computer-use tool (computer_20241022, computer_20250124, computer_20251124) on our desktop
// actions: the model's tool_use `input` JSON, taken as-is (ToolCall.computer), becomes a short list of typed
// DesktopActions in the coordinate space the agent declared to the model (display_width_px x
// display_height_px); Session maps that space onto the display like any DesktopAction's.
//
// Parameter names and rules follow Anthropic's documentation and reference implementation
// (computer-use-demo/computer_use_demo/tools/computer.py): `coordinate` [x, y], `start_coordinate`,
// `text` (key names, text to type, and the modifier keys held during a click or scroll), `scroll_direction`
// and `scroll_amount`, `duration` in seconds (hold_key, wait; at most 100), `region` [x0, y0, x1, y1] (zoom).
// Pure: no I/O.
#ifndef SBX_AGENT_SESSION_COMPUTER_USE_H_
#define SBX_AGENT_SESSION_COMPUTER_USE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "duvo/sandbox/v1/session.pb.h"

namespace sbx::agent {

// What a computer call does.
struct ComputerPlan {
  std::string action;  // the input's "action", e.g. "left_click"
  // Run in order; each carries the declared space (unset when the call declared none: display pixels).
  std::vector<duvo::sandbox::v1::DesktopAction> steps;
  // What the result shows after the steps ran.
  enum class Show {
    kNothing,         // an input action with skip_screenshot
    kScreenshot,      // a screenshot of the display, scaled to the declared width
    kCursorPosition,  // the text "X=x,Y=y" in the declared space (steps is empty)
    kZoom,            // the zoom step's image (the last step is a DesktopAction.zoom)
  };
  Show show = Show::kNothing;
};

// Parses and checks `call`. Errors are INVALID_ARGUMENT naming the field ("computer.input.coordinate: ...",
// "computer.input.action: unknown action \"jump\"", "computer.tool_version: ...").
absl::StatusOr<ComputerPlan> PlanComputerUse(const duvo::sandbox::v1::ComputerUse& call);

// The tool versions PlanComputerUse knows, oldest first.
const std::vector<std::string>& ComputerToolVersions();

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_COMPUTER_USE_H_
