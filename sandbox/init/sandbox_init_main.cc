// sandbox-init: PID 1 of a jail. Started by the agent with no capabilities, as the workload's uid, under the
// jail's seccomp filter (loaded just before this binary was executed, so it covers init too).
//
// `sandbox-init --serve`: serves the init protocol on fd 3 (a socket; see init_server.h) until the agent
// closes it.
//
// `sandbox-init [--] COMMAND [ARG...]` (one-shot): it runs one command, forwards SIGTERM/SIGINT/SIGHUP/
// SIGQUIT/SIGUSR1/SIGUSR2/SIGWINCH to it, reaps every orphan that is re-parented to it, writes an InitReport
// on fd 3, and exits with the workload's status (128+N for a signal; the report carries the exact signal).
//
// When it exits, the kernel kills whatever is left in the pid namespace.
//
// NOTE: init runs as the workload's uid, so everything the workload could do to a process of its own it
// could do to init, unless init keeps it out: init is not dumpable (no /proc/1/mem, /proc/1/fd/3 or ptrace
// for a same-uid process without CAP_SYS_PTRACE), and the workload runs in a Landlock domain
// (landlock.h), from which no process outside it can be inspected at all. Whatever init reports, the agent
// still checks it against the kernel (sandbox/outcome.h).
//
// It is linked statically: it starts in well under a millisecond and needs nothing from the jail's /lib.
// NOTE: it uses fork + execvpe directly rather than Boost.Process: as PID 1 it must reap every process of
// the namespace with waitpid(-1), which a process library's own child tracking would race with.

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "wire/init_report.h"
#include "sandbox/init/init_server.h"
#include "sandbox/init/landlock.h"

namespace {

// Set when the workload runs without its Landlock domain (the kernel lacks Landlock); goes into the report.
uint32_t g_report_flags = 0;

void WriteReport(uint32_t kind, int32_t value) {
  sbx::sandbox::InitReport report;
  report.kind = kind;
  report.value = value;
  report.flags = g_report_flags;
  ssize_t unused = write(sbx::sandbox::kInitReportFd, &report, sizeof(report));
  (void)unused;
}

// What the command's child reports over its CLOEXEC pipe when it fails before (or at) execve.
struct ChildFailure {
  int32_t landlock = 0;  // 1: entering the Landlock domain failed; 0: execve failed
  int32_t err = 0;
};

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

// --serve: the init protocol on the report fd, until the agent closes it (init_server.h).
int ServeMode() {
  // Output frames are ~256 KiB: keep them on the heap instead of a fresh mmap (page faults and zeroing)
  // for every one.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  return sbx::sandbox::ServeInitProtocol(sbx::sandbox::kInitReportFd);
}

// Before anything else: a dumpable init could be opened through /proc/1/mem (read-write), /proc/1/fd/3
// (the report channel) or /proc/1/environ by the workload, which runs as the same uid, and be made to
// report anything (issue 11 item 1). Not dumpable, ptrace_may_access asks for CAP_SYS_PTRACE, which no
// process in the jail has. (The serving init does the same in server.cc.)
bool MakeUndumpable() {
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
    perror("sandbox-init: prctl(PR_SET_DUMPABLE)");
    return false;
  }
  return true;
}

// The workload's Landlock domain (landlock.h), made before the fork so the child only has to enter it.
// A kernel without Landlock runs the workload anyway, and says so on stderr and in the report (-1 then); any
// other failure refuses to run it (false).
bool CreateRuleset(int* ruleset) {
  *ruleset = sbx::init::CreateWorkloadRuleset();
  if (*ruleset < 0) {
    if (!sbx::init::LandlockMissing(-*ruleset)) {
      fprintf(stderr, "sandbox-init: landlock_create_ruleset: %s\n", strerror(-*ruleset));
      return false;
    }
    fprintf(stderr,
            "sandbox-init: warning: this kernel lacks Landlock (%s): the workload is NOT separated from "
            "sandbox-init (only init's non-dumpable state protects it)\n",
            strerror(-*ruleset));
    g_report_flags |= sbx::sandbox::InitReport::kNotSeparated;
  }
  return true;
}

// The workload's child between fork and execve: its own process group, the signal mask init started with,
// the Landlock domain; a failure goes to the parent over the CLOEXEC pipe.
[[noreturn]] void ExecWorkloadInChild(int exec_pipe_write, int ruleset, const sigset_t& old, char** argv) {
  setpgid(0, 0);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  ChildFailure failure;
  if (ruleset >= 0) {
    failure.err = sbx::init::EnterWorkloadDomain(ruleset);
    failure.landlock = failure.err != 0 ? 1 : 0;
  }
  if (failure.err == 0) {
    execvpe(argv[0], argv, environ);
    failure.err = errno;
  }
  ssize_t unused = write(exec_pipe_write, &failure, sizeof(failure));
  (void)unused;
  _exit(127);
}

// Forks the workload (`argv`) and waits for its execve. Returns its pid, or -1 with *exit_code set (125:
// init failed; 126/127: the workload could not be executed, reported on fd 3).
pid_t StartWorkloadFromParent(char** argv, int ruleset, const sigset_t& old, int* exit_code) {
  *exit_code = 125;
  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) < 0) {
    perror("sandbox-init: pipe2");
    return -1;
  }
  const pid_t child = fork();
  if (child < 0) {
    perror("sandbox-init: fork");
    return -1;
  }
  if (child == 0) {
    close(exec_pipe[0]);
    ExecWorkloadInChild(exec_pipe[1], ruleset, old, argv);
  }
  if (ruleset >= 0) close(ruleset);
  close(exec_pipe[1]);
  ChildFailure failure;
  ssize_t n;
  do {
    n = read(exec_pipe[0], &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  close(exec_pipe[0]);
  if (n == sizeof(failure)) {
    waitpid(child, nullptr, 0);
    if (failure.landlock != 0) {
      fprintf(stderr, "sandbox-init: cannot put %s in its Landlock domain: %s\n", argv[0], strerror(failure.err));
    } else {
      fprintf(stderr, "sandbox-init: cannot execute %s: %s\n", argv[0], strerror(failure.err));
    }
    WriteReport(sbx::sandbox::InitReport::kExecFailed, failure.err);
    *exit_code = failure.err == ENOENT ? 127 : 126;
    return -1;
  }
  return child;
}

// PID 1's loop: forwards signals to the workload and reaps every child until the workload ends; returns its
// status (128+N for a signal) after the report.
int ForwardSignalsAndReap(pid_t child, const sigset_t& all) {
  for (;;) {
    siginfo_t info;
    const int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (IsForwarded(sig)) {
      // To the workload's process group, as a terminal would.
      // NOTE: the sender is not checked here, unlike in the serving init: a signal the workload sends to
      // init only comes back to the workload's own process group, which the workload (same uid, same pid
      // namespace) could have signaled itself; and the outcome is read from waitpid and the kernel, never
      // from a signal's fields. So forwarding a forged one gives the workload nothing it did not have.
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
        WriteReport(sbx::sandbox::InitReport::kExited, WEXITSTATUS(status));
        return WEXITSTATUS(status);
      }
      WriteReport(sbx::sandbox::InitReport::kSignaled, WTERMSIG(status));
      return 128 + WTERMSIG(status);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return ServeMode();
  if (!MakeUndumpable()) return 125;
  int first = 1;
  if (first < argc && strcmp(argv[first], "--") == 0) ++first;
  if (first >= argc) {
    fprintf(stderr, "sandbox-init: no command given\n");
    return 125;
  }
  // The report channel must not leak into the workload.
  if (fcntl(sbx::sandbox::kInitReportFd, F_SETFD, FD_CLOEXEC) < 0 && errno != EBADF) return 125;
  int ruleset = -1;
  if (!CreateRuleset(&ruleset)) return 125;

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  int exit_code = 0;
  const pid_t child = StartWorkloadFromParent(argv + first, ruleset, old, &exit_code);
  if (child < 0) return exit_code;
  return ForwardSignalsAndReap(child, all);
}
