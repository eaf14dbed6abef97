#include "agent/session/driver_actions.h"

#include <algorithm>
#include <array>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;

// ---- Browser ------------------------------------------------------------------------------------------

// An action's own timeout: `wanted`, or the kind's default for 0, at most kMaxBrowserActionMs. The call may
// take that long and its cleanup.
uint32_t OwnTimeout(uint32_t wanted, uint32_t default_ms, BrowserCall* call) {
  const uint32_t timeout = std::min(wanted == 0 ? default_ms : wanted, kMaxBrowserActionMs);
  call->wanted_ms = timeout + kDriverCleanupMs;
  return timeout;
}

absl::Status PlanScreenshot(const pb::BrowserAction::Screenshot& sc, BrowserCall* call) {
  const std::string format = sc.format().empty() ? "png" : sc.format();
  if (format != "png" && format != "jpeg") {
    return absl::InvalidArgumentError("browser.screenshot.format: \"png\" or \"jpeg\"");
  }
  if (sc.quality() > 100) return absl::InvalidArgumentError("browser.screenshot.quality: 1..100");
  if (sc.width() != 0 && (sc.width() < 16 || sc.width() > 7680)) {
    return absl::InvalidArgumentError("browser.screenshot.width: 16..7680 pixels, or 0 for no scaling");
  }
  init::BrowserScreenshot* q = call->request.mutable_screenshot();
  q->set_full_page(sc.full_page());
  q->set_format(format == "png" ? init::IMAGE_FORMAT_PNG : init::IMAGE_FORMAT_JPEG);
  q->set_quality(sc.quality() == 0 ? 80 : sc.quality());
  q->set_scale_width(sc.width());
  call->wanted_ms = kBrowserScreenshotCallMs;
  return absl::OkStatus();
}

absl::Status PlanNavigate(const pb::BrowserAction::Navigate& n, BrowserCall* call) {
  if (n.url().empty()) return absl::InvalidArgumentError("browser.navigate.url: required");
  if (!n.wait_until().empty() && n.wait_until() != "load" && n.wait_until() != "networkidle") {
    return absl::InvalidArgumentError("browser.navigate.wait_until: \"load\" or \"networkidle\"");
  }
  init::BrowserNavigate* q = call->request.mutable_navigate();
  q->set_url(n.url());
  q->set_wait_until(n.wait_until() == "networkidle" ? init::WAIT_UNTIL_NETWORK_IDLE : init::WAIT_UNTIL_LOAD);
  q->set_timeout_ms(OwnTimeout(n.timeout_ms(), 30'000, call));
  return absl::OkStatus();
}

absl::Status PlanClick(const pb::BrowserAction::Click& c, BrowserCall* call) {
  init::BrowserClick* q = call->request.mutable_click();
  if (c.has_x() && c.has_y()) {
    q->mutable_point()->set_x(c.x());
    q->mutable_point()->set_y(c.y());
  } else if (!c.selector().empty()) {
    q->set_selector(c.selector());
  } else {
    return absl::InvalidArgumentError("browser.click: a selector, or x and y");
  }
  return absl::OkStatus();
}

absl::Status PlanWaitFor(const pb::BrowserAction::WaitFor& w, BrowserCall* call) {
  const bool element = !w.selector().empty() || !w.text().empty();
  if (w.download() && element) {
    return absl::InvalidArgumentError("browser.wait_for: a download, or a selector and/or a text, not both");
  }
  if (w.download()) {
    call->request.mutable_wait_for_download()->set_timeout_ms(OwnTimeout(w.timeout_ms(), 30'000, call));
    return absl::OkStatus();
  }
  if (!element) return absl::InvalidArgumentError("browser.wait_for: a selector, a text, or download");
  init::BrowserWaitFor* q = call->request.mutable_wait_for();
  q->set_selector(w.selector());
  q->set_text(w.text());
  q->set_timeout_ms(OwnTimeout(w.timeout_ms(), 30'000, call));
  return absl::OkStatus();
}

absl::Status PlanSetViewport(const pb::BrowserAction::SetViewport& v, BrowserCall* call) {
  if (v.width() == 0 || v.height() == 0) {
    return absl::InvalidArgumentError("set_viewport: width and height must be positive");
  }
  call->request.mutable_set_viewport()->set_width(v.width());
  call->request.mutable_set_viewport()->set_height(v.height());
  return absl::OkStatus();
}

// ---- Desktop ------------------------------------------------------------------------------------------

// Maps (x, y) in the caller's space (`space`, or the display when unset) onto display pixels: pixel centers
// map onto pixel centers, so a click at a screenshot pixel lands on the display pixel it shows.
absl::StatusOr<init::DisplayPoint> ToDisplay(const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh, int64_t x,
                                             int64_t y, std::string_view field) {
  const uint32_t sw = space.width() == 0 ? dw : space.width();
  const uint32_t sh = space.height() == 0 ? dh : space.height();
  if ((space.width() == 0) != (space.height() == 0)) {
    return absl::InvalidArgumentError("desktop.space: give both width and height, or neither");
  }
  if (x < 0 || y < 0 || x >= sw || y >= sh) {
    return absl::InvalidArgumentError(absl::StrCat("desktop.", ToAbsl(field), ": (", x, ", ", y,
                                                   ") is outside the ", sw, "x", sh, " coordinate space"));
  }
  init::DisplayPoint p;
  p.set_x(static_cast<int>(std::min<int64_t>(dw - 1, ((2 * x + 1) * dw) / (2 * int64_t{sw}))));
  p.set_y(static_cast<int>(std::min<int64_t>(dh - 1, ((2 * y + 1) * dh) / (2 * int64_t{sh}))));
  return p;
}

// Maps the region [x0, x1) x [y0, y1) of the caller's space onto display pixels: the smallest display
// rectangle that covers it (edges, not pixel centers: x1 == the space's width is the display's right edge).
absl::StatusOr<init::DesktopZoom> RegionToDisplay(const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh,
                                                  const pb::DesktopAction::Zoom& z) {
  if ((space.width() == 0) != (space.height() == 0)) {
    return absl::InvalidArgumentError("desktop.space: give both width and height, or neither");
  }
  const int64_t sw = space.width() == 0 ? dw : space.width();
  const int64_t sh = space.height() == 0 ? dh : space.height();
  if (z.x0() < 0 || z.y0() < 0 || z.x1() <= z.x0() || z.y1() <= z.y0() || z.x1() > sw || z.y1() > sh) {
    return absl::InvalidArgumentError(absl::StrCat("desktop.zoom: the region [", z.x0(), ", ", z.y0(), ", ", z.x1(),
                                                   ", ", z.y1(), "] is empty or not inside the ", sw, "x", sh,
                                                   " coordinate space"));
  }
  const int x0 = static_cast<int>((int64_t{z.x0()} * dw) / sw);
  const int y0 = static_cast<int>((int64_t{z.y0()} * dh) / sh);
  const int x1 = static_cast<int>((int64_t{z.x1()} * dw + sw - 1) / sw);
  const int y1 = static_cast<int>((int64_t{z.y1()} * dh + sh - 1) / sh);
  init::DesktopZoom out;
  out.mutable_from()->set_x(x0);
  out.mutable_from()->set_y(y0);
  out.mutable_to()->set_x(std::max(x1, x0 + 1));
  out.mutable_to()->set_y(std::max(y1, y0 + 1));
  return out;
}

// A modifier chord of a click or scroll: at most 256 bytes.
absl::Status CheckModifiers(const std::string& modifiers, std::string_view field) {
  if (modifiers.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat("desktop.", ToAbsl(field), ".modifiers: at most 256 bytes"));
  }
  return absl::OkStatus();
}

init::MouseButton ToButton(pb::DesktopAction::Button button) {
  switch (button) {
    case pb::DesktopAction::RIGHT: return init::MOUSE_BUTTON_RIGHT;
    case pb::DesktopAction::MIDDLE: return init::MOUSE_BUTTON_MIDDLE;
    default: return init::MOUSE_BUTTON_LEFT;
  }
}

// A pointer action's optional point (`a`'s x and y): both, mapped into `q`'s `at`, or neither (`at` stays
// unset: where the pointer is).
template <typename Action, typename Input>
absl::Status PlanAt(const Action& a, const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh,
                    std::string_view field, Input* q) {
  if (a.has_x() != a.has_y()) {
    return absl::InvalidArgumentError(absl::StrCat("desktop.", ToAbsl(field), ": give both x and y, or neither"));
  }
  if (!a.has_x()) return absl::OkStatus();
  ASSIGN_OR_RETURN(*q->mutable_at(), ToDisplay(space, dw, dh, a.x(), a.y(), field));
  return absl::OkStatus();
}

absl::Status PlanClick(const pb::DesktopAction& action, uint32_t dw, uint32_t dh, init::DesktopInput* in) {
  const pb::DesktopAction::Click& c = action.click();
  init::DesktopClick* q = in->mutable_click();
  q->set_button(ToButton(c.button()));
  q->set_count(c.count() == 0 ? 1 : c.count());
  if (q->count() > 3) return absl::InvalidArgumentError("desktop.click.count: at most 3 (triple click)");
  RETURN_IF_ERROR(PlanAt(c, action.space(), dw, dh, "click", q));
  RETURN_IF_ERROR(CheckModifiers(c.modifiers(), "click"));
  q->set_modifiers(c.modifiers());
  return absl::OkStatus();
}

absl::Status PlanScroll(const pb::DesktopAction& action, uint32_t dw, uint32_t dh, init::DesktopInput* in) {
  const pb::DesktopAction::Scroll& sc = action.scroll();
  init::DesktopScroll* q = in->mutable_scroll();
  q->set_amount(sc.amount() == 0 ? 1 : sc.amount());
  if (q->amount() > 100) return absl::InvalidArgumentError("desktop.scroll.amount: at most 100");
  RETURN_IF_ERROR(PlanAt(sc, action.space(), dw, dh, "scroll", q));
  RETURN_IF_ERROR(CheckModifiers(sc.modifiers(), "scroll"));
  q->set_modifiers(sc.modifiers());
  switch (sc.direction()) {
    case pb::DesktopAction::UP: q->set_direction(init::WHEEL_DIRECTION_UP); break;
    case pb::DesktopAction::DOWN: q->set_direction(init::WHEEL_DIRECTION_DOWN); break;
    case pb::DesktopAction::LEFT_SCROLL: q->set_direction(init::WHEEL_DIRECTION_LEFT); break;
    case pb::DesktopAction::RIGHT_SCROLL: q->set_direction(init::WHEEL_DIRECTION_RIGHT); break;
    default: return absl::InvalidArgumentError("scroll: direction must be 0..3");
  }
  return absl::OkStatus();
}

absl::Status PlanMouseButton(const pb::DesktopAction& action, uint32_t dw, uint32_t dh, init::DesktopInput* in) {
  const bool down = action.has_mouse_down();
  init::DesktopMouseButton* q = down ? in->mutable_mouse_down() : in->mutable_mouse_up();
  if (down) {
    q->set_button(ToButton(action.mouse_down().button()));
    return PlanAt(action.mouse_down(), action.space(), dw, dh, "mouse_down", q);
  }
  q->set_button(ToButton(action.mouse_up().button()));
  return PlanAt(action.mouse_up(), action.space(), dw, dh, "mouse_up", q);
}

// A key chord (key, hold_key): 1 to 256 bytes.
absl::Status CheckChord(const std::string& chord, std::string_view field, std::string_view example) {
  if (chord.empty() || chord.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("desktop.", ToAbsl(field), ".chord: 1 to 256 bytes, e.g. \"", ToAbsl(example), "\""));
  }
  return absl::OkStatus();
}

// The actions that send input (every one but screenshot, cursor_position, zoom and wait).
absl::Status PlanInput(const pb::DesktopAction& action, uint32_t dw, uint32_t dh, DesktopCall* call) {
  init::DesktopInput* in = &call->input;
  switch (action.action_case()) {
    case pb::DesktopAction::kMouseMove: {
      const pb::DesktopAction::MouseMove& m = action.mouse_move();
      ASSIGN_OR_RETURN(*in->mutable_mouse_move()->mutable_to(),
                       ToDisplay(action.space(), dw, dh, m.x(), m.y(), "mouse_move"));
      return absl::OkStatus();
    }
    case pb::DesktopAction::kClick:
      return PlanClick(action, dw, dh, in);
    case pb::DesktopAction::kMouseDown:
    case pb::DesktopAction::kMouseUp:
      return PlanMouseButton(action, dw, dh, in);
    case pb::DesktopAction::kHoldKey: {
      const pb::DesktopAction::HoldKey& h = action.hold_key();
      RETURN_IF_ERROR(CheckChord(h.chord(), "hold_key", "shift"));
      if (h.duration_ms() > 100000) return absl::InvalidArgumentError("desktop.hold_key.duration_ms: at most 100000");
      in->mutable_hold_key()->set_chord(h.chord());
      in->mutable_hold_key()->set_duration_ms(h.duration_ms());
      call->wanted_ms = kDefaultDesktopCallMs + h.duration_ms();  // the hold, and the usual time for the rest
      return absl::OkStatus();
    }
    case pb::DesktopAction::kLeftClickDrag: {
      const pb::DesktopAction::Drag& g = action.left_click_drag();
      ASSIGN_OR_RETURN(*in->mutable_drag()->mutable_from(),
                       ToDisplay(action.space(), dw, dh, g.from_x(), g.from_y(), "left_click_drag.from"));
      ASSIGN_OR_RETURN(*in->mutable_drag()->mutable_to(),
                       ToDisplay(action.space(), dw, dh, g.to_x(), g.to_y(), "left_click_drag.to"));
      return absl::OkStatus();
    }
    case pb::DesktopAction::kScroll:
      return PlanScroll(action, dw, dh, in);
    case pb::DesktopAction::kKey:
      RETURN_IF_ERROR(CheckChord(action.key().chord(), "key", "ctrl+shift+t"));
      in->mutable_key()->set_chord(action.key().chord());
      return absl::OkStatus();
    case pb::DesktopAction::kType:
      if (action.type().text().size() > 65536) return absl::InvalidArgumentError("desktop.type.text: at most 64 KiB");
      in->mutable_type()->set_text(action.type().text());
      return absl::OkStatus();
    default:
      return absl::InvalidArgumentError(
          "desktop: no action given (screenshot, mouse_move, click, left_click_drag, mouse_down, mouse_up, scroll, "
          "key, hold_key, type, cursor_position, wait, zoom)");
  }
}

}  // namespace

absl::StatusOr<BrowserCall> PlanBrowserAction(const pb::BrowserAction& action) {
  BrowserCall call;
  switch (action.action_case()) {
    case pb::BrowserAction::kScreenshot:
      RETURN_IF_ERROR(PlanScreenshot(action.screenshot(), &call));
      break;
    case pb::BrowserAction::kNavigate:
      RETURN_IF_ERROR(PlanNavigate(action.navigate(), &call));
      break;
    case pb::BrowserAction::kClick:
      RETURN_IF_ERROR(PlanClick(action.click(), &call));
      break;
    case pb::BrowserAction::kType:
      call.request.mutable_type()->set_text(action.type().text());
      call.request.mutable_type()->set_selector(action.type().selector());
      break;
    case pb::BrowserAction::kPress:
      call.request.mutable_press()->set_key(action.press().key());
      break;
    case pb::BrowserAction::kEvaluate:
      call.request.mutable_evaluate()->set_expression(action.evaluate().expression());
      // 10 s, as session.proto promises (sandbox-init's own default used to be 30 s; the agent always sent 10).
      call.request.mutable_evaluate()->set_timeout_ms(OwnTimeout(action.evaluate().timeout_ms(), 10'000, &call));
      break;
    case pb::BrowserAction::kContent:
      call.request.mutable_content()->set_text(action.content().text());
      break;
    case pb::BrowserAction::kWaitFor:
      RETURN_IF_ERROR(PlanWaitFor(action.wait_for(), &call));
      break;
    case pb::BrowserAction::kSetViewport:
      RETURN_IF_ERROR(PlanSetViewport(action.set_viewport(), &call));
      break;
    case pb::BrowserAction::kStorageState:
      call.request.mutable_export_storage();
      break;
    case pb::BrowserAction::ACTION_NOT_SET:
      return absl::InvalidArgumentError(
          "browser: no action given (navigate, screenshot, click, type, press, evaluate, content, wait_for, "
          "set_viewport, storage_state)");
  }
  return call;
}

absl::StatusOr<DesktopCall> PlanDesktopAction(const pb::DesktopAction& action, uint32_t dw, uint32_t dh) {
  DesktopCall call;
  switch (action.action_case()) {
    case pb::DesktopAction::kScreenshot: {
      const uint32_t target = action.screenshot().target_width();
      if (target > 7680) return absl::InvalidArgumentError("desktop.screenshot.target_width: at most 7680");
      call.input.mutable_screenshot()->set_target_width(target);
      return call;
    }
    case pb::DesktopAction::kCursorPosition:
      call.input.mutable_cursor_position();
      return call;
    case pb::DesktopAction::kZoom: {
      ASSIGN_OR_RETURN(*call.input.mutable_zoom(), RegionToDisplay(action.space(), dw, dh, action.zoom()));
      return call;
    }
    case pb::DesktopAction::kWait:
      if (action.wait().ms() > 100000) return absl::InvalidArgumentError("desktop.wait.ms: at most 100000");
      call.wait_ms = action.wait().ms();
      return call;
    default:
      RETURN_IF_ERROR(PlanInput(action, dw, dh, &call));
      return call;
  }
}

std::pair<int, int> FromDisplay(const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh, int x, int y) {
  const uint32_t sw = space.width() == 0 ? dw : space.width();
  const uint32_t sh = space.height() == 0 ? dh : space.height();
  return {static_cast<int>(((2 * int64_t{x} + 1) * sw) / (2 * int64_t{dw})),
          static_cast<int>(((2 * int64_t{y} + 1) * sh) / (2 * int64_t{dh}))};
}

}  // namespace sbx::agent
