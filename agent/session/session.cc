#include "agent/session/session.h"

#include <signal.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <vector>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/session/cgroup_ledger.h"
#include "agent/session/computer_use.h"
#include "agent/session/jail_text.h"
#include "agent/obs/log.h"
#include "agent/run/outcome_json.h"
#include "base/sha256.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

// Driver calls' deadlines when the action names none (sandbox-init's defaults agree).
constexpr uint32_t kDefaultBrowserCallMs = 30'000;
constexpr uint32_t kBrowserScreenshotCallMs = 60'000;  // a full-page capture may take Chromium that long
constexpr uint32_t kDefaultDesktopCallMs = 30'000;
// The largest PNG a computer call's result carries inline (base64: 4/3 of it).
constexpr size_t kMaxComputerImageBytes = 2'500'000;
// Past an action's own timeout: its cleanup in sandbox-init (terminating a runaway script) and its answer.
constexpr uint32_t kDriverCleanupMs = 2'000;

// A driver call's deadline: `wanted`, capped by the session's remaining wall time (at least 1 ms) and by the
// init protocol's cap.
uint32_t DriverCallTimeoutMs(uint32_t wanted, std::chrono::steady_clock::time_point expires) {
  const int64_t remaining = std::chrono::duration_cast<std::chrono::milliseconds>(expires - Clock::now()).count();
  const int64_t capped = std::min<int64_t>({int64_t{wanted}, std::max<int64_t>(1, remaining),
                                            int64_t{sandbox::InitClient::kMaxCallTimeoutMs}});
  return static_cast<uint32_t>(capped);
}

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Session::Session(Options options, std::unique_ptr<sandbox::Jail> jail, std::unique_ptr<sandbox::InitClient> init)
    : options_(std::move(options)),
      created_(Clock::now()),
      created_unix_ms_(UnixMs()),
      expires_(created_ + options_.ttl),
      events_(options_.id, options_.event_log),
      own_timer_(options_.timer == nullptr ? std::make_unique<Timer>() : nullptr),
      timer_(options_.timer != nullptr ? options_.timer : own_timer_.get()),
      approvals_(std::make_unique<Approvals>([this] {
        Approvals::Options o;
        o.events = &events_;
        o.timeout = std::chrono::milliseconds(options_.approvals.timeout());
        o.timer = timer_;
        return o;
      }())),
      gates_(std::make_unique<ApprovalGates>(options_.approvals)),
      jail_(std::move(jail)),
      init_(std::move(init)) {
  absl::MutexLock lock(&mu_);
  labels_ = options_.labels;
  Touch();
}

Session::~Session() {
  End(pb::Outcome::CANCELED, "canceled", "the session was deleted");
  egress_.reset();  // before the jail: its audit callback writes the event log
  if (watcher_.joinable()) watcher_.join();
  // Every request is closed (End); this cancels the deadlines on the timer, waiting for one that may still be
  // handing a decision to OnGateDecided, before the members that takes (mu_, the runner) are destroyed.
  approvals_.reset();
  std::jthread runner;
  {
    absl::MutexLock lock(&approved_.mu);
    approved_.stop = true;
    approved_.cv.SignalAll();
    runner = std::move(approved_.thread);
  }
  if (runner.joinable()) runner.join();  // finishes what it had as canceled
  {
    absl::MutexLock lock(&mu_);
    kills_closed_ = true;  // the client's reader may still see output until init_ goes
  }
  timer_->CancelAll(this);  // a pending kill is dropped, a running one finishes first
  init_.reset();  // after the watcher and the kills: joins the client's reader thread
  jail_.reset();  // kills what is left, removes the cgroup
  if (options_.ledger != nullptr) options_.ledger->Remove(options_.id);
}

void Session::Touch() {
  last_used_ns_.store(Clock::now().time_since_epoch().count());
}

Clock::time_point Session::last_used() const {
  return Clock::time_point(Clock::duration(last_used_ns_.load()));
}

bool Session::Matches(const std::map<std::string, std::string>& selector) const {
  for (const auto& [key, value] : selector) {
    absl::MutexLock lock(&mu_);
    auto it = labels_.find(key);
    if (it == labels_.end() || it->second != value) return false;
  }
  return true;
}

void Session::TakeFromPool(std::map<std::string, std::string> labels) {
  if (absl::Status s = jail_->SetCpuBackground(false); !s.ok()) {
    // NOTE: the session still works; it only gets the CPU nothing else wants.
    Log(LogLevel::kWarn, "bringing a pooled browser out of the CPU background failed",
        {{"session_id", options_.id}, {"error", s.ToString()}});
  }
  Touch();  // its idle time starts now, not when the pool started it
  absl::MutexLock lock(&mu_);
  labels_ = std::move(labels);
}

bool Session::busy() const {
  absl::MutexLock lock(&mu_);
  // A call waiting for a person is not idle: the request's deadline bounds the wait, the ttl the session.
  return !running_execs_.empty() || !gated_waiting_.empty();
}

pb::Session Session::Describe() const {
  pb::Session out;
  out.set_id(options_.id);
  out.set_kind(options_.kind);
  out.set_state(ended_ ? pb::ENDED : pb::RUNNING);
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [k, v] : labels_) (*out.mutable_labels())[k] = v;
  }
  out.set_created_unix_ms(created_unix_ms_);
  out.set_expires_unix_ms(created_unix_ms_ + options_.ttl.count());
  out.set_last_seq(events_.last_seq());
  if (egress_ != nullptr) *out.mutable_egress() = effective_egress_;
  absl::MutexLock lock(&mu_);
  if (ended_) *out.mutable_outcome() = outcome_;
  for (pb::HumanRequest& r : approvals_->Open()) *out.add_open_requests() = std::move(r);
  return out;
}

void Session::End(pb::Outcome::Status status, const std::string& reason, const std::string& message,
                  std::optional<int> exit_code) {
  {
    absl::MutexLock lock(&mu_);
    if (ended_ || end_.status != pb::Outcome::STATUS_UNSPECIFIED) return;
    end_ = EndRequest{status, reason, message, exit_code};
  }
  // Open requests end now, before the outcome: their calls finish as canceled and a client sees why.
  approvals_->CloseAll(absl::StrCat("session ended: ", reason));
  jail_->Kill();
}

void Session::WatchJail() {
  const sandbox::RunResult result = jail_->Wait(-1);
  pb::Outcome outcome;
  {
    absl::MutexLock lock(&mu_);
    // init is gone, so the client's connection fails and every running call finishes with an error: give its
    // reader thread a moment (up to 2 s) to post those before the outcome closes the log.
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return running_execs_.empty() && gated_waiting_.empty();
    };
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (!idle() && !calls_changed_.WaitWithDeadline(&mu_, deadline)) {
    }
    outcome = OutcomeOf(result);
    outcome_ = outcome;
  }
  if (options_.metrics != nullptr) {
    options_.metrics->Outcome(absl::AsciiStrToLower(pb::Outcome::Status_Name(outcome.status())), outcome.reason());
  }
  // The jail may have ended on its own (ttl, memory): what is still open is canceled before the outcome.
  approvals_->CloseAll(absl::StrCat("session ended: ", outcome.reason()));
  pb::Event event;
  *event.mutable_outcome() = outcome;
  events_.Append(std::move(event));
  ended_ = true;
  events_.Close();
}

pb::Outcome Session::OutcomeOf(const sandbox::RunResult& result) {
  pb::Outcome outcome;
  pb::Usage* usage = outcome.mutable_usage();
  usage->set_wall_ms(result.usage.wall_ms);
  usage->set_cpu_user_ms(result.usage.cpu_user_ms);
  usage->set_cpu_sys_ms(result.usage.cpu_sys_ms);
  usage->set_max_memory_bytes(result.usage.max_memory_bytes);
  if (end_.status != pb::Outcome::STATUS_UNSPECIFIED) {
    outcome.set_status(end_.status);
    outcome.set_reason(end_.reason);
    outcome.set_message(end_.message);
    if (end_.exit_code) outcome.set_exit_code(*end_.exit_code);
  } else {
    switch (result.reason) {
      case sandbox::RunReason::kTimeLimit:
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason("ttl_expired");
        outcome.set_message(absl::StrCat("the session's ttl of ", options_.ttl.count(), " ms passed"));
        break;
      case sandbox::RunReason::kMemoryLimit:
      case sandbox::RunReason::kPidsLimit:
      case sandbox::RunReason::kSeccompViolation:
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason(std::string(sandbox::RunReasonName(result.reason)));
        outcome.set_message(result.message);
        break;
      default:
        // sandbox-init itself ended (killed from inside the jail, or crashed): the jail is gone.
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason("jail_exited");
        outcome.set_message(absl::StrCat("sandbox-init ended (",
                                         result.signal > 0 ? absl::StrCat("signal ", result.signal)
                                                           : absl::StrCat("exit ", result.exit_code),
                                         ")"));
    }
    if (result.exit_code >= 0) outcome.set_exit_code(result.exit_code);
    if (result.signal > 0) outcome.set_signal(result.signal);
  }
  SanitizeUtf8(&outcome);  // its message may quote what init or the jail said
  return outcome;
}

namespace {

// Maps (x, y) in the caller's space (`space`, or the display when unset) onto display pixels: pixel centers
// map onto pixel centers, so a click at a screenshot pixel lands on the display pixel it shows.
absl::StatusOr<std::pair<int, int>> ToDisplay(const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh, int64_t x,
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
  const int dx = static_cast<int>(std::min<int64_t>(dw - 1, ((2 * x + 1) * dw) / (2 * int64_t{sw})));
  const int dy = static_cast<int>(std::min<int64_t>(dh - 1, ((2 * y + 1) * dh) / (2 * int64_t{sh})));
  return std::make_pair(dx, dy);
}

// Maps the region [x0, x1) x [y0, y1) of the caller's space onto display pixels: the smallest display
// rectangle that covers it (edges, not pixel centers: x1 == the space's width is the display's right edge).
absl::StatusOr<std::array<int, 4>> RegionToDisplay(const pb::CoordinateSpace& space, uint32_t dw, uint32_t dh,
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
  return std::array<int, 4>{x0, y0, std::max(x1, x0 + 1), std::max(y1, y0 + 1)};
}

// A modifier chord of a click or scroll: at most 256 bytes.
absl::Status CheckModifiers(const std::string& modifiers, std::string_view field) {
  if (modifiers.size() > 256) {
    return absl::InvalidArgumentError(absl::StrCat("desktop.", ToAbsl(field), ".modifiers: at most 256 bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<pb::ToolResult> Session::RunDesktop(const std::string& call_id, const pb::DesktopAction& action) {
  if (options_.kind != pb::DESKTOP) {
    return absl::FailedPreconditionError("desktop: this is not a desktop session (create it with kind DESKTOP)");
  }
  const uint32_t dw = options_.display_width, dh = options_.display_height;
  const pb::CoordinateSpace& space = action.space();
  pb::ToolResult result;
  sandbox::DesktopInputSpec in;
  switch (action.action_case()) {
    case pb::DesktopAction::kScreenshot: {
      const uint32_t target = action.screenshot().target_width();
      if (target > 7680) return absl::InvalidArgumentError("desktop.screenshot.target_width: at most 7680");
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->TakeScreenshot(target, DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
      ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, "png"));
      pb::DesktopResult* d = result.mutable_desktop();
      d->set_image_path(path);
      d->set_sha256(shot.sha256);
      d->set_image_bytes(shot.png.size());
      d->set_image_width(shot.width);
      d->set_image_height(shot.height);
      d->set_display_width(shot.display_width);
      d->set_display_height(shot.display_height);
      d->set_scale(shot.display_width == 0 ? 0 : static_cast<double>(shot.width) / shot.display_width);
      return result;
    }
    case pb::DesktopAction::kCursorPosition: {
      ASSIGN_OR_RETURN(auto pos, init_->PointerPosition(DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
      const uint32_t sw = space.width() == 0 ? dw : space.width();
      const uint32_t sh = space.height() == 0 ? dh : space.height();
      pb::DesktopResult* d = result.mutable_desktop();
      d->set_display_width(dw);
      d->set_display_height(dh);
      d->set_x(static_cast<int>(((2 * int64_t{pos.first} + 1) * sw) / (2 * int64_t{dw})));
      d->set_y(static_cast<int>(((2 * int64_t{pos.second} + 1) * sh) / (2 * int64_t{dh})));
      return result;
    }
    case pb::DesktopAction::kZoom: {
      ASSIGN_OR_RETURN(const auto region, RegionToDisplay(space, dw, dh, action.zoom()));
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->Zoom(region[0], region[1], region[2], region[3],
                                   DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
      ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, "png"));
      pb::DesktopResult* d = result.mutable_desktop();
      d->set_image_path(path);
      d->set_sha256(shot.sha256);
      d->set_image_bytes(shot.png.size());
      d->set_image_width(shot.width);
      d->set_image_height(shot.height);
      d->set_display_width(shot.display_width);
      d->set_display_height(shot.display_height);
      d->set_scale(1.0);  // display pixels
      return result;
    }
    case pb::DesktopAction::kWait: {
      const uint32_t ms = action.wait().ms();
      if (ms > 100000) return absl::InvalidArgumentError("desktop.wait.ms: at most 100000");
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      result.set_done(true);
      return result;
    }
    case pb::DesktopAction::kMouseMove: {
      in.kind = sandbox::DesktopInputSpec::Kind::kMove;
      ASSIGN_OR_RETURN(auto p, ToDisplay(space, dw, dh, action.mouse_move().x(), action.mouse_move().y(), "mouse_move"));
      in.x = p.first;
      in.y = p.second;
      break;
    }
    case pb::DesktopAction::kClick: {
      const pb::DesktopAction::Click& c = action.click();
      in.kind = sandbox::DesktopInputSpec::Kind::kClick;
      in.button = c.button() == pb::DesktopAction::RIGHT ? 3 : c.button() == pb::DesktopAction::MIDDLE ? 2 : 1;
      in.count = c.count() == 0 ? 1 : static_cast<int>(c.count());
      if (in.count > 3) return absl::InvalidArgumentError("desktop.click.count: at most 3 (triple click)");
      if (c.has_x() != c.has_y()) return absl::InvalidArgumentError("desktop.click: give both x and y, or neither");
      if (c.has_x()) {
        ASSIGN_OR_RETURN(auto p, ToDisplay(space, dw, dh, c.x(), c.y(), "click"));
        in.has_point = true;
        in.x = p.first;
        in.y = p.second;
      }
      RETURN_IF_ERROR(CheckModifiers(c.modifiers(), "click"));
      in.modifiers = c.modifiers();
      break;
    }
    case pb::DesktopAction::kMouseDown:
    case pb::DesktopAction::kMouseUp: {
      const bool down = action.has_mouse_down();
      const pb::DesktopAction::Button button = down ? action.mouse_down().button() : action.mouse_up().button();
      const bool has_x = down ? action.mouse_down().has_x() : action.mouse_up().has_x();
      const bool has_y = down ? action.mouse_down().has_y() : action.mouse_up().has_y();
      const std::string_view field = down ? "mouse_down" : "mouse_up";
      in.kind = down ? sandbox::DesktopInputSpec::Kind::kMouseDown : sandbox::DesktopInputSpec::Kind::kMouseUp;
      in.button = button == pb::DesktopAction::RIGHT ? 3 : button == pb::DesktopAction::MIDDLE ? 2 : 1;
      if (has_x != has_y) {
        return absl::InvalidArgumentError(absl::StrCat("desktop.", ToAbsl(field), ": give both x and y, or neither"));
      }
      if (has_x) {
        const int x = down ? action.mouse_down().x() : action.mouse_up().x();
        const int y = down ? action.mouse_down().y() : action.mouse_up().y();
        ASSIGN_OR_RETURN(auto p, ToDisplay(space, dw, dh, x, y, field));
        in.has_point = true;
        in.x = p.first;
        in.y = p.second;
      }
      break;
    }
    case pb::DesktopAction::kHoldKey: {
      const pb::DesktopAction::HoldKey& h = action.hold_key();
      in.kind = sandbox::DesktopInputSpec::Kind::kHoldKey;
      in.text = h.chord();
      if (in.text.empty() || in.text.size() > 256) {
        return absl::InvalidArgumentError("desktop.hold_key.chord: 1 to 256 bytes, e.g. \"shift\"");
      }
      if (h.duration_ms() > 100000) return absl::InvalidArgumentError("desktop.hold_key.duration_ms: at most 100000");
      in.duration_ms = h.duration_ms();
      // The call lasts the hold plus the usual time for the rest.
      RETURN_IF_ERROR(
          init_->DesktopInput(in, DriverCallTimeoutMs(kDefaultDesktopCallMs + h.duration_ms(), expires_)));
      result.set_done(true);
      return result;
    }
    case pb::DesktopAction::kLeftClickDrag: {
      const pb::DesktopAction::Drag& g = action.left_click_drag();
      in.kind = sandbox::DesktopInputSpec::Kind::kDrag;
      ASSIGN_OR_RETURN(auto from, ToDisplay(space, dw, dh, g.from_x(), g.from_y(), "left_click_drag.from"));
      ASSIGN_OR_RETURN(auto to, ToDisplay(space, dw, dh, g.to_x(), g.to_y(), "left_click_drag.to"));
      in.x = from.first;
      in.y = from.second;
      in.x2 = to.first;
      in.y2 = to.second;
      break;
    }
    case pb::DesktopAction::kScroll: {
      const pb::DesktopAction::Scroll& sc = action.scroll();
      in.kind = sandbox::DesktopInputSpec::Kind::kScroll;
      in.direction = static_cast<int>(sc.direction());
      in.amount = sc.amount() == 0 ? 1 : static_cast<int>(sc.amount());
      if (in.amount > 100) return absl::InvalidArgumentError("desktop.scroll.amount: at most 100");
      if (sc.has_x() != sc.has_y()) return absl::InvalidArgumentError("desktop.scroll: give both x and y, or neither");
      if (sc.has_x()) {
        ASSIGN_OR_RETURN(auto p, ToDisplay(space, dw, dh, sc.x(), sc.y(), "scroll"));
        in.has_point = true;
        in.x = p.first;
        in.y = p.second;
      }
      RETURN_IF_ERROR(CheckModifiers(sc.modifiers(), "scroll"));
      in.modifiers = sc.modifiers();
      break;
    }
    case pb::DesktopAction::kKey:
      in.kind = sandbox::DesktopInputSpec::Kind::kKey;
      in.text = action.key().chord();
      if (in.text.empty() || in.text.size() > 256) {
        return absl::InvalidArgumentError("desktop.key.chord: 1 to 256 bytes, e.g. \"ctrl+shift+t\"");
      }
      break;
    case pb::DesktopAction::kType:
      in.kind = sandbox::DesktopInputSpec::Kind::kType;
      in.text = action.type().text();
      if (in.text.size() > 65536) return absl::InvalidArgumentError("desktop.type.text: at most 64 KiB");
      break;
    case pb::DesktopAction::ACTION_NOT_SET:
      return absl::InvalidArgumentError(
          "desktop: no action given (screenshot, mouse_move, click, left_click_drag, mouse_down, mouse_up, scroll, "
          "key, hold_key, type, cursor_position, wait, zoom)");
  }
  RETURN_IF_ERROR(init_->DesktopInput(in, DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
  result.set_done(true);
  return result;
}

absl::StatusOr<pb::ToolResult> Session::RunComputer(const std::string& call_id, const pb::ComputerUse& call) {
  if (options_.kind != pb::DESKTOP) {
    return absl::FailedPreconditionError("computer: this is not a desktop session (create it with kind DESKTOP)");
  }
  ASSIGN_OR_RETURN(const ComputerPlan plan, PlanComputerUse(call));
  const uint32_t dw = options_.display_width, dh = options_.display_height;
  pb::ToolResult result;
  pb::ComputerResult* out = result.mutable_computer();
  // NOTE: the image travels inline (in the result, hence in the event log and one gRPC message), not as file
  // events under limits.file_events_max_bytes; what the jail draws decides its size, so it is capped here,
  // under gRPC's default 4 MB receive limit and Anthropic's 5 MB per image once base64'd.
  auto put_image = [out](const sandbox::Screenshot& shot) -> absl::Status {
    if (shot.png.size() > kMaxComputerImageBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "computer: the image is ", shot.png.size(), " bytes of PNG, over the ", kMaxComputerImageBytes,
          " an inline image may take; declare a smaller display (display_width_px) or zoom into a smaller region"));
    }
    out->set_image_base64(absl::Base64Escape(shot.png));
    out->set_media_type("image/png");
    out->set_image_width(shot.width);
    out->set_image_height(shot.height);
    return absl::OkStatus();
  };
  for (const pb::DesktopAction& step : plan.steps) {
    if (step.has_zoom()) {
      // The image goes into the result, not out as file events.
      ASSIGN_OR_RETURN(const auto region, RegionToDisplay(step.space(), dw, dh, step.zoom()));
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->Zoom(region[0], region[1], region[2], region[3],
                                   DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
      RETURN_IF_ERROR(put_image(shot));
      continue;
    }
    RETURN_IF_ERROR(RunDesktop(call_id, step).status());
  }
  switch (plan.show) {
    case ComputerPlan::Show::kNothing:
    case ComputerPlan::Show::kZoom:
      break;
    case ComputerPlan::Show::kScreenshot: {
      // In the declared space's width (scaled down when it is smaller than the display), so the model's
      // coordinates are the screenshot's.
      const uint32_t target = call.display_width_px() != 0 && call.display_width_px() < dw ? call.display_width_px() : 0;
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->TakeScreenshot(target, DriverCallTimeoutMs(kDefaultDesktopCallMs, expires_)));
      RETURN_IF_ERROR(put_image(shot));
      break;
    }
    case ComputerPlan::Show::kCursorPosition: {
      pb::DesktopAction where;
      where.mutable_cursor_position();
      if (call.display_width_px() != 0) {
        where.mutable_space()->set_width(call.display_width_px());
        where.mutable_space()->set_height(call.display_height_px());
      }
      ASSIGN_OR_RETURN(const pb::ToolResult pos, RunDesktop(call_id, where));
      out->set_text(absl::StrCat("X=", pos.desktop().x(), ",Y=", pos.desktop().y()));
      break;
    }
  }
  return result;
}

absl::StatusOr<std::string> Session::AppendImage(const std::string& call_id, const sandbox::Screenshot& shot,
                                                 std::string_view ext) {
  const std::string path = absl::StrCat("screenshots/", screenshots_.fetch_add(1) + 1, ".", ToAbsl(ext));
  RETURN_IF_ERROR(events_.AppendFile(call_id, path, shot.png, shot.sha256, sandbox::InitClient::kMaxChunkBytes));
  return path;
}

absl::Status Session::AppendDownload(const std::string& call_id, const std::string& path, uint64_t size) {
  // The policy's file budget (limits.file_events_max_bytes) is enforced by the event log; a file that cannot
  // fit it whatever is acknowledged is not even read. A big file stays in the workspace for Download.
  const uint64_t budget = options_.event_log.max_file_bytes;
  // Going over is recorded (a `dropped` event) and the download is reported not sent (RunBrowser).
  const auto refuse = [&](uint64_t n) {
    const absl::Status s = absl::ResourceExhaustedError(absl::StrCat(
        path, ": ", n, " bytes, over limits.file_events_max_bytes (", budget, "); fetch it with Download"));
    pb::Event event;
    pb::Dropped* d = event.mutable_dropped();
    d->set_budget("limits.file_events_max_bytes");
    d->set_bytes(n);
    d->set_call_id(call_id);
    d->set_path(path);
    d->set_detail(std::string(s.message()));
    events_.Append(std::move(event));
    return s;
  };
  if (size > budget) return refuse(size);
  // Read it all first: what the events carry is one consistent file, whatever the workload does meanwhile.
  std::string data;
  for (;;) {
    ASSIGN_OR_RETURN(std::string part, init_->ReadFile(path, data.size(), sandbox::InitClient::kMaxChunkBytes));
    if (part.empty()) break;
    data += part;
    if (data.size() > budget) return refuse(data.size());
  }
  return events_.AppendFile(call_id, path, data, Sha256Hex(data), sandbox::InitClient::kMaxChunkBytes);
}

absl::StatusOr<pb::ToolResult> Session::RunBrowser(const std::string& call_id, const pb::BrowserAction& action) {
  if (options_.kind != pb::BROWSER) {
    return absl::FailedPreconditionError("browser: this is not a browser session (create it with kind BROWSER)");
  }
  using Kind = sandbox::InitClient::BrowserRequestSpec::Kind;
  pb::ToolResult result;
  pb::BrowserResult* br = result.mutable_browser();
  sandbox::InitClient::BrowserRequestSpec q;
  switch (action.action_case()) {
    case pb::BrowserAction::kScreenshot: {
      const pb::BrowserAction::Screenshot& sc = action.screenshot();
      const std::string format = sc.format().empty() ? "png" : sc.format();
      if (format != "png" && format != "jpeg") {
        return absl::InvalidArgumentError("browser.screenshot.format: \"png\" or \"jpeg\"");
      }
      if (sc.quality() > 100) return absl::InvalidArgumentError("browser.screenshot.quality: 1..100");
      if (sc.width() != 0 && (sc.width() < 16 || sc.width() > 7680)) {
        return absl::InvalidArgumentError("browser.screenshot.width: 16..7680 pixels, or 0 for no scaling");
      }
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->BrowserScreenshot(sc.full_page(), format, static_cast<int>(sc.quality()), sc.width(),
                                                DriverCallTimeoutMs(kBrowserScreenshotCallMs, expires_)));
      ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, format == "png" ? "png" : "jpg"));
      br->set_image_path(path);
      br->set_sha256(shot.sha256);
      br->set_image_bytes(shot.png.size());
      br->set_image_width(shot.width);
      br->set_image_height(shot.height);
      return result;
    }
    case pb::BrowserAction::kNavigate:
      q.kind = Kind::kNavigate;
      q.text = action.navigate().url();
      q.text2 = action.navigate().wait_until();
      q.timeout_ms = action.navigate().timeout_ms();
      if (q.text.empty()) return absl::InvalidArgumentError("browser.navigate.url: required");
      if (!q.text2.empty() && q.text2 != "load" && q.text2 != "networkidle") {
        return absl::InvalidArgumentError("browser.navigate.wait_until: \"load\" or \"networkidle\"");
      }
      break;
    case pb::BrowserAction::kClick:
      q.kind = Kind::kClick;
      q.text = action.click().selector();
      q.has_point = action.click().has_x() && action.click().has_y();
      q.x = action.click().x();
      q.y = action.click().y();
      if (q.text.empty() && !q.has_point) return absl::InvalidArgumentError("browser.click: a selector, or x and y");
      break;
    case pb::BrowserAction::kType:
      q.kind = Kind::kType;
      q.text = action.type().text();
      q.text2 = action.type().selector();
      break;
    case pb::BrowserAction::kPress:
      q.kind = Kind::kPress;
      q.text = action.press().key();
      break;
    case pb::BrowserAction::kEvaluate:
      q.kind = Kind::kEvaluate;
      q.text = action.evaluate().expression();
      q.timeout_ms = action.evaluate().timeout_ms() == 0 ? 10000 : action.evaluate().timeout_ms();
      break;
    case pb::BrowserAction::kContent:
      q.kind = Kind::kContent;
      q.flag = action.content().text();
      break;
    case pb::BrowserAction::kWaitFor:
      q.kind = Kind::kWaitFor;
      q.text = action.wait_for().selector();
      q.text2 = action.wait_for().text();
      q.flag = action.wait_for().download();
      q.timeout_ms = action.wait_for().timeout_ms();
      if (q.flag && !(q.text.empty() && q.text2.empty())) {
        return absl::InvalidArgumentError("browser.wait_for: a download, or a selector and/or a text, not both");
      }
      if (!q.flag && q.text.empty() && q.text2.empty()) {
        return absl::InvalidArgumentError("browser.wait_for: a selector, a text, or download");
      }
      break;
    case pb::BrowserAction::kSetViewport:
      q.kind = Kind::kViewport;
      q.a = static_cast<int>(std::min<uint32_t>(action.set_viewport().width(), 100000));
      q.b = static_cast<int>(std::min<uint32_t>(action.set_viewport().height(), 100000));
      break;
    case pb::BrowserAction::kStorageState:
      q.kind = Kind::kStorageExport;
      break;
    case pb::BrowserAction::ACTION_NOT_SET:
      return absl::InvalidArgumentError(
          "browser: no action given (navigate, screenshot, click, type, press, evaluate, content, wait_for, "
          "set_viewport, storage_state)");
  }
  // The call's deadline, which sandbox-init and the client share: the action's own timeout (or the default
  // for the kind), never past the session's wall time. A 60 s wait_for then runs its 60 s.
  // The deadline leaves the action's own timeout room to fire first (with its own message) and clean up.
  q.call_timeout_ms = DriverCallTimeoutMs(
      (q.timeout_ms != 0 ? q.timeout_ms : kDefaultBrowserCallMs) + kDriverCleanupMs, expires_);
  q.timeout_ms = q.timeout_ms != 0 ? std::min(q.timeout_ms, q.call_timeout_ms) : 0;
  ASSIGN_OR_RETURN(sandbox::InitClient::BrowserOutput out, init_->BrowserRequest(q));
  for (const sandbox::InitClient::PageReport& report : out.events) {
    pb::Event event;
    pb::PageEvent* page = event.mutable_page();
    page->set_call_id(call_id);
    page->set_type(report.type);
    page->set_level(report.level);
    page->set_text(report.text);
    page->set_json(report.json);
    events_.Append(std::move(event));
    if (report.type == "download" && report.level == "completed" && !report.path.empty()) {
      br->add_downloads(report.path);
      if (absl::Status s = AppendDownload(call_id, report.path, report.size); !s.ok()) {
        pb::Event note;
        pb::PageEvent* p = note.mutable_page();
        p->set_call_id(call_id);
        p->set_type("download_not_sent");
        p->set_text(std::string(s.message()));
        events_.Append(std::move(note));
      }
    }
  }
  if (action.has_evaluate() || action.has_storage_state()) br->set_json(std::move(out.data));
  if (action.has_content()) {
    br->set_content(std::move(out.data));
    br->set_truncated(out.truncated);
  }
  return result;
}

}  // namespace sbx::agent
