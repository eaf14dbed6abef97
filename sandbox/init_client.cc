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

namespace sbx::sandbox {
namespace {

namespace pb = ::sbx::init;
using Clock = std::chrono::steady_clock;

// Messages from sandbox-init are cut to this length before they reach a Status.
constexpr size_t kMaxErrorMessageBytes = 1024;
constexpr size_t kReadBytes = 512u << 10;

absl::Status StatusFromProto(const pb::Error& error) {
  absl::StatusCode code;
  switch (error.code()) {
    case pb::CODE_INVALID_ARGUMENT:
    case pb::CODE_DEADLINE_EXCEEDED:
    case pb::CODE_NOT_FOUND:
    case pb::CODE_ALREADY_EXISTS:
    case pb::CODE_PERMISSION_DENIED:
    case pb::CODE_RESOURCE_EXHAUSTED:
    case pb::CODE_FAILED_PRECONDITION:
    case pb::CODE_INTERNAL:
    case pb::CODE_UNAVAILABLE:
      // NOTE: the proto's numbers are absl::StatusCode's.
      code = static_cast<absl::StatusCode>(error.code());
      break;
    default:
      code = absl::StatusCode::kInternal;
  }
  std::string_view message = error.message();
  if (message.size() > kMaxErrorMessageBytes) message = message.substr(0, kMaxErrorMessageBytes);
  if (message.empty()) message = "sandbox-init reported an error without a message";
  return absl::Status(code, ToAbsl(message));
}

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

const char* KindName(pb::Response::KindCase kind) {
  switch (kind) {
    case pb::Response::kOutput: return "output";
    case pb::Response::kExecEnd: return "exec_end";
    case pb::Response::kOk: return "ok";
    case pb::Response::kError: return "error";
    case pb::Response::kFileData: return "file_data";
    case pb::Response::kSha256: return "sha256";
    case pb::Response::kFileInfo: return "file_info";
    case pb::Response::kFileList: return "file_list";
    case pb::Response::kDesktopInfo: return "desktop_info";
    case pb::Response::kScreenshotInfo: return "screenshot_info";
    case pb::Response::kPointerPosition: return "pointer_position";
    case pb::Response::kBrowserOutput: return "browser_output";
    case pb::Response::KIND_NOT_SET:
      break;
  }
  return "nothing";
}

// A driver call always carries its timeout to sandbox-init: the caller's, or the default.
uint32_t DriverTimeout(uint32_t call_timeout_ms) {
  return call_timeout_ms != 0 ? call_timeout_ms : static_cast<uint32_t>(InitClient::kCallTimeoutMs);
}

}  // namespace

// Everything the client shares between the callers' threads and its reader thread.
struct InitClient::State {
  // One outstanding request.
  struct PendingCall {
    bool exec = false;
    // A command (reader thread only after registration).
    OutputFn on_output;
    EndFn on_end;
    uint64_t next_offset[3] = {0, 0, 0};  // by stream: the offset the next chunk must carry
    // A blocking call: the answer it expects besides an error, and the answer once it arrived (under mu).
    pb::Response::KindCase expected = pb::Response::KIND_NOT_SET;
    bool done = false;
    pb::Response response;
  };

  explicit State(UniqueFd control) : fd(std::move(control)) {}

  // Sends one request frame. Fails with InvalidArgument when it is over the cap, and with Unavailable when
  // the connection is (or now becomes) broken.
  absl::Status Send(const pb::Request& request, std::string_view what);
  // Registers a blocking call, sends it and waits for its answer (an `expected` one or an error).
  // call_timeout_ms: 0 = kCallTimeoutMs, not sent; else sent as the request's timeout_ms (capped at
  // kMaxCallTimeoutMs) and waited for plus kAnswerMarginMs.
  absl::StatusOr<pb::Response> Call(pb::Request request, pb::Response::KindCase expected, std::string_view what,
                                    uint32_t call_timeout_ms = 0);
  // Gives `call` the next call id and registers it for its answers (Unavailable once the connection broke).
  absl::StatusOr<uint64_t> Register(std::shared_ptr<PendingCall> call);
  // Registers a stream (a command, or the CDP client: Output chunks ended by ExecEnd or an error) and sends
  // its first request; returns its call id. The callbacks as StartExec's.
  absl::StatusOr<uint64_t> StartStream(pb::Request request, OutputFn on_output, EndFn on_end, std::string_view what);
  // Sends `data` in requests of at most kMaxChunkBytes (at least one), each answered with Ok before the next
  // goes: `fill` puts one chunk into a request, and says whether it is the last.
  absl::Status CallInChunks(std::string_view data, std::string_view what,
                            const std::function<void(pb::Request* request, std::string chunk, bool last)>& fill);
  // Marks the connection broken (the first cause sticks) and shuts the socket down, which wakes the reader.
  void Break(absl::Status cause);
  absl::Status Unavailable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void ReaderLoop(std::stop_token stop);
  // Routes one answer to its call; an error is a protocol violation that ends the connection.
  absl::Status Dispatch(pb::Response response);
  // Ends the connection for good: every pending call fails with the cause.
  void FailAll(absl::Status cause);

  const UniqueFd fd;
  std::atomic<bool> stopping{false};
  absl::Mutex write_mu ABSL_ACQUIRED_BEFORE(mu);  // serializes frames on the socket

  mutable absl::Mutex mu;
  absl::CondVar cv;  // signaled when a blocking call's answer arrived, or the connection broke
  bool healthy ABSL_GUARDED_BY(mu) = true;
  absl::Status cause ABSL_GUARDED_BY(mu);  // why the connection broke
  uint64_t next_call_id ABSL_GUARDED_BY(mu) = 1;
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> calls ABSL_GUARDED_BY(mu);

  std::jthread reader;  // NOTE: last member: it starts after, and is joined before, everything it uses
};

absl::Status InitClient::State::Unavailable() const {
  return absl::UnavailableError(absl::StrCat("init connection is down: ", cause.message()));
}

void InitClient::State::Break(absl::Status why) {
  {
    absl::MutexLock lock(&mu);
    if (healthy) {
      healthy = false;
      cause = std::move(why);
    }
  }
  cv.SignalAll();
  // NOTE: shutdown wakes the reader (its poll and read return) without closing the fd under it.
  ::shutdown(fd.get(), SHUT_RDWR);
}

absl::Status InitClient::State::Send(const pb::Request& request, std::string_view what) {
  const size_t size = request.ByteSizeLong();
  if (size > kMaxFrameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(what), ": the request of ", size,
                                                   " bytes exceeds the ", kMaxFrameBytes, "-byte frame cap"));
  }
  std::string frame(kFrameHeaderBytes + size, '\0');
  EncodeFrameHeader(static_cast<uint32_t>(size), frame.data());
  request.SerializeToArray(frame.data() + kFrameHeaderBytes, static_cast<int>(size));

  absl::MutexLock write_lock(&write_mu);
  {
    absl::MutexLock lock(&mu);
    if (!healthy) return Unavailable();
  }
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(kCallTimeoutMs);
  size_t done = 0;
  while (done < frame.size()) {
    const ssize_t n = ::send(fd.get(), frame.data() + done, frame.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      Break(absl::UnavailableError(absl::StrCat("writing to sandbox-init: ", strerror(errno))));
      absl::MutexLock lock(&mu);
      return Unavailable();
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      // A frame cut in the middle leaves the stream unusable.
      Break(absl::UnavailableError(
          absl::StrCat("sandbox-init did not read a request for ", kCallTimeoutMs / 1000, " s")));
      absl::MutexLock lock(&mu);
      return Unavailable();
    }
    pollfd p{fd.get(), POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(left));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> InitClient::State::Register(std::shared_ptr<PendingCall> call) {
  absl::MutexLock lock(&mu);
  if (!healthy) return Unavailable();
  const uint64_t id = next_call_id++;
  calls[id] = std::move(call);
  return id;
}

absl::StatusOr<pb::Response> InitClient::State::Call(pb::Request request, pb::Response::KindCase expected,
                                                     std::string_view what, uint32_t call_timeout_ms) {
  int64_t wait_ms = kCallTimeoutMs;
  if (call_timeout_ms > 0) {
    call_timeout_ms = std::min(call_timeout_ms, kMaxCallTimeoutMs);
    request.set_timeout_ms(call_timeout_ms);
    wait_ms = int64_t{call_timeout_ms} + kAnswerMarginMs;
  }
  auto call = std::make_shared<State::PendingCall>();
  call->expected = expected;
  ASSIGN_OR_RETURN(const uint64_t id, Register(call));
  request.set_call_id(id);
  if (absl::Status sent = Send(request, what); !sent.ok()) {
    absl::MutexLock lock(&mu);
    calls.erase(id);
    return sent;
  }
  absl::MutexLock lock(&mu);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(wait_ms);
  while (!call->done && healthy) {
    if (cv.WaitWithDeadline(&mu, deadline)) break;  // timed out
  }
  if (call->done) {
    if (call->response.kind_case() == pb::Response::kError) return StatusFromProto(call->response.error());
    return std::move(call->response);
  }
  calls.erase(id);
  if (!healthy) return Unavailable();
  return absl::DeadlineExceededError(
      absl::StrCat(ToAbsl(what), ": sandbox-init did not answer within ", wait_ms, " ms"));
}

void InitClient::State::ReaderLoop(std::stop_token stop) {
  FrameReader frames;
  absl::Status why;
  while (why.ok()) {
    pollfd p{fd.get(), POLLIN, 0};
    if (::poll(&p, 1, -1) < 0 && errno != EINTR) {
      why = absl::UnavailableError(absl::StrCat("poll on the init connection: ", strerror(errno)));
      break;
    }
    const ssize_t n = ::read(fd.get(), frames.Prepare(kReadBytes), kReadBytes);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      why = absl::UnavailableError(absl::StrCat("reading from sandbox-init: ", strerror(errno)));
      break;
    }
    if (n == 0) {
      if (stopping.load() || stop.stop_requested()) {
        why = absl::UnavailableError("the init client was shut down");
      } else if (!frames.Finish()) {
        why = absl::UnavailableError(absl::StrCat("sandbox-init broke the protocol: ", frames.error()));
      } else {
        why = absl::UnavailableError("sandbox-init closed the connection (did the jail end?)");
      }
      break;
    }
    if (!frames.Commit(static_cast<size_t>(n))) {
      why = absl::UnavailableError(absl::StrCat("sandbox-init broke the protocol: ", frames.error()));
      break;
    }
    std::string_view payload;
    while (why.ok() && frames.Next(&payload)) {
      pb::Response response;
      if (!response.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
        why = absl::UnavailableError(absl::StrCat("sandbox-init broke the protocol: a frame of ", payload.size(),
                                                  " bytes is not a valid response"));
        break;
      }
      why = Dispatch(std::move(response));
    }
  }
  FailAll(std::move(why));
}

absl::Status InitClient::State::Dispatch(pb::Response response) {
  std::shared_ptr<State::PendingCall> call;
  {
    absl::MutexLock lock(&mu);
    const auto it = calls.find(response.call_id());
    // A late answer to a call that gave up waiting.
    if (it == calls.end()) return absl::OkStatus();
    call = it->second;
    if (!call->exec) {
      if (response.kind_case() != call->expected && response.kind_case() != pb::Response::kError) {
        return absl::UnavailableError(absl::StrCat("sandbox-init broke the protocol: answered call ",
                                                   response.call_id(), " with ", KindName(response.kind_case()),
                                                   " instead of ", KindName(call->expected)));
      }
      call->response = std::move(response);
      call->done = true;
      calls.erase(it);
      cv.SignalAll();
      return absl::OkStatus();
    }
    if (response.kind_case() != pb::Response::kOutput) calls.erase(it);  // the command's last answer
  }
  // A command: its callbacks run here, on the reader thread, without locks held.
  switch (response.kind_case()) {
    case pb::Response::kOutput: {
      pb::Output& output = *response.mutable_output();
      const int stream = output.stream();
      if (stream != pb::OUTPUT_STREAM_STDOUT && stream != pb::OUTPUT_STREAM_STDERR) {
        return absl::UnavailableError(
            absl::StrCat("sandbox-init broke the protocol: output on unknown stream ", stream));
      }
      if (output.offset() != call->next_offset[stream]) {
        return absl::UnavailableError(absl::StrCat("sandbox-init broke the protocol: output of call ",
                                                   response.call_id(), " at offset ", output.offset(),
                                                   ", expected ", call->next_offset[stream]));
      }
      call->next_offset[stream] += output.data().size();
      if (call->on_output) {
        const uint64_t offset = output.offset();
        call->on_output(static_cast<OutputStream>(stream), std::move(*output.mutable_data()), offset);
      }
      return absl::OkStatus();
    }
    case pb::Response::kExecEnd: {
      const pb::ExecEnd& e = response.exec_end();
      ExecEnd end;
      end.exit_code = e.exit_code();
      end.signal = e.signal();
      end.timed_out = e.timed_out();
      end.exec_errno = e.exec_errno();
      if (call->on_end) call->on_end(end);
      return absl::OkStatus();
    }
    case pb::Response::kError:
      if (call->on_end) call->on_end(StatusFromProto(response.error()));
      return absl::OkStatus();
    default: {
      const absl::Status violation = absl::UnavailableError(
          absl::StrCat("sandbox-init broke the protocol: answered command ", response.call_id(), " with ",
                       KindName(response.kind_case())));
      if (call->on_end) call->on_end(violation);
      return violation;
    }
  }
}

void InitClient::State::FailAll(absl::Status why) {
  Break(std::move(why));
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> pending;
  absl::Status down;
  {
    absl::MutexLock lock(&mu);
    pending.swap(calls);
    down = Unavailable();
  }
  cv.SignalAll();
  // Blocking callers wake on !healthy; commands learn it from on_end, here on the reader thread.
  for (auto& [id, call] : pending) {
    if (call->exec && call->on_end) call->on_end(down);
  }
}

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

absl::StatusOr<uint64_t> InitClient::State::StartStream(pb::Request request, OutputFn on_output, EndFn on_end,
                                                        std::string_view what) {
  auto call = std::make_shared<State::PendingCall>();
  call->exec = true;
  call->on_output = std::move(on_output);
  call->on_end = std::move(on_end);
  ASSIGN_OR_RETURN(const uint64_t id, Register(call));
  request.set_call_id(id);
  if (absl::Status sent = Send(request, what); !sent.ok()) {
    absl::MutexLock lock(&mu);
    // NOTE: when the reader already took the call to fail it, on_end reports the failure: the id is then
    // returned as if it had started, so that exactly one of the two says what happened.
    if (calls.erase(id) > 0) return sent;
  }
  return id;
}

absl::StatusOr<uint64_t> InitClient::StartCdp(OutputFn on_output, EndFn on_end) {
  pb::Request request;
  request.mutable_cdp_open();
  // A stream of Output chunks, ended by ExecEnd or an error, like a command's.
  return state_->StartStream(std::move(request), std::move(on_output), std::move(on_end), "cdp");
}

absl::Status InitClient::State::CallInChunks(
    std::string_view data, std::string_view what,
    const std::function<void(pb::Request* request, std::string chunk, bool last)>& fill) {
  size_t done = 0;
  do {
    const size_t take = std::min<size_t>(data.size() - done, kMaxChunkBytes);
    pb::Request request;
    fill(&request, std::string(data.substr(done, take)), done + take == data.size());
    done += take;
    absl::StatusOr<pb::Response> answer = Call(std::move(request), pb::Response::kOk, what);
    if (!answer.ok()) return answer.status();
  } while (done < data.size());
  return absl::OkStatus();
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
