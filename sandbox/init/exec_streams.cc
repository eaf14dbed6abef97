// A running command, on the loop: its output read (coalesced, and paused while the agent is behind), its
// stdin written, signals and window size passed on, its timeout, and its end (ExecEnd).
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/init/server.h"

namespace sbx::sandbox::serve {
namespace {

constexpr size_t kMaxStdinQueuedBytes = 4u << 20;
// After a timeout kill: output still buffered in a pipe is read, up to this much per stream.
constexpr int kDrainReadsAfterTimeout = 8;
// After a read of a command's output, that stream is not watched for kReadCoalesce: what the command writes
// meanwhile waits in the pipe and goes out as one chunk. Watching it all the time woke init (and then the
// agent, and the client) for every write(2) of a fast writer: `head` writes 8 KiB at a time, and a 1 GiB
// stream was ~25000 small frames, each a wakeup along the whole path, where a syscall or a context switch is
// what costs (under a paravirtualized guest, many microseconds). 250 us is invisible next to the agent's
// own 5 ms output hold, and a writer at 1 GB/s fills one 256 KiB chunk in about that time.
constexpr auto kReadCoalesce = std::chrono::microseconds(250);
// Full chunks read back to back in one go. A chunk is nearly a whole frame (kMaxOutputChunkBytes), so one
// read takes what a 1 MiB pipe (StartExec sets its size) holds: per byte, 4x fewer reads, frames, parses on
// the agent and events than with kMaxChunkBytes.
constexpr int kReadsPerWake = 4;

}  // namespace

void Server::UpdateExecEvents(Exec& e) {
  const bool stdin_pending = !e.stdin_queue.empty();
  const auto read = [&](int stream) { return paused_ || e.deferred[stream] ? 0u : uint32_t{EPOLLIN}; };
  const uint32_t write = stdin_pending ? uint32_t{EPOLLOUT} : 0u;
  SetEvents(e.out, e.eof[1] ? 0u : read(1) | (e.pty ? write : 0u), Tag(Src::kStdout, e.serial));
  SetEvents(e.err, e.eof[2] ? 0u : read(2), Tag(Src::kStderr, e.serial));
  SetEvents(e.in, write, Tag(Src::kStdin, e.serial));
  SetEvents(e.timer, EPOLLIN, Tag(Src::kTimer, e.serial));
}

void Server::OnExecEvent(Src src, uint64_t serial, uint32_t events) {
  const auto it = serials_.find(serial);
  if (it == serials_.end()) return;  // a command that ended earlier in this batch
  Exec& e = *execs_.at(it->second);
  switch (src) {
    case Src::kStdout:
      if (e.pty && !e.stdin_queue.empty() && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) FlushStdin(e);
      if (!paused_ && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) ReadOutput(e, 1);
      break;
    case Src::kStderr:
      if (!paused_) ReadOutput(e, 2);
      break;
    case Src::kStdin:
      FlushStdin(e);
      break;
    case Src::kTimer: {
      uint64_t expirations;
      ssize_t unused = read(e.timer.fd.get(), &expirations, sizeof(expirations));
      (void)unused;
      Close(e.timer);
      e.timed_out = true;
      kill(-e.pid, SIGKILL);
      break;
    }
    default:
      return;
  }
  if (stop_) return;
  UpdateExecEvents(e);
  MaybeFinish(e);
}

void Server::ReadOutput(Exec& e, int stream) {
  Watch& w = stream == 1 ? e.out : e.err;
  static char buf[kMaxOutputChunkBytes];
  for (int i = 0; i < kReadsPerWake; ++i) {
    if (!w.fd || e.eof[stream] || stop_) return;
    ssize_t n = read(w.fd.get(), buf, sizeof(buf));
    if (n < 0) {
      // Nothing there: the stream is watched again (UpdateExecEvents), the next write is read at once.
      if (errno == EAGAIN || errno == EINTR) return;
      // EIO on a pty master: every end of the terminal is closed, its EOF. Any other error ends the stream.
      n = 0;
    }
    if (n == 0) {
      e.eof[stream] = true;
      e.deferred[stream] = false;
      if (e.pty) {
        // NOTE: the master stays open until the command is reaped. Closing it hangs the terminal up, and the
        // SIGHUP would hit a command that is still in exit(): its status would then read "killed by SIGHUP".
        SetEvents(w, 0, 0);
        FailStdin(e, "stdin: the terminal is closed");
      } else {
        Close(w);
      }
      return;
    }
    pb::Response r;
    r.set_call_id(e.call_id);
    pb::Output* output = r.mutable_output();
    output->set_stream(stream == 1 ? pb::OUTPUT_STREAM_STDOUT : pb::OUTPUT_STREAM_STDERR);
    output->mutable_data()->assign(buf, static_cast<size_t>(n));
    output->set_offset(e.offset[stream]);
    e.offset[stream] += static_cast<uint64_t>(n);
    Send(r);
    // A short read emptied the pipe; a full one may have left more (then read on, unless the agent is behind).
    if (static_cast<size_t>(n) < sizeof(buf) || paused_) break;
  }
  // The command is writing: read it again after kReadCoalesce, not on its next write. Not once it was reaped
  // (its last bytes are read at once, and its EOF seen).
  if (!e.reaped && !e.eof[stream]) {
    e.deferred[stream] = true;
    e.read_at[stream] = Clock::now() + kReadCoalesce;
  }
}

const timespec* Server::DeferredReadTimeout(timespec* storage) const {
  bool any = false;
  Clock::time_point first;
  for (const auto& [id, e] : execs_) {
    for (int stream : {1, 2}) {
      if (e->deferred[stream] && (!any || e->read_at[stream] < first)) {
        first = e->read_at[stream];
        any = true;
      }
    }
  }
  if (!any) return nullptr;
  const auto ns = std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::nanoseconds>(first - Clock::now()).count());
  storage->tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  storage->tv_nsec = static_cast<long>(ns % 1'000'000'000);
  return storage;
}

void Server::ReadDeferred() {
  const Clock::time_point now = Clock::now();
  std::vector<uint64_t> due;
  for (const auto& [id, e] : execs_) {
    if ((e->deferred[1] && e->read_at[1] <= now) || (e->deferred[2] && e->read_at[2] <= now)) due.push_back(id);
  }
  for (uint64_t id : due) {
    Exec* e = FindExec(id);
    if (e == nullptr) continue;
    for (int stream : {1, 2}) {
      if (!e->deferred[stream] || e->read_at[stream] > now) continue;
      e->deferred[stream] = false;
      if (!paused_) ReadOutput(*e, stream);  // paused: watched again once the agent catches up
      if (stop_) return;
    }
    UpdateExecEvents(*e);
    MaybeFinish(*e);  // may destroy e
  }
}

void Server::WriteStdin(uint64_t call_id, const pb::StdinWrite& q) {
  pb::Response r;
  r.set_call_id(call_id);
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    SetError(&r, pb::CODE_NOT_FOUND, "stdin: no running command with call id " + std::to_string(q.exec_id()));
    return Send(r);
  }
  if (!e->stdin_writable) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION,
             e->stdin_opened ? "stdin: the command's stdin is closed"
                             : "stdin: the command's stdin was not opened (stdin_open is false)");
    return Send(r);
  }
  if (e->stdin_queued_bytes + q.data().size() > kMaxStdinQueuedBytes) {
    SetError(&r, pb::CODE_RESOURCE_EXHAUSTED,
             "stdin: more than " + std::to_string(kMaxStdinQueuedBytes) + " bytes are waiting for the command");
    return Send(r);
  }
  StdinChunk chunk;
  chunk.call_id = call_id;
  chunk.data = q.data();
  chunk.eof = q.eof();
  if (e->pty && q.eof()) {
    // A terminal has no end of input: send its EOF character, as a user pressing ctrl-D would.
    termios t{};
    chunk.data.push_back(tcgetattr(e->out.fd.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04');
  }
  if (q.eof()) e->stdin_writable = false;
  e->stdin_queued_bytes += chunk.data.size();
  e->stdin_queue.push_back(std::move(chunk));
  FlushStdin(*e);
  UpdateExecEvents(*e);
}

void Server::FlushStdin(Exec& e) {
  const int fd = e.pty ? e.out.fd.get() : e.in.fd.get();
  while (!e.stdin_queue.empty()) {
    StdinChunk& chunk = e.stdin_queue.front();
    if (fd < 0) return FailStdin(e, "stdin: the command's stdin is closed");
    if (chunk.written < chunk.data.size()) {
      const ssize_t n = write(fd, chunk.data.data() + chunk.written, chunk.data.size() - chunk.written);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        return FailStdin(e, errno == EPIPE || errno == EIO ? "stdin: the command closed its stdin"
                                                           : std::string("stdin: ") + strerror(errno));
      }
      chunk.written += static_cast<size_t>(n);
      continue;
    }
    if (chunk.eof && !e.pty) {
      shutdown(e.in.fd.get(), SHUT_WR);  // a socket_stdio command sees EOF (fails harmlessly on a pipe)
      Close(e.in);
    }
    pb::Response r;
    r.set_call_id(chunk.call_id);
    r.mutable_ok();
    e.stdin_queued_bytes -= chunk.data.size();
    e.stdin_queue.pop_front();
    Send(r);
  }
}

void Server::FailStdin(Exec& e, const std::string& why) {
  e.stdin_writable = false;
  if (!e.pty) Close(e.in);
  while (!e.stdin_queue.empty()) {
    pb::Response r;
    r.set_call_id(e.stdin_queue.front().call_id);
    SetError(&r, pb::CODE_FAILED_PRECONDITION, why);
    e.stdin_queue.pop_front();
    Send(r);
  }
  e.stdin_queued_bytes = 0;
}

void Server::SignalExec(const pb::ExecSignal& q, pb::Response* r) {
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    return SetError(r, pb::CODE_NOT_FOUND, "signal: no running command with call id " + std::to_string(q.exec_id()));
  }
  if (q.signo() < 1 || q.signo() >= NSIG) {
    return SetError(r, pb::CODE_INVALID_ARGUMENT, "signal: " + std::to_string(q.signo()) + " is not a signal");
  }
  // To the whole process group, as a terminal would.
  if (kill(-e->pid, q.signo()) < 0) {
    if (errno == ESRCH) {
      return SetError(r, pb::CODE_FAILED_PRECONDITION, "signal: the command's process group has no processes left");
    }
    return SetError(r, CodeForErrno(errno), std::string("signal: ") + strerror(errno));
  }
  r->mutable_ok();
}

void Server::ResizeExec(const pb::ExecResize& q, pb::Response* r) {
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    return SetError(r, pb::CODE_NOT_FOUND, "resize: no running command with call id " + std::to_string(q.exec_id()));
  }
  if (!e->pty) return SetError(r, pb::CODE_FAILED_PRECONDITION, "resize: the command has no pty");
  if (q.rows() > 0xffff || q.cols() > 0xffff) {
    return SetError(r, pb::CODE_INVALID_ARGUMENT, "resize: the window size is out of range");
  }
  if (e->eof[1]) return SetError(r, pb::CODE_FAILED_PRECONDITION, "resize: the terminal is closed");
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(q.rows());
  ws.ws_col = static_cast<unsigned short>(q.cols());
  if (ioctl(e->out.fd.get(), TIOCSWINSZ, &ws) < 0) {
    return SetError(r, CodeForErrno(errno), std::string("resize: ") + strerror(errno));
  }
  r->mutable_ok();
}

void Server::MaybeFinish(Exec& e) {
  if (!e.reaped) return;
  const bool cut_short = e.timed_out || terminating_;
  if ((!e.eof[1] || !e.eof[2]) && !cut_short) return;  // NOTE: all output precedes ExecEnd
  if (cut_short) {
    // Its process group was killed; what it wrote before is still in the pipes (a process that escaped the
    // group may hold them open: its later output is cut off).
    for (int stream : {1, 2}) {
      for (int i = 0; i < kDrainReadsAfterTimeout && !e.eof[stream]; ++i) {
        const uint64_t before = e.offset[stream];
        ReadOutput(e, stream);
        if (e.offset[stream] == before) break;
      }
    }
  }
  FailStdin(e, "stdin: the command ended before reading it");
  pb::Response r;
  r.set_call_id(e.call_id);
  pb::ExecEnd* end = r.mutable_exec_end();
  if (WIFEXITED(e.wait_status)) {
    end->set_exit_code(WEXITSTATUS(e.wait_status));
  } else {
    end->set_exit_code(-1);
    end->set_signal(WTERMSIG(e.wait_status));
  }
  end->set_timed_out(e.timed_out);
  Send(r);
  for (Watch* w : {&e.out, &e.err, &e.in, &e.timer}) Close(*w);
  serials_.erase(e.serial);
  execs_.erase(e.call_id);  // destroys e
}

}  // namespace sbx::sandbox::serve
