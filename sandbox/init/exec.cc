// Starting a command: the request checked, its stdio (pipes, a socketpair, or a pty) opened, the clone, the
// child's steps up to execve (...InChild), and the parent's wait for that execve (...FromParent).
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/init/landlock.h"
#include "sandbox/init/server.h"

extern char** environ;

namespace sbx::sandbox::serve {
namespace {

constexpr size_t kMaxExecs = 256;

// What a command's child reports over its CLOEXEC pipe when a step before (or the) execve fails.
enum ChildStep : int32_t { kStepSetsid = 1, kStepTerminal, kStepStdio, kStepCwd, kStepExec, kStepLandlock };
struct ChildFailure {
  int32_t step;
  int32_t err;
};

struct ChildArgs {
  int errpipe = -1;
  bool pty = false;
  int terminal = -1;  // pty slave
  int in = -1;
  int out = -1;
  int err = -1;
  const char* cwd = nullptr;
  char** argv = nullptr;
  char** envp = nullptr;
  int landlock_ruleset = -1;  // the workload's Landlock ruleset; -1: the kernel has none
};

[[noreturn]] void ChildFail(int errpipe, int32_t step) {
  const ChildFailure failure{step, errno};
  ssize_t unused = write(errpipe, &failure, sizeof(failure));
  (void)unused;
  _exit(127);
}

// The command's child between its clone and execve. It shares init's memory (SpawnCommand), so it sticks to
// plain syscalls and writes nothing of init's but the `environ` pointer, which the parent restores.
[[noreturn]] void ExecCommandInChild(const ChildArgs& a) {
  if (setsid() < 0) ChildFail(a.errpipe, kStepSetsid);
  if (a.pty) {
    if (ioctl(a.terminal, TIOCSCTTY, 0) < 0) ChildFail(a.errpipe, kStepTerminal);
    if (dup2(a.terminal, 0) < 0 || dup2(a.terminal, 1) < 0 || dup2(a.terminal, 2) < 0) {
      ChildFail(a.errpipe, kStepStdio);
    }
  } else if (dup2(a.in, 0) < 0 || dup2(a.out, 1) < 0 || dup2(a.err, 2) < 0) {
    ChildFail(a.errpipe, kStepStdio);
  }
  if (a.cwd != nullptr && a.cwd[0] != '\0' && chdir(a.cwd) < 0) ChildFail(a.errpipe, kStepCwd);
  // Default dispositions for every signal: init ignores SIGPIPE/SIGXFSZ itself, and a signal ignored by
  // whoever started the agent (e.g. SIGINT for a background job) would otherwise reach the command.
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // Last before execve: the command and all it starts go into a Landlock domain of their own, from which
  // init, Chromium, Xvfb and other calls' commands (same uid, all of them) cannot be inspected: no
  // /proc/<pid>/mem, /proc/<pid>/fd/* (Chromium's CDP pipe), /proc/<pid>/environ. See landlock.h.
  if (a.landlock_ruleset >= 0) {
    const int err = init::EnterWorkloadDomain(a.landlock_ruleset);
    if (err != 0) {
      errno = err;
      ChildFail(a.errpipe, kStepLandlock);
    }
  }
  // execvpe searches the PATH of `environ`, not of envp: make them the same.
  environ = a.envp;
  execvpe(a.argv[0], a.argv, a.envp);
  ChildFail(a.errpipe, kStepExec);
}

int CommandChildEntry(void* args) { ExecCommandInChild(*static_cast<const ChildArgs*>(args)); }

// Starts the command's child as posix_spawn does: clone(CLONE_VM | CLONE_VFORK) onto a stack of its own, with
// init asleep until the child execs or exits. A fork would copy init's page tables (its heap holds the
// output frames, several MiB) for a child that only execs: that copy was most of init's CPU time in an exec
// round trip. The stack is mapped per command with a guard page below it, and sized for glibc's execvpe,
// whose script fallback (ENOEXEC) copies argv onto the stack; an overflow faults in the guard page and ends
// the child, never init. Without CLONE_SIGHAND and CLONE_FILES the child's signal dispositions and fd table
// are its own copies. Returns the pid, or -1 with errno.
pid_t SpawnCommand(const ChildArgs& args) {
  size_t argc = 0;
  while (args.argv[argc] != nullptr) ++argc;
  const size_t page = 4096;
  const size_t stack_bytes = ((64 << 10) + (argc + 3) * sizeof(char*) + page - 1) / page * page;
  void* map = mmap(nullptr, stack_bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (map == MAP_FAILED) return -1;
  if (mprotect(map, page, PROT_NONE) < 0) {
    const int err = errno;
    munmap(map, stack_bytes + page);
    errno = err;
    return -1;
  }
  char** const saved_environ = environ;  // the child points it at the command's environment (shared memory)
  const pid_t pid = clone(CommandChildEntry, static_cast<char*>(map) + page + stack_bytes,
                          CLONE_VM | CLONE_VFORK | SIGCHLD, const_cast<ChildArgs*>(&args));
  const int err = errno;
  environ = saved_environ;
  munmap(map, stack_bytes + page);  // the child has exec'd or exited: its stack is no longer in use
  errno = err;
  return pid;
}

// A command's stdio while it starts: init keeps its ends (in the Exec), the child's are closed after the fork.
struct ExecFds {
  UniqueFd errpipe_read, errpipe_write;  // the child's report of a failed step (ChildFailure)
  UniqueFd out_read, out_write, err_read, err_write, in_read, in_write, master, terminal;

  void CloseChildEnds() {
    errpipe_write.Reset();
    out_write.Reset();
    err_write.Reset();
    in_read.Reset();
    terminal.Reset();
  }
};

// The answer "exec: <what>: <strerror>", with the errno's code. Returns false (the step failed).
bool ExecErrno(pb::Response* r, const char* what, int err) {
  SetError(r, CodeForErrno(err), std::string("exec: ") + what + ": " + strerror(err));
  return false;
}

bool ExecFail(pb::Response* r, pb::Code code, std::string message) {
  SetError(r, code, std::move(message));
  return false;
}

// A pty: its master for init (stdout, and stdin), its terminal for the child, at the requested window size.
bool OpenPtyFromParent(const pb::ExecStart& q, ExecFds* f, pb::Response* r) {
  f->master.Reset(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!f->master) return ExecErrno(r, "opening a pseudo-terminal", errno);
  if (unlockpt(f->master.get()) < 0) return ExecErrno(r, "unlockpt", errno);
  // TIOCGPTPEER opens the slave from the master itself, with no path lookup in /dev/pts.
  f->terminal.Reset(ioctl(f->master.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!f->terminal) return ExecErrno(r, "opening the terminal (TIOCGPTPEER)", errno);
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(q.rows());
  ws.ws_col = static_cast<unsigned short>(q.cols());
  if (ioctl(f->master.get(), TIOCSWINSZ, &ws) < 0) return ExecErrno(r, "TIOCSWINSZ", errno);
  return true;
}

// Without a pty: stdout a pipe (with socket_stdio, one socketpair carries stdin and stdout), stderr a pipe,
// stdin a pipe.
bool OpenPipesFromParent(const pb::ExecStart& q, ExecFds* f, pb::Response* r) {
  int fds[2];
  if (q.socket_stdio()) {
    if (!q.stdin_open()) return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: socket_stdio needs stdin_open");
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return ExecErrno(r, "socketpair", errno);
    f->out_read.Reset(fds[0]);
    f->out_write.Reset(fds[1]);
    f->in_write.Reset(fcntl(f->out_read.get(), F_DUPFD_CLOEXEC, 3));
    f->in_read.Reset(fcntl(f->out_write.get(), F_DUPFD_CLOEXEC, 3));
    if (!f->in_write || !f->in_read) return ExecErrno(r, "dup", errno);
  } else if (pipe2(fds, O_CLOEXEC) < 0) {
    return ExecErrno(r, "pipe2", errno);
  } else {
    f->out_read.Reset(fds[0]);
    f->out_write.Reset(fds[1]);
  }
  // A 1 MiB stdout pipe (the unprivileged maximum) lets each read fill a whole 256 KiB chunk: 4x fewer
  // frames for bulk output. Best effort: a smaller pipe only costs speed.
  (void)fcntl(f->out_read.get(), F_SETPIPE_SZ, 1 << 20);
  if (pipe2(fds, O_CLOEXEC) < 0) return ExecErrno(r, "pipe2", errno);
  f->err_read.Reset(fds[0]);
  f->err_write.Reset(fds[1]);
  // Without stdin_open, stdin is a pipe whose write end is closed at once: EOF on the first read, like
  // /dev/null, with no dependence on the jail's device nodes.
  if (!q.socket_stdio()) {
    if (pipe2(fds, O_CLOEXEC) < 0) return ExecErrno(r, "pipe2", errno);
    f->in_read.Reset(fds[0]);
    f->in_write.Reset(fds[1]);
    if (!q.stdin_open()) f->in_write.Reset();
  }
  return true;
}

// The child's report pipe, then its stdio: a pty or pipes.
bool OpenStdioFromParent(const pb::ExecStart& q, ExecFds* f, pb::Response* r) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return ExecErrno(r, "pipe2", errno);
  f->errpipe_read.Reset(fds[0]);
  f->errpipe_write.Reset(fds[1]);
  if (q.pty() && q.socket_stdio()) {
    return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: socket_stdio is not for a pty command");
  }
  return q.pty() ? OpenPtyFromParent(q, f, r) : OpenPipesFromParent(q, f, r);
}

// Waits for the child's execve: true once it succeeded (EOF on the CLOEXEC pipe; the child gets there, or
// fails, without waiting on anything). Otherwise the child is reaped and `r` holds the answer: an ExecEnd
// with exec_errno when execve failed, an error when a step before it did.
bool AwaitExecFromParent(pid_t pid, int errpipe, const pb::ExecStart& q, pb::Response* r) {
  ChildFailure failure{};
  ssize_t n;
  do {
    n = read(errpipe, &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  if (n != sizeof(failure)) return true;
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
  switch (failure.step) {
    case kStepExec: {
      pb::ExecEnd* end = r->mutable_exec_end();
      end->set_exit_code(-1);
      end->set_exec_errno(failure.err);
      return false;
    }
    case kStepCwd:
      return ExecFail(r, CodeForErrno(failure.err), "exec: cwd " + Quote(q.cwd()) + ": " + strerror(failure.err));
    case kStepSetsid:
      return ExecErrno(r, "setsid", failure.err);
    case kStepTerminal:
      return ExecErrno(r, "making the pty the controlling terminal", failure.err);
    case kStepLandlock:
      return ExecErrno(r, "entering the command's Landlock domain", failure.err);
    default:
      return ExecErrno(r, "setting up stdio", failure.err);
  }
}

// The started command's record, with init's ends of its stdio (nonblocking).
std::unique_ptr<Exec> NewExec(uint64_t call_id, uint64_t serial, pid_t pid, bool pty, ExecFds* f) {
  auto e = std::make_unique<Exec>();
  e->call_id = call_id;
  e->serial = serial;
  e->pid = pid;
  e->pty = pty;
  if (pty) {
    e->out.fd = std::move(f->master);
    e->eof[2] = true;  // stderr is the terminal too
    e->stdin_writable = true;
  } else {
    e->out.fd = std::move(f->out_read);
    e->err.fd = std::move(f->err_read);
    e->in.fd = std::move(f->in_write);
    e->stdin_writable = e->in.fd.valid();
  }
  e->stdin_opened = e->stdin_writable;
  for (Watch* w : {&e->out, &e->err, &e->in}) {
    if (w->fd) SetNonblocking(w->fd.get());
  }
  return e;
}

// The command's timeout (none when 0) as a timerfd. Without its timer the command must not run unbounded:
// then its process group is killed, it is reaped, and the answer is an error (false).
bool ArmTimeoutFromParent(Exec& e, uint32_t timeout_ms, pb::Response* r) {
  if (timeout_ms == 0) return true;
  e.timer.fd.Reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
  itimerspec spec{};
  spec.it_value.tv_sec = static_cast<time_t>(timeout_ms / 1000);
  spec.it_value.tv_nsec = static_cast<long>(timeout_ms % 1000) * 1'000'000;
  if (!e.timer.fd || timerfd_settime(e.timer.fd.get(), 0, &spec, nullptr) < 0) {
    kill(-e.pid, SIGKILL);
    while (waitpid(e.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return ExecErrno(r, "timerfd", errno);
  }
  return true;
}

}  // namespace

Exec* Server::FindExec(uint64_t call_id) {
  const auto it = execs_.find(call_id);
  return it == execs_.end() ? nullptr : it->second.get();
}

bool Server::CheckExecStart(uint64_t call_id, const pb::ExecStart& q, pb::Response* r) {
  if (terminating_) return ExecFail(r, pb::CODE_FAILED_PRECONDITION, "exec: sandbox-init is shutting down");
  if (call_id == 0 || execs_.count(call_id) > 0) {
    return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: call id " + std::to_string(call_id) + " is 0 or in use");
  }
  if (q.argv_size() == 0 || q.argv(0).empty()) return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: argv is empty");
  if (execs_.size() >= kMaxExecs) {
    return ExecFail(r, pb::CODE_RESOURCE_EXHAUSTED,
                    "exec: " + std::to_string(kMaxExecs) + " commands are running already");
  }
  if (q.rows() > 0xffff || q.cols() > 0xffff) {
    return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: the window size is out of range");
  }
  auto has_nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  bool nul = has_nul(q.cwd());
  for (const std::string& s : q.argv()) nul = nul || has_nul(s);
  for (const std::string& s : q.env()) nul = nul || has_nul(s);
  if (nul) return ExecFail(r, pb::CODE_INVALID_ARGUMENT, "exec: argv, env and cwd may not contain NUL bytes");
  return true;
}

// NOTE: commands are started with clone + execvpe here (SpawnCommand), not Boost.Process: as PID 1, init reaps every process
// of the namespace with waitpid(-1) (a process library's own per-child waits would race it and lose exit
// statuses); a pty command needs setsid + TIOCSCTTY on a terminal opened with TIOCGPTPEER between clone and
// exec; and each command's pipes must be nonblocking ends of this epoll loop with backpressure. Boost.Process
// 1.74 offers none of these hooks without fighting it.
void Server::StartExec(uint64_t call_id, const pb::ExecStart& q) {
  pb::Response r;
  r.set_call_id(call_id);
  if (!CheckExecStart(call_id, q, &r)) return Send(r);
  std::vector<char*> argv;
  for (const std::string& s : q.argv()) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> env;
  for (const std::string& s : q.env()) env.push_back(const_cast<char*>(s.c_str()));
  env.push_back(nullptr);
  ExecFds f;
  if (!OpenStdioFromParent(q, &f, &r)) return Send(r);

  ChildArgs args;
  args.errpipe = f.errpipe_write.get();
  args.pty = q.pty();
  args.terminal = f.terminal.get();
  args.in = f.in_read.get();
  args.out = f.out_write.get();
  args.err = f.err_write.get();
  args.cwd = q.cwd().c_str();
  args.argv = argv.data();
  args.envp = q.env_size() > 0 ? env.data() : environ;
  args.landlock_ruleset = landlock_ruleset_.get();

  const pid_t pid = SpawnCommand(args);
  if (pid < 0) {
    ExecErrno(&r, "clone", errno);
    return Send(r);
  }
  f.CloseChildEnds();
  if (!AwaitExecFromParent(pid, f.errpipe_read.get(), q, &r)) return Send(r);

  std::unique_ptr<Exec> e = NewExec(call_id, next_serial_++, pid, q.pty(), &f);
  if (!ArmTimeoutFromParent(*e, q.timeout_ms(), &r)) return Send(r);
  Exec& ref = *e;
  serials_[ref.serial] = call_id;
  pids_[pid] = call_id;
  execs_[call_id] = std::move(e);
  UpdateExecEvents(ref);
}

}  // namespace sbx::sandbox::serve
