#include "wire/one_shot_init.h"

#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "wire/init_report.h"
#include "wire/landlock.h"

namespace sbx::init {
namespace {

// What the command's child writes into PID 1's memory (it shares it until execve) when it fails before or at
// execve.
struct ChildFailure {
  int32_t landlock = 0;  // 1: entering the Landlock domain failed; 0: execve failed
  int32_t err = 0;
};

// The workload child's arguments and its report, on PID 1's stack.
struct WorkloadStart {
  const OneShotCommand* command = nullptr;
  int ruleset = -1;
  const sigset_t* old = nullptr;
  ChildFailure failure;
};

// One line on stderr from pieces (nullptr ends them), with write(2): no stdio, no allocation.
void Say(const char* a, const char* b = nullptr, const char* c = nullptr, const char* d = nullptr,
         const char* e = nullptr) {
  const char* const pieces[] = {a, b, c, d, e, "\n"};
  for (const char* s : pieces) {
    if (s == nullptr) continue;
    ssize_t unused = write(STDERR_FILENO, s, strlen(s));
    (void)unused;
  }
}

// The English text of an errno. strerrordesc_np is a table lookup: strerror may translate (locks, malloc).
const char* ErrText(int err) {
  const char* text = strerrordesc_np(err);
  return text != nullptr ? text : "unknown error";
}

void WriteReport(int fd, uint32_t kind, int32_t value, uint32_t flags) {
  sbx::sandbox::InitReport report;
  report.kind = kind;
  report.value = value;
  report.flags = flags;
  ssize_t unused = write(fd, &report, sizeof(report));
  (void)unused;
}

bool IsForwarded(int sig) {
  switch (sig) {
    case SIGTERM:
    case SIGINT:
    case SIGHUP:
    case SIGQUIT:
    case SIGUSR1:
    case SIGUSR2:
    case SIGWINCH:
    case SIGCONT:
      return true;
    default:
      return false;
  }
}

// The value of NAME in `envp` ("PATH"), or nullptr.
const char* EnvValue(char* const* envp, const char* name) {
  const size_t n = strlen(name);
  for (char* const* e = envp; e != nullptr && *e != nullptr; ++e) {
    if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
  }
  return nullptr;
}

// execve of a file that has no #! line and is not an ELF: run it with /bin/sh, as execvpe does.
void ExecAsScript(const char* path, char* const* argv, char* const* envp) {
  constexpr int kMaxArgs = 1024;  // on the workload child's small stack
  char* sh_argv[kMaxArgs + 2];
  int argc = 0;
  while (argv[argc] != nullptr) ++argc;
  if (argc > kMaxArgs) return;
  sh_argv[0] = const_cast<char*>("/bin/sh");
  sh_argv[1] = const_cast<char*>(path);
  for (int i = 1; i <= argc; ++i) sh_argv[i + 1] = argv[i];  // argv[argc] is the terminating nullptr
  execve("/bin/sh", sh_argv, envp);
}

// execvpe with `envp`'s PATH (execvpe reads PATH from the caller's own environment, which for the agent's
// jail child is the agent's): the same search, in a stack buffer. Returns the errno to report.
int ExecOnPath(char* const* argv, char* const* envp) {
  const char* file = argv[0];
  if (file == nullptr || *file == '\0') return ENOENT;
  if (strchr(file, '/') != nullptr) {
    execve(file, argv, envp);
    if (errno == ENOEXEC) ExecAsScript(file, argv, envp);
    return errno;
  }
  const char* path = EnvValue(envp, "PATH");
  if (path == nullptr) path = "/bin:/usr/bin";
  const size_t file_len = strlen(file);
  if (file_len > NAME_MAX) return ENAMETOOLONG;
  char buf[PATH_MAX + NAME_MAX + 2];
  bool got_eacces = false;
  for (const char* p = path;; ++p) {
    const char* end = strchrnul(p, ':');
    size_t dir_len = static_cast<size_t>(end - p);
    if (dir_len > PATH_MAX) dir_len = 0;  // too long to be a directory: searched as "" (the workdir)
    memcpy(buf, p, dir_len);
    size_t at = dir_len;
    if (dir_len > 0) buf[at++] = '/';
    memcpy(buf + at, file, file_len + 1);
    execve(buf, argv, envp);
    if (errno == ENOEXEC) ExecAsScript(buf, argv, envp);
    switch (errno) {
      case EACCES:
        got_eacces = true;
        [[fallthrough]];
      case ENOENT:
      case ESTALE:
      case ENOTDIR:
      case ENODEV:
      case ETIMEDOUT:
        break;
      default:
        return errno;  // found but not executable for another reason: stop, as execvpe does
    }
    if (*end == '\0') break;
    p = end;
  }
  return got_eacces ? EACCES : ENOENT;
}

// The workload's child between clone and execve: its own process group, the signal mask PID 1 started with,
// the Landlock domain; a failure goes into PID 1's memory (WorkloadStart::failure).
int WorkloadChildMain(void* arg) {
  WorkloadStart* start = static_cast<WorkloadStart*>(arg);
  setpgid(0, 0);
  sigprocmask(SIG_SETMASK, start->old, nullptr);
  if (start->ruleset >= 0) {
    if (const int err = EnterWorkloadDomain(start->ruleset); err != 0) {
      start->failure = ChildFailure{1, err};
      _exit(127);
    }
  }
  start->failure = ChildFailure{0, ExecOnPath(start->command->argv, start->command->envp)};
  _exit(127);
}

// Starts the workload and waits for its execve. Returns its pid, or -1 with *exit_code set (125: PID 1
// failed; 126/127: the workload could not be executed, reported on the report fd).
// The child shares PID 1's memory until it execs (CLONE_VM | CLONE_VFORK, as posix_spawn does), on a stack
// of its own here: no page tables to copy and no copy-on-write faults (each a TLB flush) in either process;
// PID 1 sleeps until the exec. PID 1 is single-threaded, and the child only makes raw syscalls and writes
// its own stack and `start`. glibc's thin clone() wrapper, not fork(): see one_shot_init.h. No namespace flag the
// policies' clone rules look at.
pid_t StartWorkloadFromParent(const OneShotCommand& command, int ruleset, const sigset_t& old, uint32_t flags,
                              int* exit_code) {
  *exit_code = 125;
  constexpr size_t kStackBytes = 64 << 10;
  alignas(64) static char stack[kStackBytes];  // one child, once: PID 1 starts a single workload
  WorkloadStart start;
  start.command = &command;
  start.ruleset = ruleset;
  start.old = &old;
  const pid_t child = clone(WorkloadChildMain, stack + kStackBytes, CLONE_VM | CLONE_VFORK | SIGCHLD, &start);
  if (child < 0) {
    Say(command.name, ": clone: ", ErrText(errno));
    return -1;
  }
  if (ruleset >= 0) close(ruleset);
  const ChildFailure failure = start.failure;
  if (failure.err != 0) {
    waitpid(child, nullptr, 0);
    if (failure.landlock != 0) {
      Say(command.name, ": cannot put ", command.argv[0], " in its Landlock domain: ", ErrText(failure.err));
    } else {
      Say(command.name, ": cannot execute ", command.argv[0], ": ", ErrText(failure.err));
    }
    WriteReport(command.report_fd, sbx::sandbox::InitReport::kExecFailed, failure.err, flags);
    *exit_code = failure.err == ENOENT ? 127 : 126;
    return -1;
  }
  return child;
}

// PID 1's loop: forwards signals to the workload and reaps every child until the workload ends; returns its
// status (128+N for a signal) after the report.
int ForwardSignalsAndReap(pid_t child, const sigset_t& all, int report_fd, uint32_t flags) {
  for (;;) {
    siginfo_t info;
    const int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (IsForwarded(sig)) {
      // To the workload's process group, as a terminal would.
      // NOTE: the sender is not checked here, unlike in the serving init: a signal the workload sends to
      // PID 1 only comes back to the workload's own process group, which the workload (same uid, same pid
      // namespace) could have signaled itself; and the outcome is read from waitpid and the kernel, never
      // from a signal's fields. So forwarding a forged one gives the workload nothing it did not have; every
      // other signal but SIGCHLD is taken here and ignored.
      if (kill(-child, sig) < 0) kill(child, sig);
      continue;
    }
    if (sig != SIGCHLD) continue;
    for (;;) {
      int status;
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      if (pid != child) continue;
      if (WIFEXITED(status)) {
        WriteReport(report_fd, sbx::sandbox::InitReport::kExited, WEXITSTATUS(status), flags);
        return WEXITSTATUS(status);
      }
      WriteReport(report_fd, sbx::sandbox::InitReport::kSignaled, WTERMSIG(status), flags);
      return 128 + WTERMSIG(status);
    }
  }
}

}  // namespace

int RunOneShotInit(const OneShotCommand& command) {
  // Before anything else: a dumpable PID 1 could be opened through /proc/1/mem (read-write), /proc/1/fd/3
  // (the report channel) or /proc/1/environ by the workload, which runs as the same uid, and be made to
  // report anything (issue 11 item 1). Not dumpable, ptrace_may_access asks for CAP_SYS_PTRACE, which no
  // process in the jail has. (The serving init does the same in server.cc.)
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
    Say(command.name, ": prctl(PR_SET_DUMPABLE): ", ErrText(errno));
    return 125;
  }
  if (command.argv == nullptr || command.argv[0] == nullptr) {
    Say(command.name, ": no command given");
    return 125;
  }
  // The report channel must not leak into the workload.
  if (fcntl(command.report_fd, F_SETFD, FD_CLOEXEC) < 0 && errno != EBADF) return 125;
  // The workload's Landlock domain, made before the fork so the child only has to enter it. A kernel without
  // Landlock runs the workload anyway, and says so on stderr and in the report; any other failure refuses.
  uint32_t flags = 0;
  const int ruleset = CreateWorkloadRuleset();
  if (ruleset < 0) {
    if (!LandlockMissing(-ruleset)) {
      Say(command.name, ": landlock_create_ruleset: ", ErrText(-ruleset));
      return 125;
    }
    Say(command.name, ": warning: this kernel lacks Landlock (", ErrText(-ruleset),
        "): the workload is NOT separated from PID 1 (only PID 1's non-dumpable state protects it)");
    flags |= sbx::sandbox::InitReport::kNotSeparated;
  }
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  int exit_code = 0;
  const pid_t child = StartWorkloadFromParent(command, ruleset, old, flags, &exit_code);
  if (child < 0) return exit_code;
  return ForwardSignalsAndReap(child, all, command.report_fd, flags);
}

}  // namespace sbx::init
