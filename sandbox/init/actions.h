// sandbox-init's browser and desktop calls: one init-protocol request carried out by its driver (a Browser
// over CDP, a Desktop over X11), on the driver's worker thread (DriverLane in init_server.cc).
#ifndef SBX_SANDBOX_INIT_ACTIONS_H_
#define SBX_SANDBOX_INIT_ACTIONS_H_

#include <cstdint>
#include <string>

#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/desktop.h"
#include "wire/init_protocol.pb.h"

namespace sbx::sandbox {

// What a driver call produced: its answer, and a screenshot for the loop to keep for DesktopFetch.
struct DriverResult {
  ::sbx::init::Response response;
  bool has_image = false;
  std::string image;
  uint32_t width = 0, height = 0, display_width = 0, display_height = 0;
};

// One desktop call, on the desktop's worker (DriverLane): touches `d` and `out` only; a screenshot is left in
// `out` for the loop to keep. `cancel_fd` becomes readable when serving ends (a hold_key stops waiting);
// `deadline_ms` is the call's own deadline (a hold_key must end within it).
void RunDesktopInput(init::Desktop& d, const ::sbx::init::DesktopInput& q, int cancel_fd, int64_t deadline_ms,
                     DriverResult* out);

// One browser call, on the browser's worker (DriverLane): touches `b` and `result` only. The action's timeout
// and every CDP wait of the call end by `deadline_ms` (the request's timeout_ms, counted from its arrival).
// `workspace` is sandbox-init's workdir (downloads are reported relative to it).
void RunBrowserRequest(init::Browser& b, const ::sbx::init::BrowserRequest& q, const std::string& workspace,
                       int64_t deadline_ms, DriverResult* result);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_INIT_ACTIONS_H_
