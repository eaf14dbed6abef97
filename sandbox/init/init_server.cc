// sandbox-init's serving mode: ServeInitProtocol, and the Server's side of the drivers (server.h lists where
// the rest of the Server lives): the desktop and the browser, started on the loop and called on their
// DriverLanes, the external CDP client, and the drivers' children as the reaper hands them over.
#include "sandbox/init/init_server.h"

#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/sha256.h"
#include "sandbox/init/actions.h"
#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/desktop.h"
#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/file_ops.h"
#include "sandbox/init/server.h"
#include "wire/frame.h"
#include "wire/init_protocol.pb.h"

extern char** environ;

namespace sbx::sandbox::serve {
namespace {

// A driver call's deadline (Request.timeout_ms): this when the agent sends none, and this much at most.
constexpr uint32_t kDefaultDriverCallMs = 30000;
constexpr uint32_t kMaxDriverCallMs = 600000;
// Driver calls waiting for their driver (the running one included); more are refused.
constexpr size_t kMaxQueuedDriverCalls = 16;

constexpr uint64_t kBrowserLane = 0, kDesktopLane = 1;

}  // namespace

// ---- Desktop ----

void Server::DesktopStartOp(const pb::DesktopStart& q, pb::Response* r) {
  // NOTE: the driver belongs to the worker while calls are outstanding (DriverLane).
  if (!desktop_lane_.idle()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "desktop: a call is still running on the display");
  }
  if (desktop_ && desktop_->alive()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "the desktop is already started");
  }
  desktop_.reset();  // a display that is gone can be started again
  if (!StartLane(desktop_lane_, kDesktopLane, r)) return;
  init::DesktopConfig config;
  config.width = q.width() == 0 ? 1280 : q.width();
  config.height = q.height() == 0 ? 800 : q.height();
  config.window_manager = q.window_manager();
  for (char** e = environ; *e != nullptr; ++e) config.env.emplace_back(*e);
  std::string error;
  desktop_ = init::Desktop::Start(config, &error);
  if (!desktop_) return SetError(r, pb::CODE_FAILED_PRECONDITION, "desktop: " + error);
  pb::DesktopInfo* info = r->mutable_desktop_info();
  info->set_width(desktop_->width());
  info->set_height(desktop_->height());
  info->set_display(desktop_->display_name());
}

void Server::StoreScreenshot(std::string image, uint32_t width, uint32_t height, uint32_t display_width,
                             uint32_t display_height, pb::Response* r) {
  last_png_ = std::move(image);
  ++last_image_id_;
  pb::ScreenshotInfo* info = r->mutable_screenshot_info();
  info->set_image_id(last_image_id_);
  info->set_width(width);
  info->set_height(height);
  info->set_display_width(display_width);
  info->set_display_height(display_height);
  info->set_size(last_png_.size());
  info->set_sha256(Sha256Hex(last_png_));
  info->set_data(last_png_.substr(0, std::min<size_t>(last_png_.size(), kMaxChunkBytes)));
}

void Server::DesktopFetchOp(const pb::DesktopFetch& q, pb::Response* r) {
  if (q.image_id() != last_image_id_ || last_image_id_ == 0) {
    return SetError(r, pb::CODE_NOT_FOUND, "desktop_fetch: not the last screenshot");
  }
  if (q.offset() >= last_png_.size()) return SetError(r, pb::CODE_INVALID_ARGUMENT, "desktop_fetch: offset past the end");
  r->mutable_file_data()->set_data(
      last_png_.substr(q.offset(), std::min<size_t>(last_png_.size() - q.offset(), kMaxChunkBytes)));
}

// ---- Browser ----

void Server::BrowserStartOp(const pb::BrowserStart& q, pb::Response* r) {
  // NOTE: the driver belongs to the worker while calls are outstanding (DriverLane).
  if (!browser_lane_.idle()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "browser: a call is still running in the browser");
  }
  if (browser_ && browser_->alive()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "the browser is already started");
  }
  if (cdp_stream_ != 0) {  // the gone browser's client ends with it
    DrainCdp();
    if (cdp_stream_ != 0) {
      pb::Response end;
      end.set_call_id(cdp_stream_);
      SetError(&end, pb::CODE_UNAVAILABLE, "cdp: the browser is gone");
      cdp_stream_ = 0;
      Send(end);
    }
    UpdateCdpWatch();
  }
  browser_.reset();  // a browser that is gone can be started again
  if (!StartLane(browser_lane_, kBrowserLane, r)) return;
  init::BrowserConfig config;
  config.profile_dir = "/tmp/.browser-profile";
  config.width = q.width() == 0 ? 1280 : q.width();
  config.height = q.height() == 0 ? 800 : q.height();
  config.proxy = q.proxy();
  // Downloads land in the workspace's downloads/ (the agent streams each back as file events).
  config.download_dir = (Workspace() == "/" ? "" : Workspace()) + "/downloads";
  if (mkdir(config.download_dir.c_str(), 0755) < 0 && errno != EEXIST) {
    return SetErrnoError(r, "browser: mkdir", config.download_dir, errno);
  }
  for (char** e = environ; *e != nullptr; ++e) {
    if (strncmp(*e, "TMPDIR=", 7) != 0) config.env.emplace_back(*e);
  }
  config.env.emplace_back("TMPDIR=/tmp");
  std::string error;
  browser_ = init::Browser::Start(config, &error);
  if (!browser_) return SetError(r, pb::CODE_FAILED_PRECONDITION, "browser: " + error);
  browser_->set_cancel_fd(browser_lane_.cancel_fd());
  r->mutable_ok();
}

bool Server::StartLane(DriverLane& lane, uint64_t tag, pb::Response* r) {
  if (lane.started()) return true;
  std::string error;
  if (!lane.Start(&error)) {
    SetError(r, pb::CODE_INTERNAL, error);
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = Tag(Src::kDriver, tag);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, lane.done_fd(), &ev) < 0) {
    SetErrnoError(r, lane.what(), "epoll_ctl", errno);
    lane.Stop();
    return false;
  }
  return true;
}

void Server::PostDriverCall(DriverLane& lane, const pb::Request& q, DriverLane::Job job) {
  if (lane.outstanding() >= kMaxQueuedDriverCalls) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_RESOURCE_EXHAUSTED,
             std::string(lane.what()) + ": " + std::to_string(kMaxQueuedDriverCalls) + " calls already wait for the " +
                 lane.what() + " (one runs at a time)");
    return Send(r);
  }
  // The deadline counts from now, when the call arrived, including any wait behind an earlier call.
  const uint32_t timeout_ms = q.timeout_ms() == 0 ? kDefaultDriverCallMs : std::min(q.timeout_ms(), kMaxDriverCallMs);
  lane.Post(q.call_id(), init::internal::NowMs() + timeout_ms, std::move(job));
}

void Server::PostBrowserCall(const pb::Request& q) {
  if (!browser_) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "not a browser session (no browser was started)");
    return Send(r);
  }
  init::Browser* b = browser_.get();  // NOTE: not replaced or destroyed while the lane is not idle
  PostDriverCall(browser_lane_, q, [b, request = q.browser_request()](int64_t deadline_ms, DriverResult* result) {
    RunBrowserRequest(*b, request, Workspace(), deadline_ms, result);
  });
  UpdateCdpWatch();  // the worker holds the browser now
}

// ---- The external CDP client ----

void Server::CdpOpenOp(uint64_t call_id) {
  pb::Response r;
  r.set_call_id(call_id);
  // NOTE: alive() is the loop's to read only while no call runs; a browser gone meanwhile ends the client.
  if (!browser_ || (browser_lane_.idle() && !browser_->alive())) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: the browser is not running in this session");
    return Send(r);
  }
  if (cdp_stream_ != 0) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: a CDP client is already connected to this session (one at a time)");
    return Send(r);
  }
  std::string error;
  if (!browser_->ClientOpen(&error)) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: " + error);
    return Send(r);
  }
  cdp_stream_ = call_id;
  cdp_offset_ = 0;
  cdp_buf_.clear();
  cdp_ended_ = false;
  cdp_error_.clear();
  // An empty first chunk: the client is accepted (the agent answers its caller only then).
  r.mutable_output()->set_stream(pb::OUTPUT_STREAM_STDOUT);
  Send(r);
  UpdateCdpWatch();
  if (browser_lane_.idle()) browser_->RelayPump();
}

void Server::CdpSendOp(const pb::CdpSend& q, pb::Response* r) {
  if (cdp_stream_ == 0 || q.stream_id() != cdp_stream_ || !browser_) {
    return SetError(r, pb::CODE_NOT_FOUND, "cdp: no such CDP client (it ended)");
  }
  browser_->ClientInput(q.data(), q.close());
  if (browser_lane_.idle()) browser_->RelayPump();
  r->mutable_ok();
}

void Server::UpdateCdpWatch() {
  std::vector<int> want;
  if (browser_ && cdp_stream_ != 0) {
    want.push_back(browser_->client_fd());
    if (browser_lane_.idle()) {
      want.push_back(browser_->chromium_fd());
      want.push_back(browser_->client_input_fd());
    }
  }
  if (want == cdp_watched_) return;
  for (int fd : cdp_watched_) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  cdp_watched_.clear();
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] < 0) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = Tag(Src::kCdp, i);
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, want[i], &ev) == 0) cdp_watched_.push_back(want[i]);
  }
  // NOTE: an fd that could not be added is left out; compare by what is watched next time.
  if (cdp_watched_.size() != want.size()) cdp_watched_ = want;
}

void Server::OnCdp(uint64_t which) {
  if (!browser_ || cdp_stream_ == 0) return UpdateCdpWatch();
  if (which != 0 && browser_lane_.idle()) browser_->RelayPump();
  DrainCdp();
}

void Server::DrainCdp() {
  if (!browser_ || cdp_stream_ == 0) return;
  if (paused_) {
    // The agent is behind: what waits stays in the browser, which cuts the client off past its bound.
    uint64_t count = 0;
    ssize_t unused = read(browser_->client_fd(), &count, sizeof(count));
    (void)unused;
    return;
  }
  init::Browser::ClientOutput out = browser_->TakeClientOutput();
  cdp_buf_.append(out.data);
  if (out.ended) {
    cdp_ended_ = true;
    cdp_error_ = out.error;
  }
  size_t sent = 0;
  while (sent < cdp_buf_.size() && !paused_ && !stop_) {
    const size_t n = std::min<size_t>(cdp_buf_.size() - sent, kMaxChunkBytes);
    pb::Response r;
    r.set_call_id(cdp_stream_);
    pb::Output* o = r.mutable_output();
    o->set_stream(pb::OUTPUT_STREAM_STDOUT);
    o->set_data(cdp_buf_.substr(sent, n));
    o->set_offset(cdp_offset_);
    cdp_offset_ += n;
    sent += n;
    Send(r);
  }
  cdp_buf_.erase(0, sent);
  if (cdp_ended_ && cdp_buf_.empty()) {
    pb::Response r;
    r.set_call_id(cdp_stream_);
    if (cdp_error_.empty()) {
      r.mutable_exec_end()->set_exit_code(0);
    } else {
      SetError(&r, pb::CODE_UNAVAILABLE, "cdp: " + cdp_error_);
    }
    cdp_stream_ = 0;
    cdp_ended_ = false;
    UpdateCdpWatch();
    Send(r);
  }
}

void Server::PostDesktopCall(const pb::Request& q) {
  if (!desktop_) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "not a desktop session (no display was started)");
    return Send(r);
  }
  init::Desktop* d = desktop_.get();  // NOTE: not replaced or destroyed while the lane is not idle
  const int cancel_fd = desktop_lane_.cancel_fd();
  PostDriverCall(desktop_lane_, q,
                 [d, cancel_fd, request = q.desktop_input()](int64_t deadline_ms, DriverResult* result) {
                   RunDesktopInput(*d, request, cancel_fd, deadline_ms, result);
                 });
}

void Server::OnDriverDone(uint64_t which) {
  DriverLane& lane = which == kBrowserLane ? browser_lane_ : desktop_lane_;
  for (DriverResult& done : lane.TakeDone()) {
    if (done.has_image) {
      StoreScreenshot(std::move(done.image), done.width, done.height, done.display_width, done.display_height,
                      &done.response);
    }
    Send(done.response);
  }
  if (lane.idle()) DeliverPendingExits(lane);
  if (&lane == &browser_lane_ && cdp_stream_ != 0) {
    UpdateCdpWatch();  // the loop holds the browser again
    if (lane.idle() && browser_) browser_->RelayPump();
    DrainCdp();
  }
}

void Server::DriverChildExited(pid_t pid, int status) {
  // NOTE: reading the pids while a worker runs a call is safe: only this thread writes them (ChildExited),
  // besides the drivers' Start and destructor, which run here with the lane idle.
  if (desktop_ && (pid == desktop_->xvfb_pid() || pid == desktop_->wm_pid())) {
    desktop_lane_.pending_exits.emplace_back(pid, status);
    if (desktop_lane_.idle()) DeliverPendingExits(desktop_lane_);
  }
  if (browser_ && pid == browser_->pid()) {
    browser_lane_.pending_exits.emplace_back(pid, status);
    if (browser_lane_.idle()) DeliverPendingExits(browser_lane_);
  }
}

void Server::DeliverPendingExits(DriverLane& lane) {
  for (const auto& [pid, status] : lane.pending_exits) {
    if (&lane == &desktop_lane_ && desktop_) desktop_->ChildExited(pid);
    if (&lane == &browser_lane_ && browser_) browser_->ChildExited(pid, status);
  }
  lane.pending_exits.clear();
}

}  // namespace sbx::sandbox::serve

namespace sbx::sandbox {

int ServeInitProtocol(int control_fd) {
  serve::Server server(control_fd);
  return server.Run();
}

}  // namespace sbx::sandbox
