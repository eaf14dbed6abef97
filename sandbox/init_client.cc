#include "sandbox/init_client.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <stop_token>
#include <thread>
#include <unordered_map>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "wire/frame.h"
#include "wire/init_protocol.pb.h"
#include "base/sha256.h"
#include "base/status.h"
#include "sandbox/init_client_state.h"

namespace sbx::sandbox {
namespace {

namespace pb = ::sbx::init;

FileInfo FileInfoFromProto(const pb::FileInfo& p) {
  FileInfo info;
  info.name = p.name();
  switch (p.type()) {
    case pb::FileInfo::TYPE_FILE: info.type = FileInfo::Type::kFile; break;
    case pb::FileInfo::TYPE_DIRECTORY: info.type = FileInfo::Type::kDirectory; break;
    case pb::FileInfo::TYPE_SYMLINK: info.type = FileInfo::Type::kSymlink; break;
    default: info.type = FileInfo::Type::kOther;
  }
  info.size = p.size();
  info.mode = p.mode() & 07777;
  info.mtime_ns = p.mtime_ns();
  info.symlink_target = p.symlink_target();
  return info;
}

// A driver call always carries its timeout to sandbox-init: the caller's, or the default.
uint32_t DriverTimeout(uint32_t call_timeout_ms) {
  return call_timeout_ms != 0 ? call_timeout_ms : static_cast<uint32_t>(InitClient::kCallTimeoutMs);
}

}  // namespace

InitClient::InitClient(UniqueFd control) : state_(std::make_unique<State>(std::move(control))) {
  const int flags = fcntl(state_->fd.get(), F_GETFL);
  if (flags < 0 || fcntl(state_->fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    // No usable socket (e.g. TakeControlFd called twice): born broken, with no reader to wake.
    state_->Break(ErrnoToStatus(errno, "init connection: not a usable socket"));
    return;
  }
  fcntl(state_->fd.get(), F_SETFD, FD_CLOEXEC);
  State* state = state_.get();
  state_->reader = std::jthread([state](std::stop_token stop) { state->ReaderLoop(std::move(stop)); });
}

InitClient::~InitClient() {
  state_->stopping.store(true);
  ::shutdown(state_->fd.get(), SHUT_RDWR);
  if (state_->reader.joinable()) {
    state_->reader.request_stop();
    state_->reader.join();
  }
}

bool InitClient::healthy() const {
  absl::MutexLock lock(&state_->mu);
  return state_->healthy;
}

absl::StatusOr<uint64_t> InitClient::StartExec(const ExecSpec& spec, OutputFn on_output, EndFn on_end) {
  if (spec.argv.empty() || spec.argv[0].empty()) return absl::InvalidArgumentError("exec: argv is empty");
  pb::Request request;
  pb::ExecStart* start = request.mutable_exec_start();
  for (const std::string& arg : spec.argv) start->add_argv(arg);
  for (const std::string& var : spec.env) start->add_env(var);
  start->set_cwd(spec.cwd);
  start->set_pty(spec.pty);
  start->set_rows(spec.rows);
  start->set_cols(spec.cols);
  start->set_timeout_ms(spec.timeout_ms);
  start->set_stdin_open(spec.stdin_open);
  start->set_socket_stdio(spec.socket_stdio);
  return state_->StartStream(std::move(request), std::move(on_output), std::move(on_end), "exec");
}

absl::StatusOr<uint64_t> InitClient::StartCdp(OutputFn on_output, EndFn on_end) {
  pb::Request request;
  request.mutable_cdp_open();
  // A stream of Output chunks, ended by ExecEnd or an error, like a command's.
  return state_->StartStream(std::move(request), std::move(on_output), std::move(on_end), "cdp");
}

absl::Status InitClient::CdpSend(uint64_t stream_id, std::string_view data, bool close) {
  return state_->CallInChunks(data, "cdp", [&](pb::Request* request, std::string chunk, bool last) {
    pb::CdpSend* send = request->mutable_cdp_send();
    send->set_stream_id(stream_id);
    send->set_data(std::move(chunk));
    send->set_close(close && last);
  });
}

absl::Status InitClient::WriteStdin(uint64_t call_id, std::string_view data, bool eof) {
  if (data.empty() && !eof) return absl::OkStatus();
  return state_->CallInChunks(data, "stdin", [&](pb::Request* request, std::string chunk, bool last) {
    pb::StdinWrite* write = request->mutable_stdin_write();
    write->set_exec_id(call_id);
    write->set_data(std::move(chunk));
    write->set_eof(eof && last);
  });
}

absl::Status InitClient::Signal(uint64_t call_id, int signo) {
  pb::Request request;
  request.mutable_signal()->set_exec_id(call_id);
  request.mutable_signal()->set_signo(signo);
  return state_->Call(std::move(request), pb::Response::kOk, "signal").status();
}

absl::Status InitClient::Resize(uint64_t call_id, uint32_t rows, uint32_t cols) {
  pb::Request request;
  request.mutable_resize()->set_exec_id(call_id);
  request.mutable_resize()->set_rows(rows);
  request.mutable_resize()->set_cols(cols);
  return state_->Call(std::move(request), pb::Response::kOk, "resize").status();
}

absl::Status InitClient::WriteFile(std::string_view path, std::string_view data, uint64_t offset, bool truncate,
                                   uint32_t mode) {
  size_t done = 0;
  do {
    const size_t take = std::min<size_t>(data.size() - done, kMaxChunkBytes);
    pb::Request request;
    pb::WriteFile* write = request.mutable_write_file();
    write->set_path(std::string(path));
    write->set_data(std::string(data.substr(done, take)));
    write->set_offset(offset + done);
    write->set_truncate(truncate && done == 0);
    write->set_mode(mode);
    absl::StatusOr<pb::Response> answer = state_->Call(std::move(request), pb::Response::kOk, "write_file");
    if (!answer.ok()) return answer.status();
    done += take;
  } while (done < data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> InitClient::Sha256(std::string_view path) {
  pb::Request request;
  request.mutable_sha256()->set_path(std::string(path));
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kSha256, "sha256"));
  const std::string& hex = answer.sha256().hex();
  const bool valid = hex.size() == 64 && hex.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!valid) return absl::InternalError("sha256: sandbox-init answered with something that is not a digest");
  return hex;
}

absl::StatusOr<std::string> InitClient::ReadFile(std::string_view path, uint64_t offset, uint64_t length) {
  length = std::min<uint64_t>(length, kMaxChunkBytes);
  pb::Request request;
  request.mutable_read_file()->set_path(std::string(path));
  request.mutable_read_file()->set_offset(offset);
  request.mutable_read_file()->set_length(length);
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kFileData, "read_file"));
  std::string* data = answer.mutable_file_data()->mutable_data();
  if (data->size() > length) {
    return absl::InternalError(
        absl::StrCat("read_file: sandbox-init answered with ", data->size(), " bytes for ", length, " asked"));
  }
  return std::move(*data);
}

absl::StatusOr<std::vector<FileInfo>> InitClient::ListFiles(std::string_view path) {
  pb::Request request;
  request.mutable_list_files()->set_path(std::string(path));
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kFileList, "list_files"));
  std::vector<FileInfo> entries;
  entries.reserve(static_cast<size_t>(answer.file_list().entries_size()));
  for (const pb::FileInfo& entry : answer.file_list().entries()) entries.push_back(FileInfoFromProto(entry));
  return entries;
}

absl::StatusOr<FileInfo> InitClient::Stat(std::string_view path) {
  pb::Request request;
  request.mutable_stat()->set_path(std::string(path));
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kFileInfo, "stat"));
  return FileInfoFromProto(answer.file_info());
}

absl::Status InitClient::Mkdir(std::string_view path, bool parents) {
  pb::Request request;
  request.mutable_mkdir()->set_path(std::string(path));
  request.mutable_mkdir()->set_parents(parents);
  return state_->Call(std::move(request), pb::Response::kOk, "mkdir").status();
}

absl::Status InitClient::Remove(std::string_view path, bool recursive) {
  pb::Request request;
  request.mutable_remove()->set_path(std::string(path));
  request.mutable_remove()->set_recursive(recursive);
  return state_->Call(std::move(request), pb::Response::kOk, "remove").status();
}

absl::StatusOr<DesktopInfo> InitClient::DesktopStart(uint32_t width, uint32_t height, bool window_manager) {
  pb::Request request;
  pb::DesktopStart* d = request.mutable_desktop_start();
  d->set_width(width);
  d->set_height(height);
  d->set_window_manager(window_manager);
  ASSIGN_OR_RETURN(pb::Response answer,
                   state_->Call(std::move(request), pb::Response::kDesktopInfo, "desktop_start"));
  DesktopInfo info;
  info.width = answer.desktop_info().width();
  info.height = answer.desktop_info().height();
  info.display = answer.desktop_info().display();
  if (info.display.size() > 64) return absl::InternalError("desktop_start: sandbox-init named an absurd display");
  return info;
}

absl::Status InitClient::DesktopInput(const init::DesktopInput& input, uint32_t call_timeout_ms) {
  switch (input.action_case()) {
    case pb::DesktopInput::kCursorPosition:
    case pb::DesktopInput::kScreenshot:
    case pb::DesktopInput::kZoom:
    case pb::DesktopInput::ACTION_NOT_SET:
      // Their answers are not Ok: sent here, they would read as a protocol violation.
      return absl::InvalidArgumentError("desktop_input: not an input action (PointerPosition, TakeScreenshot, Zoom)");
    default:
      break;
  }
  pb::Request request;
  *request.mutable_desktop_input() = input;
  return state_->Call(std::move(request), pb::Response::kOk, "desktop_input", DriverTimeout(call_timeout_ms))
      .status();
}

absl::StatusOr<std::pair<int, int>> InitClient::PointerPosition(uint32_t call_timeout_ms) {
  pb::Request request;
  request.mutable_desktop_input()->mutable_cursor_position();
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kPointerPosition,
                                                     "cursor_position", DriverTimeout(call_timeout_ms)));
  return std::make_pair(answer.pointer_position().x(), answer.pointer_position().y());
}

absl::StatusOr<Screenshot> InitClient::TakeScreenshot(uint32_t target_width, uint32_t call_timeout_ms) {
  pb::Request request;
  request.mutable_desktop_input()->mutable_screenshot()->set_target_width(target_width);
  return FetchScreenshot(std::move(request), call_timeout_ms);
}

absl::StatusOr<Screenshot> InitClient::Zoom(int x0, int y0, int x1, int y1, uint32_t call_timeout_ms) {
  pb::Request request;
  pb::DesktopZoom* zoom = request.mutable_desktop_input()->mutable_zoom();
  zoom->mutable_from()->set_x(x0);
  zoom->mutable_from()->set_y(y0);
  zoom->mutable_to()->set_x(x1);
  zoom->mutable_to()->set_y(y1);
  return FetchScreenshot(std::move(request), call_timeout_ms);
}

absl::StatusOr<Screenshot> InitClient::FetchScreenshot(pb::Request request, uint32_t call_timeout_ms) {
  // A PNG of an 8K display is at most ~100 MiB raw; refuse anything larger than that from init.
  constexpr uint64_t kMaxImageBytes = 128ull << 20;
  ASSIGN_OR_RETURN(pb::Response answer,
                   state_->Call(std::move(request), pb::Response::kScreenshotInfo, "screenshot",
                                DriverTimeout(call_timeout_ms)));
  pb::ScreenshotInfo* info = answer.mutable_screenshot_info();
  if (info->size() > kMaxImageBytes || info->data().size() > info->size()) {
    return absl::InternalError(absl::StrCat("screenshot: sandbox-init announced ", info->size(), " bytes"));
  }
  Screenshot shot;
  shot.width = info->width();
  shot.height = info->height();
  shot.display_width = info->display_width();
  shot.display_height = info->display_height();
  shot.sha256 = info->sha256();
  shot.png = std::move(*info->mutable_data());
  shot.png.reserve(info->size());
  while (shot.png.size() < info->size()) {
    pb::Request fetch;
    fetch.mutable_desktop_fetch()->set_image_id(info->image_id());
    fetch.mutable_desktop_fetch()->set_offset(shot.png.size());
    ASSIGN_OR_RETURN(pb::Response part, state_->Call(std::move(fetch), pb::Response::kFileData, "screenshot"));
    const std::string& data = part.file_data().data();
    if (data.empty() || shot.png.size() + data.size() > info->size()) {
      return absl::InternalError("screenshot: sandbox-init sent a chunk that does not fit the image");
    }
    shot.png += data;
  }
  if (Sha256Hex(shot.png) != shot.sha256) {
    return absl::DataLossError("screenshot: the image's sha256 does not match what sandbox-init computed");
  }
  return shot;
}

absl::Status InitClient::BrowserStart(uint32_t width, uint32_t height, std::string_view proxy) {
  pb::Request request;
  pb::BrowserStart* b = request.mutable_browser_start();
  b->set_width(width);
  b->set_height(height);
  b->set_proxy(std::string(proxy));
  return state_->Call(std::move(request), pb::Response::kOk, "browser_start").status();
}

absl::StatusOr<InitClient::BrowserOutput> InitClient::BrowserRequest(const init::BrowserRequest& action,
                                                                     uint32_t call_timeout_ms) {
  if (action.has_screenshot() || action.action_case() == pb::BrowserRequest::ACTION_NOT_SET) {
    // A screenshot's answer is not BrowserOutput: sent here, it would read as a protocol violation.
    return absl::InvalidArgumentError("browser: not a browser action with an output (BrowserScreenshot)");
  }
  pb::Request request;
  *request.mutable_browser_request() = action;
  ASSIGN_OR_RETURN(pb::Response answer, state_->Call(std::move(request), pb::Response::kBrowserOutput, "browser",
                                                     DriverTimeout(call_timeout_ms)));
  BrowserOutput out;
  out.data = std::move(*answer.mutable_browser_output()->mutable_data());
  out.truncated = answer.browser_output().truncated();
  for (const pb::PageReport& e : answer.browser_output().events()) {
    out.events.push_back(PageReport{e.type(), e.level(), e.text(), e.json(), e.path(), e.size()});
  }
  return out;
}

absl::StatusOr<Screenshot> InitClient::BrowserScreenshot(const init::BrowserScreenshot& screenshot,
                                                         uint32_t call_timeout_ms) {
  pb::Request request;
  *request.mutable_browser_request()->mutable_screenshot() = screenshot;
  return FetchScreenshot(std::move(request), call_timeout_ms);
}

}  // namespace sbx::sandbox
