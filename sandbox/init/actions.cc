#include "sandbox/init/actions.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/errors.h"
#include "wire/frame.h"

namespace sbx::sandbox::serve {
namespace {

// NOTE: runs on the desktop's worker (DriverLane), like RunDesktopInput.
bool DesktopReady(init::Desktop& d, pb::Response* r) {
  if (!d.alive()) {
    SetError(r, pb::CODE_UNAVAILABLE, "the display is gone: Xvfb is no longer running");
    return false;
  }
  return true;
}

// The protocol's enums as the driver's: false for a value the agent never sends (UNSPECIFIED, unknown).
bool ToButton(pb::MouseButton button, init::Button* out) {
  switch (button) {
    case pb::MOUSE_BUTTON_LEFT: *out = init::Button::kLeft; return true;
    case pb::MOUSE_BUTTON_MIDDLE: *out = init::Button::kMiddle; return true;
    case pb::MOUSE_BUTTON_RIGHT: *out = init::Button::kRight; return true;
    default: return false;
  }
}

bool ToScrollDirection(pb::WheelDirection direction, init::ScrollDirection* out) {
  switch (direction) {
    case pb::WHEEL_DIRECTION_UP: *out = init::ScrollDirection::kUp; return true;
    case pb::WHEEL_DIRECTION_DOWN: *out = init::ScrollDirection::kDown; return true;
    case pb::WHEEL_DIRECTION_LEFT: *out = init::ScrollDirection::kLeft; return true;
    case pb::WHEEL_DIRECTION_RIGHT: *out = init::ScrollDirection::kRight; return true;
    default: return false;
  }
}

init::Point ToPoint(const pb::DisplayPoint& p) { return init::Point{p.x(), p.y()}; }

// An optional point: unset means where the pointer is.
std::optional<init::Point> PointerTarget(bool has_at, const pb::DisplayPoint& at) {
  return has_at ? std::optional<init::Point>(ToPoint(at)) : std::nullopt;
}

// Holds the chord, if it fits: the keys must be up again before the call's deadline, so it holds at most
// what is left of it, less a margin for pressing, releasing and the round trips.
bool HoldKey(init::Desktop& d, const pb::DesktopHoldKey& q, int cancel_fd, int64_t deadline_ms, pb::Response* r,
             std::string* error) {
  constexpr int64_t kReleaseMarginMs = 1000;
  const int64_t left = deadline_ms - init::internal::NowMs() - kReleaseMarginMs;
  if (q.duration_ms() > static_cast<uint32_t>(init::Desktop::kMaxHoldMs)) {
    SetError(r, pb::CODE_INVALID_ARGUMENT,
             "hold_key: the duration " + std::to_string(q.duration_ms()) + " ms is over " +
                 std::to_string(init::Desktop::kMaxHoldMs) + " ms");
    return false;
  }
  if (static_cast<int64_t>(q.duration_ms()) > left) {
    SetError(r, pb::CODE_INVALID_ARGUMENT,
             "hold_key: the duration " + std::to_string(q.duration_ms()) + " ms does not fit in the call's timeout");
    return false;
  }
  return d.HoldKey(q.chord(), static_cast<int>(q.duration_ms()), cancel_fd, error);
}

// An input action (not cursor_position, screenshot or zoom, which answer with more than Ok). False with
// *error from the driver, or with `r` already set (an argument the driver never gets).
bool RunInput(init::Desktop& d, const pb::DesktopInput& q, int cancel_fd, int64_t deadline_ms, pb::Response* r,
              std::string* error) {
  init::Button button{};
  switch (q.action_case()) {
    case pb::DesktopInput::kMouseMove:
      return d.MouseMove(ToPoint(q.mouse_move().to()), error);
    case pb::DesktopInput::kClick: {
      const pb::DesktopClick& c = q.click();
      if (!ToButton(c.button(), &button)) break;
      return d.Click(button, static_cast<int>(c.count()), PointerTarget(c.has_at(), c.at()), c.modifiers(), error);
    }
    case pb::DesktopInput::kMouseDown:
    case pb::DesktopInput::kMouseUp: {
      const bool down = q.has_mouse_down();
      const pb::DesktopMouseButton& m = down ? q.mouse_down() : q.mouse_up();
      if (!ToButton(m.button(), &button)) break;
      return d.MouseButton(button, down, PointerTarget(m.has_at(), m.at()), error);
    }
    case pb::DesktopInput::kDrag:
      return d.Drag(ToPoint(q.drag().from()), ToPoint(q.drag().to()), error);
    case pb::DesktopInput::kScroll: {
      const pb::DesktopScroll& s = q.scroll();
      init::ScrollDirection direction{};
      if (!ToScrollDirection(s.direction(), &direction)) {
        SetError(r, pb::CODE_INVALID_ARGUMENT, "scroll: no direction");
        return false;
      }
      return d.Scroll(direction, static_cast<int>(s.amount()), PointerTarget(s.has_at(), s.at()), s.modifiers(),
                      error);
    }
    case pb::DesktopInput::kKey:
      return d.Key(q.key().chord(), error);
    case pb::DesktopInput::kHoldKey:
      return HoldKey(d, q.hold_key(), cancel_fd, deadline_ms, r, error);
    case pb::DesktopInput::kType:
      return d.Type(q.type().text(), error);
    default:
      SetError(r, pb::CODE_INVALID_ARGUMENT, "desktop: an input of an unknown kind");
      return false;
  }
  SetError(r, pb::CODE_INVALID_ARGUMENT, "desktop: no mouse button");
  return false;
}

}  // namespace

// One desktop call, on the desktop's worker (DriverLane): touches `d` and `out` only; a screenshot is left in
// `out` for the loop to keep. `cancel_fd` becomes readable when serving ends (a hold_key stops waiting);
// `deadline_ms` is the call's own deadline (a hold_key must end within it).
void RunDesktopInput(init::Desktop& d, const pb::DesktopInput& q, int cancel_fd, int64_t deadline_ms,
                     DriverResult* out) {
  pb::Response* r = &out->response;
  if (!DesktopReady(d, r)) return;
  std::string error;
  bool ok = false;
  init::DesktopImage image;
  switch (q.action_case()) {
    case pb::DesktopInput::kCursorPosition: {
      init::Point p;
      if (!d.CursorPosition(&p, &error)) break;
      r->mutable_pointer_position()->set_x(p.x);
      r->mutable_pointer_position()->set_y(p.y);
      return;
    }
    case pb::DesktopInput::kScreenshot:
      ok = d.Screenshot(q.screenshot().target_width(), &image, &error);
      break;
    case pb::DesktopInput::kZoom:
      ok = d.Zoom(ToPoint(q.zoom().from()), ToPoint(q.zoom().to()), &image, &error);
      break;
    default:
      ok = RunInput(d, q, cancel_fd, deadline_ms, r, &error);
      if (!ok && r->has_error()) return;
  }
  if (!ok) {
    // Once Xvfb is gone the driver's message says so ("the display :1 is gone: ...").
    return SetError(r, d.alive() ? pb::CODE_INVALID_ARGUMENT : pb::CODE_UNAVAILABLE, error);
  }
  if (q.has_screenshot() || q.has_zoom()) {
    out->has_image = true;
    out->image = std::move(image.png);
    out->width = image.width;
    out->height = image.height;
    out->display_width = image.display_width;
    out->display_height = image.display_height;
    return;
  }
  r->mutable_ok();
}

namespace {

// The answer is one frame: past a budget, what the page reported is left out and counted (downloads are
// always kept: the agent streams their files from these reports). Download paths become relative to
// `workspace`, as file tools name them.
void AddPageEvents(init::Browser& b, const std::string& workspace, pb::BrowserOutput* out) {
  const size_t budget = kMaxFrameBytes - (64 << 10) - out->data().size();
  size_t used = 0, left_out = 0;
  for (nlohmann::json& event : b.TakeEvents()) {
    const auto str = [&event](const char* key) {
      auto it = event.find(key);
      return it != event.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    if (used > budget && str("type") != "download") {
      ++left_out;
      continue;
    }
    pb::PageReport* report = out->add_events();
    report->set_type(str("type"));
    report->set_level(str("level"));
    report->set_text(str("text"));
    if (str("type") == "download") {
      std::string path = str("path");
      const std::string prefix = workspace == "/" ? "/" : workspace + "/";
      if (path.compare(0, prefix.size(), prefix) == 0) path.erase(0, prefix.size());
      event["path"] = path;
      report->set_path(path);
      report->set_level(str("state"));
      if (auto bytes = event.find("bytes"); bytes != event.end() && bytes->is_number_integer()) {
        report->set_size(static_cast<uint64_t>(std::max<int64_t>(0, bytes->get<int64_t>())));
      }
    }
    report->set_json(event.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    used += report->ByteSizeLong();
  }
  if (left_out > 0) {
    pb::PageReport* report = out->add_events();
    report->set_type("dropped");
    report->set_text(std::to_string(left_out) + " page events left out (over one answer's size)");
    report->set_json("{\"type\":\"dropped\",\"count\":" + std::to_string(left_out) + "}");
  }
}

// An action's own timeout, cut to what is left of the call's deadline (0: all of it).
int ActionTimeout(uint32_t timeout_ms, int64_t deadline_ms) {
  const int64_t left = std::max<int64_t>(1, deadline_ms - init::internal::NowMs());
  return static_cast<int>(timeout_ms == 0 ? left : std::min<int64_t>(timeout_ms, left));
}

// The screenshot's image is left in `result` for the loop to keep.
bool CaptureScreenshot(init::Browser& b, const pb::BrowserScreenshot& q, DriverResult* result, std::string* error) {
  const char* format = q.format() == pb::IMAGE_FORMAT_PNG ? "png" : q.format() == pb::IMAGE_FORMAT_JPEG ? "jpeg" : "";
  std::string image;
  uint32_t w = 0, h = 0;
  // NOTE: the driver refuses a format other than png and jpeg (here: unset), and clamps the quality.
  if (!b.Screenshot(q.full_page(), format, static_cast<int>(std::min<uint32_t>(q.quality(), 100)), q.scale_width(),
                    &image, &w, &h, error)) {
    return false;
  }
  result->has_image = true;
  result->image = std::move(image);
  result->width = result->display_width = w;
  result->height = result->display_height = h;
  return true;
}

// The actions whose answer carries data (evaluate, content, export_storage): set into `out`.
bool RunWithData(init::Browser& b, const pb::BrowserRequest& q, int64_t deadline_ms, pb::BrowserOutput* out,
                 std::string* error) {
  std::string data;
  bool truncated = false;
  switch (q.action_case()) {
    case pb::BrowserRequest::kEvaluate:
      if (!b.Evaluate(q.evaluate().expression(), ActionTimeout(q.evaluate().timeout_ms(), deadline_ms),
                      kMaxChunkBytes, &data, error)) {
        return false;
      }
      break;
    case pb::BrowserRequest::kContent:
      if (!b.Content(q.content().text(), kMaxChunkBytes, &data, &truncated, error)) return false;
      break;
    default:  // export_storage
      if (!b.ExportStorageState(&data, error)) return false;
      if (data.size() > kMaxChunkBytes) {
        *error = "storage_state: the state is " + std::to_string(data.size()) + " bytes, over the " +
                 std::to_string(kMaxChunkBytes) + "-byte cap";
        return false;
      }
  }
  out->set_data(std::move(data));
  out->set_truncated(truncated);
  return true;
}

// Every other action: false with *error when the driver refused or failed.
bool RunAction(init::Browser& b, const pb::BrowserRequest& q, int64_t deadline_ms, pb::BrowserOutput* out,
               std::string* error) {
  switch (q.action_case()) {
    case pb::BrowserRequest::kNavigate: {
      const pb::BrowserNavigate& n = q.navigate();
      const char* wait = n.wait_until() == pb::WAIT_UNTIL_LOAD           ? "load"
                         : n.wait_until() == pb::WAIT_UNTIL_NETWORK_IDLE ? "networkidle"
                                                                         : "";  // refused by the driver
      return b.Navigate(n.url(), wait, ActionTimeout(n.timeout_ms(), deadline_ms), error);
    }
    case pb::BrowserRequest::kClick:
      return q.click().has_point() ? b.ClickAt(q.click().point().x(), q.click().point().y(), error)
                                   : b.Click(q.click().selector(), error);
    case pb::BrowserRequest::kType:
      return b.Type(q.type().text(), q.type().selector(), error);
    case pb::BrowserRequest::kPress:
      return b.Press(q.press().key(), error);
    case pb::BrowserRequest::kEvaluate:
    case pb::BrowserRequest::kContent:
    case pb::BrowserRequest::kExportStorage:
      return RunWithData(b, q, deadline_ms, out, error);
    case pb::BrowserRequest::kWaitFor:
      return b.WaitFor(q.wait_for().selector(), q.wait_for().text(),
                       ActionTimeout(q.wait_for().timeout_ms(), deadline_ms), error);
    case pb::BrowserRequest::kWaitForDownload:
      return b.WaitForDownload(ActionTimeout(q.wait_for_download().timeout_ms(), deadline_ms), error);
    case pb::BrowserRequest::kSetViewport:
      return b.SetViewport(q.set_viewport().width(), q.set_viewport().height(), error);
    case pb::BrowserRequest::kImportStorage:
      return b.ImportStorageState(q.import_storage().state_json(), error);
    default:  // screenshot: RunBrowserRequest's
      *error = "browser: a request of an unknown kind";
      return false;
  }
}

}  // namespace

// One browser call, on the browser's worker (DriverLane): touches `b` and `result` only. The action's timeout
// and every CDP wait of the call end by `deadline_ms` (the request's timeout_ms, counted from its arrival).
// `workspace`: downloads are reported relative to it.
void RunBrowserRequest(init::Browser& b, const pb::BrowserRequest& q, const std::string& workspace,
                       int64_t deadline_ms, DriverResult* result) {
  pb::Response* r = &result->response;
  if (q.action_case() == pb::BrowserRequest::ACTION_NOT_SET) {
    return SetError(r, pb::CODE_INVALID_ARGUMENT, "browser: a request of an unknown kind");
  }
  b.set_call_deadline_ms(deadline_ms);
  struct ClearDeadline {
    init::Browser& b;
    ~ClearDeadline() { b.set_call_deadline_ms(0); }
  } clear_deadline{b};
  std::string error;
  if (q.has_screenshot()) {
    if (!CaptureScreenshot(b, q.screenshot(), result, &error)) {
      SetError(r, b.alive() ? pb::CODE_INVALID_ARGUMENT : pb::CODE_UNAVAILABLE, error);
    }
    return;
  }
  pb::BrowserOutput out;
  if (!RunAction(b, q, deadline_ms, &out, &error)) {
    return SetError(r, b.alive() ? pb::CODE_INVALID_ARGUMENT : pb::CODE_UNAVAILABLE, error);
  }
  AddPageEvents(b, workspace, &out);
  *r->mutable_browser_output() = std::move(out);
}

}  // namespace sbx::sandbox::serve
