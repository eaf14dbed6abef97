// Browser and desktop actions, from the public API to the init protocol: a session.proto BrowserAction or
// DesktopAction becomes the typed message sandbox-init carries out (wire/init_protocol.proto's
// BrowserRequest, DesktopInput). This is the one place that checks an action's fields and fills its defaults
// (the timeouts, the screenshot's format and quality, a click's count...), as session.proto documents them;
// sandbox-init adds none of its own. Desktop coordinates are mapped here from the caller's space onto display
// pixels. Pure: no I/O. Errors are INVALID_ARGUMENT naming the field ("browser.navigate.url: required").
#ifndef SBX_AGENT_SESSION_DRIVER_ACTIONS_H_
#define SBX_AGENT_SESSION_DRIVER_ACTIONS_H_

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "duvo/sandbox/v1/session.pb.h"
#include "wire/init_protocol.pb.h"

namespace sbx::agent {

// A driver call's deadline when the action names none.
inline constexpr uint32_t kDefaultBrowserCallMs = 30'000;
inline constexpr uint32_t kBrowserScreenshotCallMs = 60'000;  // a full-page capture may take Chromium that long
inline constexpr uint32_t kDefaultDesktopCallMs = 30'000;
// An action's own timeout (navigate, wait_for, evaluate) at most: session.proto's bound.
inline constexpr uint32_t kMaxBrowserActionMs = 120'000;
// Past an action's own timeout: its cleanup in sandbox-init (terminating a runaway script) and its answer.
inline constexpr uint32_t kDriverCleanupMs = 2'000;

// One browser action, ready for InitClient: BrowserScreenshot for request.screenshot(), else BrowserRequest.
struct BrowserCall {
  init::BrowserRequest request;
  // How long the call may take, before the session's remaining wall time caps it: the action's own timeout
  // (or the kind's default) and room for its cleanup, so that its own timeout fires first, with its message.
  uint32_t wanted_ms = kDefaultBrowserCallMs + kDriverCleanupMs;
};
absl::StatusOr<BrowserCall> PlanBrowserAction(const duvo::sandbox::v1::BrowserAction& action);

// One desktop action in display pixels (a display of display_width x display_height), ready for InitClient:
// TakeScreenshot, Zoom or PointerPosition for those, DesktopInput for the rest. A wait has no input: the
// agent waits wait_ms itself.
struct DesktopCall {
  init::DesktopInput input;
  uint32_t wait_ms = 0;
  // How long the call may take, before the session's remaining wall time caps it (hold_key: the hold too).
  uint32_t wanted_ms = kDefaultDesktopCallMs;
};
absl::StatusOr<DesktopCall> PlanDesktopAction(const duvo::sandbox::v1::DesktopAction& action, uint32_t display_width,
                                              uint32_t display_height);

// The display pixel (x, y) in the caller's space (`space`, or the display when unset): cursor_position's
// answer. Pixel centers map onto pixel centers.
std::pair<int, int> FromDisplay(const duvo::sandbox::v1::CoordinateSpace& space, uint32_t display_width,
                                uint32_t display_height, int x, int y);

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_DRIVER_ACTIONS_H_
