// Session's browser, desktop and computer-use tools: each action goes to sandbox-init's driver, and what it
// shows (screenshots, downloads) goes into the session's event log.
#include <algorithm>
#include <chrono>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/session/computer_use.h"
#include "agent/session/driver_actions.h"
#include "agent/session/session.h"
#include "base/sha256.h"
#include "base/status.h"
#include "wire/init_protocol.pb.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

// The largest PNG a computer call's result carries inline (base64: 4/3 of it).
constexpr size_t kMaxComputerImageBytes = 2'500'000;

// A driver call's deadline: `wanted`, capped by the session's remaining wall time (at least 1 ms) and by the
// init protocol's cap.
uint32_t DriverCallTimeoutMs(uint32_t wanted, std::chrono::steady_clock::time_point expires) {
  const int64_t remaining = std::chrono::duration_cast<std::chrono::milliseconds>(expires - Clock::now()).count();
  const int64_t capped = std::min<int64_t>({int64_t{wanted}, std::max<int64_t>(1, remaining),
                                            int64_t{sandbox::InitClient::kMaxCallTimeoutMs}});
  return static_cast<uint32_t>(capped);
}

// A desktop screenshot's or zoom's result: the image went out as file events under `path`.
pb::ToolResult DesktopImageResult(const sandbox::Screenshot& shot, const std::string& path, double scale) {
  pb::ToolResult result;
  pb::DesktopResult* d = result.mutable_desktop();
  d->set_image_path(path);
  d->set_sha256(shot.sha256);
  d->set_image_bytes(shot.png.size());
  d->set_image_width(shot.width);
  d->set_image_height(shot.height);
  d->set_display_width(shot.display_width);
  d->set_display_height(shot.display_height);
  d->set_scale(scale);
  return result;
}

}  // namespace

absl::StatusOr<pb::ToolResult> Session::RunDesktop(const std::string& call_id, const pb::DesktopAction& action) {
  if (options_.kind != pb::DESKTOP) {
    return absl::FailedPreconditionError("desktop: this is not a desktop session (create it with kind DESKTOP)");
  }
  const uint32_t dw = options_.display_width, dh = options_.display_height;
  ASSIGN_OR_RETURN(const DesktopCall call, PlanDesktopAction(action, dw, dh));
  const uint32_t call_ms = DriverCallTimeoutMs(call.wanted_ms, expires_);
  pb::ToolResult result;
  switch (call.input.action_case()) {
    case init::DesktopInput::kScreenshot: {
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->TakeScreenshot(call.input.screenshot().target_width(), call_ms));
      ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, "png"));
      return DesktopImageResult(shot, path,
                                shot.display_width == 0 ? 0 : static_cast<double>(shot.width) / shot.display_width);
    }
    case init::DesktopInput::kZoom: {
      const init::DesktopZoom& z = call.input.zoom();
      ASSIGN_OR_RETURN(sandbox::Screenshot shot,
                       init_->Zoom(z.from().x(), z.from().y(), z.to().x(), z.to().y(), call_ms));
      ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, "png"));
      return DesktopImageResult(shot, path, 1.0);  // display pixels
    }
    case init::DesktopInput::kCursorPosition: {
      ASSIGN_OR_RETURN(auto pos, init_->PointerPosition(call_ms));
      const auto [x, y] = FromDisplay(action.space(), dw, dh, pos.first, pos.second);
      pb::DesktopResult* d = result.mutable_desktop();
      d->set_display_width(dw);
      d->set_display_height(dh);
      d->set_x(x);
      d->set_y(y);
      return result;
    }
    case init::DesktopInput::ACTION_NOT_SET:  // wait
      std::this_thread::sleep_for(std::chrono::milliseconds(call.wait_ms));
      break;
    default:
      RETURN_IF_ERROR(init_->DesktopInput(call.input, call_ms));
  }
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
      ASSIGN_OR_RETURN(const DesktopCall zoom, PlanDesktopAction(step, dw, dh));
      const init::DesktopZoom& z = zoom.input.zoom();
      ASSIGN_OR_RETURN(sandbox::Screenshot shot, init_->Zoom(z.from().x(), z.from().y(), z.to().x(), z.to().y(),
                                                             DriverCallTimeoutMs(zoom.wanted_ms, expires_)));
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
  ASSIGN_OR_RETURN(const BrowserCall call, PlanBrowserAction(action));
  // The call's deadline, which sandbox-init and the client share: the action's own timeout (or the default
  // for the kind) and room for its cleanup, never past the session's wall time. A 60 s wait_for then runs
  // its 60 s; sandbox-init cuts the action's own timeout to the deadline.
  const uint32_t call_ms = DriverCallTimeoutMs(call.wanted_ms, expires_);
  pb::ToolResult result;
  pb::BrowserResult* br = result.mutable_browser();
  if (call.request.has_screenshot()) {
    ASSIGN_OR_RETURN(sandbox::Screenshot shot, init_->BrowserScreenshot(call.request.screenshot(), call_ms));
    const bool png = call.request.screenshot().format() == init::IMAGE_FORMAT_PNG;
    ASSIGN_OR_RETURN(const std::string path, AppendImage(call_id, shot, png ? "png" : "jpg"));
    br->set_image_path(path);
    br->set_sha256(shot.sha256);
    br->set_image_bytes(shot.png.size());
    br->set_image_width(shot.width);
    br->set_image_height(shot.height);
    return result;
  }
  ASSIGN_OR_RETURN(sandbox::InitClient::BrowserOutput out, init_->BrowserRequest(call.request, call_ms));
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
