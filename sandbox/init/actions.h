// sandbox-init's browser and desktop calls: one init-protocol request carried out by its driver (a Browser
// over CDP, a Desktop over X11), on the driver's worker thread (DriverLane, driver_lane.h).
#ifndef SBX_SANDBOX_INIT_ACTIONS_H_
#define SBX_SANDBOX_INIT_ACTIONS_H_

#include <cstdint>
#include <string>

#include "sandbox/init/driver_lane.h"
#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/desktop.h"
#include "wire/init_protocol.pb.h"

namespace sbx::sandbox::serve {

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

}  // namespace sbx::sandbox::serve

#endif  // SBX_SANDBOX_INIT_ACTIONS_H_
