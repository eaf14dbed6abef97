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
// NOTE: it uses a raw fork + execve (wire/one_shot_init.h) rather than Boost.Process: as PID 1 it must reap
// every process of the namespace with waitpid(-1), which a process library's own child tracking would race
// with. `sandbox-agent run` normally does not exec this binary: its jail child stays PID 1 and runs the same
// code (sandbox/jail.h, JailOptions::in_process_init); this mode is its fallback.

#include <malloc.h>
#include <unistd.h>

#include <cstring>

#include "wire/init_report.h"
#include "wire/one_shot_init.h"
#include "sandbox/init/init_server.h"

namespace {

// --serve: the init protocol on the report fd, until the agent closes it (init_server.h).
int ServeMode() {
  // Output frames are ~256 KiB: keep them on the heap instead of a fresh mmap (page faults and zeroing)
  // for every one.
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  return sbx::sandbox::ServeInitProtocol(sbx::sandbox::kInitReportFd);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return ServeMode();
  // One-shot: the code the agent's in-process PID 1 of `sandbox-agent run` runs too (wire/one_shot_init.h).
  int first = 1;
  if (first < argc && strcmp(argv[first], "--") == 0) ++first;
  sbx::init::OneShotCommand command;
  command.argv = argv + first;
  command.envp = environ;
  command.report_fd = sbx::sandbox::kInitReportFd;
  command.name = "sandbox-init";
  return sbx::init::RunOneShotInit(command);
}
