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
// It is linked statically: it starts in well under a millisecond and needs nothing from the jail's /lib.
// NOTE: it uses fork + execvpe directly rather than Boost.Process: as PID 1 it must reap every process of
// the namespace with waitpid(-1), which a process library's own child tracking would race with.

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "sandbox/init/init_report.h"
#include "sandbox/init/init_server.h"

namespace {

void WriteReport(uint32_t kind, int32_t value) {
  sbx::sandbox::InitReport report;
  report.kind = kind;
  report.value = value;
  ssize_t unused = write(sbx::sandbox::kInitReportFd, &report, sizeof(report));
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

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) {
    // Output frames are ~256 KiB: keep them on the heap instead of a fresh mmap (page faults and zeroing)
    // for every one.
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 16 << 20);
    return sbx::sandbox::ServeInitProtocol(sbx::sandbox::kInitReportFd);
  }
  int first = 1;
  if (first < argc && strcmp(argv[first], "--") == 0) ++first;
  if (first >= argc) {
    fprintf(stderr, "sandbox-init: no command given\n");
    return 125;
  }
  // The report channel must not leak into the workload.
  if (fcntl(sbx::sandbox::kInitReportFd, F_SETFD, FD_CLOEXEC) < 0 && errno != EBADF) return 125;

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);

  int exec_pipe[2];
  if (pipe2(exec_pipe, O_CLOEXEC) < 0) {
    perror("sandbox-init: pipe2");
    return 125;
  }
  const pid_t child = fork();
  if (child < 0) {
    perror("sandbox-init: fork");
    return 125;
  }
  if (child == 0) {
    close(exec_pipe[0]);
    setpgid(0, 0);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    execvpe(argv[first], argv + first, environ);
    const int err = errno;
    ssize_t unused = write(exec_pipe[1], &err, sizeof(err));
    (void)unused;
    _exit(127);
  }
  close(exec_pipe[1]);
  int exec_errno = 0;
  ssize_t n;
  do {
    n = read(exec_pipe[0], &exec_errno, sizeof(exec_errno));
  } while (n < 0 && errno == EINTR);
  close(exec_pipe[0]);
  if (n == sizeof(exec_errno)) {
    waitpid(child, nullptr, 0);
    fprintf(stderr, "sandbox-init: cannot execute %s: %s\n", argv[first], strerror(exec_errno));
    WriteReport(sbx::sandbox::InitReport::kExecFailed, exec_errno);
    return exec_errno == ENOENT ? 127 : 126;
  }

  for (;;) {
    siginfo_t info;
    const int sig = sigwaitinfo(&all, &info);
    if (sig < 0) continue;
    if (IsForwarded(sig)) {
      // To the workload's process group, as a terminal would.
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
