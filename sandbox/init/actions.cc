#include "sandbox/init/actions.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "sandbox/init/drivers/driver_util.h"
#include "wire/frame.h"

namespace sbx::sandbox {
namespace {

namespace pb = ::sbx::init;

constexpr uint32_t kMaxBrowserCallMs = 120000;  // a browser action's own timeout at most (the API's bound)

void SetError(pb::Response* r, pb::Code code, std::string message) {
  pb::Error* e = r->mutable_error();
  e->set_code(code);
  e->set_message(std::move(message));
}

// NOTE: runs on the desktop's worker (DriverLane), like RunDesktopInput.
bool DesktopReady(init::Desktop& d, pb::Response* r) {
  if (!d.alive()) {
    SetError(r, pb::CODE_UNAVAILABLE, "the display is gone: Xvfb is no longer running");
    return false;
  }
  return true;
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
  const std::optional<init::Point> at =
      q.has_point() ? std::optional<init::Point>(init::Point{q.x(), q.y()}) : std::nullopt;
  auto keep_image = [out](init::DesktopImage image) {
    out->has_image = true;
    out->image = std::move(image.png);
    out->width = image.width;
    out->height = image.height;
    out->display_width = image.display_width;
    out->display_height = image.display_height;
  };
  switch (q.kind()) {
    case pb::DesktopInput::KIND_MOVE:
      ok = d.MouseMove(init::Point{q.x(), q.y()}, &error);
      break;
    case pb::DesktopInput::KIND_CLICK:
      if (q.button() < 1 || q.button() > 3) return SetError(r, pb::CODE_INVALID_ARGUMENT, "click: button must be 1..3");
      ok = d.Click(static_cast<init::Button>(q.button()), q.count(), at, q.modifiers(), &error);
      break;
    case pb::DesktopInput::KIND_MOUSE_DOWN:
    case pb::DesktopInput::KIND_MOUSE_UP:
      if (q.button() < 1 || q.button() > 3) {
        return SetError(r, pb::CODE_INVALID_ARGUMENT, "mouse down/up: button must be 1..3");
      }
      ok = d.MouseButton(static_cast<init::Button>(q.button()), q.kind() == pb::DesktopInput::KIND_MOUSE_DOWN, at,
                         &error);
      break;
    case pb::DesktopInput::KIND_DRAG:
      ok = d.Drag(init::Point{q.x(), q.y()}, init::Point{q.x2(), q.y2()}, &error);
      break;
    case pb::DesktopInput::KIND_SCROLL:
      if (q.direction() < 0 || q.direction() > 3) {
        return SetError(r, pb::CODE_INVALID_ARGUMENT, "scroll: direction must be 0..3");
      }
      ok = d.Scroll(static_cast<init::ScrollDirection>(q.direction()), q.amount(), at, q.modifiers(), &error);
      break;
    case pb::DesktopInput::KIND_KEY:
      ok = d.Key(q.text(), &error);
      break;
    case pb::DesktopInput::KIND_HOLD_KEY: {
      // The keys must be up again before the call's deadline: hold at most what is left of it, less a
      // margin for pressing, releasing and the round trips.
      constexpr int64_t kReleaseMarginMs = 1000;
      const int64_t left = deadline_ms - init::internal::NowMs() - kReleaseMarginMs;
      if (q.duration_ms() > static_cast<uint32_t>(init::Desktop::kMaxHoldMs)) {
        return SetError(r, pb::CODE_INVALID_ARGUMENT,
                        "hold_key: the duration " + std::to_string(q.duration_ms()) + " ms is over " +
                            std::to_string(init::Desktop::kMaxHoldMs) + " ms");
      }
      if (static_cast<int64_t>(q.duration_ms()) > left) {
        return SetError(r, pb::CODE_INVALID_ARGUMENT,
                        "hold_key: the duration " + std::to_string(q.duration_ms()) +
                            " ms does not fit in the call's timeout");
      }
      ok = d.HoldKey(q.text(), static_cast<int>(q.duration_ms()), cancel_fd, &error);
      break;
    }
    case pb::DesktopInput::KIND_TYPE:
      ok = d.Type(q.text(), &error);
      break;
    case pb::DesktopInput::KIND_CURSOR: {
      init::Point p;
      if (!d.CursorPosition(&p, &error)) break;
      r->mutable_pointer_position()->set_x(p.x);
      r->mutable_pointer_position()->set_y(p.y);
      return;
    }
    case pb::DesktopInput::KIND_SCREENSHOT: {
      init::DesktopImage image;
      if (!d.Screenshot(q.target_width(), &image, &error)) break;
      keep_image(std::move(image));
      return;
    }
    case pb::DesktopInput::KIND_ZOOM: {
      init::DesktopImage image;
      if (!d.Zoom(init::Point{q.x(), q.y()}, init::Point{q.x2(), q.y2()}, &image, &error)) break;
      keep_image(std::move(image));
      return;
    }
    default:
      return SetError(r, pb::CODE_INVALID_ARGUMENT, "desktop: an input of an unknown kind");
  }
  if (!ok) {
    // Once Xvfb is gone the driver's message says so ("the display :1 is gone: ...").
    return SetError(r, d.alive() ? pb::CODE_INVALID_ARGUMENT : pb::CODE_UNAVAILABLE, error);
  }
  r->mutable_ok();
}

// One browser call, on the browser's worker (DriverLane): touches `b` and `result` only. The action's timeout
// and every CDP wait of the call end by `deadline_ms` (the request's timeout_ms, counted from its arrival).
// `workspace`: downloads are reported relative to it.
void RunBrowserRequest(init::Browser& b, const pb::BrowserRequest& q, const std::string& workspace,
                       int64_t deadline_ms, DriverResult* result) {
  pb::Response* r = &result->response;
  std::string error;
  bool ok = false;
  pb::BrowserOutput* out = nullptr;
  const int64_t left = std::max<int64_t>(1, deadline_ms - init::internal::NowMs());
  const int timeout = static_cast<int>(
      std::min<int64_t>(q.timeout_ms() == 0 ? 30000 : std::min<uint32_t>(q.timeout_ms(), kMaxBrowserCallMs), left));
  b.set_call_deadline_ms(deadline_ms);
  struct ClearDeadline {
    init::Browser& b;
    ~ClearDeadline() { b.set_call_deadline_ms(0); }
  } clear_deadline{b};
  switch (q.kind()) {
    case pb::BrowserRequest::KIND_NAVIGATE:
      ok = b.Navigate(q.text(), q.text2().empty() ? "load" : q.text2(), timeout, &error);
      break;
    case pb::BrowserRequest::KIND_SCREENSHOT: {
      std::string image;
      uint32_t w = 0, h = 0;
      if (!b.Screenshot(q.flag(), q.text2().empty() ? "png" : q.text2(), q.a() == 0 ? 80 : q.a(),
                        static_cast<uint32_t>(std::max(0, q.b())), &image, &w, &h, &error)) {
        break;
      }
      result->has_image = true;
      result->image = std::move(image);
      result->width = result->display_width = w;
      result->height = result->display_height = h;
      return;
    }
    case pb::BrowserRequest::KIND_CLICK:
      ok = q.has_point() ? b.ClickAt(q.x(), q.y(), &error) : b.Click(q.text(), &error);
      break;
    case pb::BrowserRequest::KIND_TYPE:
      ok = b.Type(q.text(), q.text2(), &error);
      break;
    case pb::BrowserRequest::KIND_PRESS:
      ok = b.Press(q.text(), &error);
      break;
    case pb::BrowserRequest::KIND_EVALUATE: {
      std::string json;
      if (!b.Evaluate(q.text(), timeout, kMaxChunkBytes, &json, &error)) break;
      out = r->mutable_browser_output();
      out->set_data(std::move(json));
      ok = true;
      break;
    }
    case pb::BrowserRequest::KIND_CONTENT: {
      std::string content;
      bool truncated = false;
      if (!b.Content(q.flag(), kMaxChunkBytes, &content, &truncated, &error)) break;
      out = r->mutable_browser_output();
      out->set_data(std::move(content));
      out->set_truncated(truncated);
      ok = true;
      break;
    }
    case pb::BrowserRequest::KIND_WAIT_FOR:
      ok = q.flag() ? b.WaitForDownload(timeout, &error) : b.WaitFor(q.text(), q.text2(), timeout, &error);
      break;
    case pb::BrowserRequest::KIND_STORAGE_EXPORT: {
      std::string state;
      if (!b.ExportStorageState(&state, &error)) break;
      if (state.size() > kMaxChunkBytes) {
        error = "storage_state: the state is " + std::to_string(state.size()) + " bytes, over the " +
                std::to_string(kMaxChunkBytes) + "-byte cap";
        break;
      }
      out = r->mutable_browser_output();
      out->set_data(std::move(state));
      ok = true;
      break;
    }
    case pb::BrowserRequest::KIND_STORAGE_IMPORT:
      ok = b.ImportStorageState(q.text(), &error);
      break;
    case pb::BrowserRequest::KIND_VIEWPORT:
      ok = q.a() > 0 && q.b() > 0 && b.SetViewport(static_cast<uint32_t>(q.a()), static_cast<uint32_t>(q.b()), &error);
      if (!ok && error.empty()) error = "set_viewport: width and height must be positive";
      break;
    default:
      return SetError(r, pb::CODE_INVALID_ARGUMENT, "browser: a request of an unknown kind");
  }
  if (!ok) return SetError(r, b.alive() ? pb::CODE_INVALID_ARGUMENT : pb::CODE_UNAVAILABLE, error);
  if (out == nullptr) out = r->mutable_browser_output();
  // The answer is one frame: past a budget, what the page reported is left out and counted (downloads are
  // always kept: the agent streams their files from these reports).
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
      // The file relative to the workspace, as file tools name it.
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

}  // namespace sbx::sandbox
