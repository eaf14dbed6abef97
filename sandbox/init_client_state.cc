// InitClient's connection (InitClient::State, init_client_state.h): sending frames, matching answers to
// their calls on the reader thread, and breaking the connection for good.
#include "sandbox/init_client_state.h"

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

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "wire/frame.h"
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

}  // namespace

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

}  // namespace sbx::sandbox
