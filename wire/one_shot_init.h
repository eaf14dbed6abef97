// PID 1 of a one-shot jail: runs one command in its Landlock domain (wire/landlock.h), forwards SIGTERM/
// SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2/SIGWINCH/SIGCONT to it, reaps every orphan re-parented to PID 1,
// writes one InitReport (wire/init_report.h) on its report fd, and returns the workload's status (128+N for a
// signal).
//
// Two callers share it: sandbox-init's one-shot mode (an exec'd static binary), and the agent's jail child of
// `sandbox-agent run`, which stays PID 1 itself instead of exec'ing sandbox-init (sandbox/jail.h,
// JailOptions::in_process_init), as bubblewrap does.
//
// NOTE: the jail child is a fork-style copy of a multithreaded process, so everything here is raw syscalls
// and async-signal-safe libc wrappers: no malloc, no stdio, no locks, no glibc fork() (its atfork handlers
// take locks other threads may have held at clone time). Error text goes to stderr with write(2). No abseil:
// sandbox-init is static and abseil-free.
//
// In wire/ because both sandbox-init (sandbox/init, which may include wire and base only) and the jail child
// (sandbox/, which may include wire but not sandbox/init) call it (tests/unit/code_shape_test.cc).
//
// NOTE: PID 1 runs as the workload's uid, so everything the workload could do to a process of its own it
// could do to PID 1, unless PID 1 keeps it out: it is not dumpable (no /proc/1/mem, /proc/1/fd/3,
// /proc/1/environ or ptrace for a same-uid process without CAP_SYS_PTRACE), and the workload runs in a
// Landlock domain from which no process outside it can be inspected at all. Whatever PID 1 reports, the agent
// still checks it against the kernel (sandbox/outcome.h).
#ifndef SBX_WIRE_ONE_SHOT_INIT_H_
#define SBX_WIRE_ONE_SHOT_INIT_H_

namespace sbx::init {

struct OneShotCommand {
  // The workload. argv[0] without a '/' is looked up on envp's PATH (as execvpe would with that environment;
  // "/bin:/usr/bin" without one), in a stack buffer.
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  // Where the InitReport goes; made close-on-exec here so the workload never holds it.
  int report_fd = 3;
  // Prefixes the error text on stderr ("sandbox-init: cannot execute ...").
  const char* name = "sandbox-init";
};

// Becomes PID 1 of the command: not dumpable first, then the Landlock ruleset, all signals blocked, the
// workload's start (clone(CLONE_VM | CLONE_VFORK), see one_shot_init.cc), and the forward-and-reap loop.
// Returns PID 1's exit status: the workload's (128+N for a signal), 125 when PID 1 itself failed, 126/127 when the command could not be executed (then the
// report says kExecFailed with the errno).
int RunOneShotInit(const OneShotCommand& command);

}  // namespace sbx::init

#endif  // SBX_WIRE_ONE_SHOT_INIT_H_
