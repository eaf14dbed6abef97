#include "sandbox/init/server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "sandbox/init/file_ops.h"
#include "sandbox/init/landlock.h"

namespace sbx::sandbox::serve {
namespace {

// Above this many unsent bytes to the agent, the commands' pipes are no longer read (their writers block in
// the kernel); reading resumes below kResumeOutputBytes.
constexpr size_t kPauseOutputBytes = 4u << 20;
constexpr size_t kResumeOutputBytes = 1u << 20;
// Above this many unsent bytes, requests are no longer read either (only file answers get it this far).
constexpr size_t kPauseRequestsBytes = 8u << 20;
constexpr size_t kControlReadBytes = 64u << 10;
constexpr int kSocketSendBytes = 2 << 20;  // the kernel doubles it

bool SetupFailed(const char* what) {
  fprintf(stderr, "sandbox-init: --serve: %s: %s\n", what, strerror(errno));
  return false;
}

}  // namespace

void SetNonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

bool Server::Setup() {
  // fds 0-2 stay taken, so no pipe end ever lands there (a child's dup2 onto itself would keep CLOEXEC).
  for (int fd = 0; fd < 3; ++fd) {
    if (fcntl(fd, F_GETFD) < 0 && open("/", O_RDONLY | O_DIRECTORY) != fd) return SetupFailed("fds 0-2");
  }
  if (fcntl(control_.fd.get(), F_SETFD, FD_CLOEXEC) < 0) {
    fprintf(stderr, "sandbox-init: --serve needs the control socket on fd %d\n", control_.fd.get());
    return false;
  }
  SetNonblocking(control_.fd.get());
  // Room for a few whole output frames (~1 MiB each) in the socket, best effort (the kernel caps it at
  // net.core.wmem_max): with the default ~200 KiB, each frame went out in five sends with a wake-up between.
  const int sndbuf = kSocketSendBytes;
  (void)setsockopt(control_.fd.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
  // Not dumpable: the workload (same uid) can then neither ptrace-attach, read or write init's memory
  // through /proc/1/mem, nor take the control socket with pidfd_getfd.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  // The commands' Landlock domain (landlock.h). Without Landlock in the kernel the commands still run, and
  // this line in the agent's log says they are not kept out of Chromium and the other commands.
  const int ruleset = init::CreateWorkloadRuleset();
  if (ruleset >= 0) {
    landlock_ruleset_.Reset(ruleset);
  } else if (init::LandlockMissing(-ruleset)) {
    fprintf(stderr,
            "sandbox-init: --serve: warning: this kernel lacks Landlock (%s): commands are NOT separated from "
            "sandbox-init, the browser or each other (only init's non-dumpable state protects init)\n",
            strerror(-ruleset));
  } else {
    errno = -ruleset;
    return SetupFailed("landlock_create_ruleset");
  }

  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  // EPIPE / EFBIG as errors instead of signals; children get the defaults back.
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN);
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT}) sigaddset(&handled, sig);
  signals_.fd.Reset(signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signals_.fd) return SetupFailed("signalfd");
  epoll_.Reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return SetupFailed("epoll_create1");
  SetEvents(signals_, EPOLLIN, Tag(Src::kSignals, 0));
  UpdateControlEvents();
  return true;
}

int Server::Run() {
  if (!Setup()) return 125;
  epoll_event events[64];
  while (!stop_) {
    if (terminating_ && execs_.empty() && out_.empty()) break;
    timespec storage;
    const timespec* timeout = DeferredReadTimeout(&storage);
    int n = epoll_pwait2(epoll_.get(), events, 64, timeout, nullptr);
    if (n < 0 && (errno == ENOSYS || errno == EPERM)) {
      // A kernel before 5.11 (or a filter that refuses it): whole milliseconds, rounded up (a deferred read
      // comes later, never early).
      const int ms = timeout == nullptr ? -1 : static_cast<int>(timeout->tv_sec * 1000 + timeout->tv_nsec / 1'000'000 + 1);
      n = epoll_wait(epoll_.get(), events, 64, ms);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      Stop(std::string("epoll_wait: ") + strerror(errno), 125);
      break;
    }
    for (int i = 0; i < n && !stop_; ++i) Dispatch(events[i]);
    if (!stop_) ReadDeferred();
  }
  KillAll(SIGKILL);
  return exit_status_;
}

void Server::Dispatch(const epoll_event& event) {
  const Src src = static_cast<Src>(event.data.u64 >> 56);
  switch (src) {
    case Src::kControl:
      OnControl(event.events);
      break;
    case Src::kSignals:
      OnSignals();
      break;
    case Src::kDriver:
      OnDriverDone(event.data.u64 & kSerialMask);
      break;
    case Src::kCdp:
      OnCdp(event.data.u64 & kSerialMask);
      break;
    default:
      OnExecEvent(src, event.data.u64 & kSerialMask, event.events);
  }
}

void Server::SetEvents(Watch& w, uint32_t events, uint64_t tag) {
  if (!w.fd || events == w.events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (events == 0) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.fd.get(), nullptr);
  } else if (w.events == 0) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, w.fd.get(), &ev);
  } else {
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, w.fd.get(), &ev);
  }
  w.events = events;
}

void Server::Close(Watch& w) {
  SetEvents(w, 0, 0);
  w.fd.Reset();
}

void Server::Stop(const std::string& why, int status) {
  if (!why.empty()) fprintf(stderr, "sandbox-init: %s; killing every command and exiting\n", why.c_str());
  KillAll(SIGKILL);
  stop_ = true;
  exit_status_ = status;
}

// ---- Control socket ----

void Server::OnControl(uint32_t events) {
  if (events & (EPOLLOUT | EPOLLERR)) Flush();
  if (stop_) return;
  ProcessFrames();
  if (stop_ || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  if (reader_.ready() || out_bytes_ >= kPauseRequestsBytes) return;  // not reading now
  static char buf[kControlReadBytes];
  const ssize_t n = read(control_.fd.get(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    return Stop(std::string("reading the control socket: ") + strerror(errno), 0);
  }
  if (n == 0) {
    // The agent is gone (or dropped us). A frame cut short is reported; a clean close is the normal end.
    const bool clean = reader_.Finish();
    return Stop(clean ? "" : reader_.error(), clean ? 0 : 2);
  }
  if (!reader_.Feed(buf, static_cast<size_t>(n))) return Stop("protocol error: " + reader_.error(), 2);
  ProcessFrames();
}

void Server::ProcessFrames() {
  std::string_view payload;
  while (!stop_ && out_bytes_ < kPauseRequestsBytes && reader_.Next(&payload)) {
    pb::Request request;
    if (!request.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      return Stop("protocol error: a request frame of " + std::to_string(payload.size()) + " bytes is malformed", 2);
    }
    Handle(request);
  }
  UpdateControlEvents();
}

void Server::UpdateControlEvents() {
  uint32_t events = 0;
  if (!stop_ && out_bytes_ < kPauseRequestsBytes && !reader_.ready()) events |= EPOLLIN;
  if (!out_.empty()) events |= EPOLLOUT;
  SetEvents(control_, events, Tag(Src::kControl, 0));
}

void Server::Handle(const pb::Request& q) {
  pb::Response r;
  r.set_call_id(q.call_id());
  switch (q.kind_case()) {
    case pb::Request::kExecStart:
      return StartExec(q.call_id(), q.exec_start());
    case pb::Request::kStdinWrite:
      return WriteStdin(q.call_id(), q.stdin_write());  // answered once written
    case pb::Request::kSignal:
      SignalExec(q.signal(), &r);
      break;
    case pb::Request::kResize:
      ResizeExec(q.resize(), &r);
      break;
    case pb::Request::kWriteFile:
    case pb::Request::kSha256:
    case pb::Request::kReadFile:
    case pb::Request::kListFiles:
    case pb::Request::kStat:
    case pb::Request::kMkdir:
    case pb::Request::kRemove:
      RunFileRequest(q, &r);
      break;
    case pb::Request::kDesktopStart:
      DesktopStartOp(q.desktop_start(), &r);
      break;
    case pb::Request::kDesktopInput:
      return PostDesktopCall(q);  // answered when the desktop's worker is done
    case pb::Request::kDesktopFetch:
      DesktopFetchOp(q.desktop_fetch(), &r);
      break;
    case pb::Request::kBrowserStart:
      BrowserStartOp(q.browser_start(), &r);
      break;
    case pb::Request::kBrowserRequest:
      return PostBrowserCall(q);  // answered when the browser's worker is done
    case pb::Request::kCdpOpen:
      return CdpOpenOp(q.call_id());  // answered with the client's messages, then its end
    case pb::Request::kCdpSend:
      CdpSendOp(q.cdp_send(), &r);
      break;
    case pb::Request::KIND_NOT_SET:
      SetError(&r, pb::CODE_INVALID_ARGUMENT, "a request without a kind (is the agent newer than sandbox-init?)");
      break;
  }
  Send(r);
}

void Server::Send(const pb::Response& r) {
  if (stop_) return;
  const size_t size = r.ByteSizeLong();
  if (size > kMaxFrameBytes) {
    pb::Response too_big;
    too_big.set_call_id(r.call_id());
    SetError(&too_big, pb::CODE_RESOURCE_EXHAUSTED,
             "the answer of " + std::to_string(size) + " bytes exceeds the " + std::to_string(kMaxFrameBytes) +
                 "-byte frame cap");
    return Send(too_big);
  }
  std::string frame(kFrameHeaderBytes + size, '\0');
  EncodeFrameHeader(static_cast<uint32_t>(size), frame.data());
  r.SerializeToArray(frame.data() + kFrameHeaderBytes, static_cast<int>(size));
  out_bytes_ += frame.size();
  out_.push_back(std::move(frame));
  Flush();
}

void Server::Flush() {
  while (!out_.empty() && !stop_) {
    const std::string& frame = out_.front();
    const ssize_t n = send(control_.fd.get(), frame.data() + out_sent_, frame.size() - out_sent_,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Stop(std::string("writing to the agent: ") + strerror(errno), 0);
    }
    out_sent_ += static_cast<size_t>(n);
    out_bytes_ -= static_cast<size_t>(n);
    if (out_sent_ == frame.size()) {
      out_.pop_front();
      out_sent_ = 0;
    }
  }
  UpdateControlEvents();
  UpdatePause();
}

void Server::UpdatePause() {
  const bool pause = paused_ ? out_bytes_ > kResumeOutputBytes : out_bytes_ >= kPauseOutputBytes;
  if (pause == paused_) return;
  paused_ = pause;
  for (auto& [id, e] : execs_) UpdateExecEvents(*e);
  if (!paused_ && cdp_stream_ != 0) DrainCdp();
}

}  // namespace sbx::sandbox::serve
