// The Landlock domain sandbox-init puts every workload process in, just before its execve.
//
// Why: sandbox-init, Chromium and Xvfb run as the workload's uid. Non-dumpable init is out of reach of a
// same-uid process, but Chromium (and any process init's drivers start) is dumpable, and "same uid" is all
// ptrace_may_access asks for: the workload could open /proc/<chromium>/fd/3 and write CDP commands, or open
// /proc/<pid>/mem and rewrite a process. Landlock (kernel >= 5.13) scopes ptrace: from inside a domain,
// ptrace_may_access fails towards every process outside it (or in a sibling domain), whatever the uid. That
// covers /proc/<pid>/mem, /proc/<pid>/fd/*, /proc/<pid>/environ and pidfd_getfd of init, Chromium, Xvfb and
// the processes of other exec calls.
//
// What the domain restricts besides: creating block and character device nodes (mknod), which the jail
// already refuses (no CAP_MKNOD in its user namespace), so nothing else changes. It deliberately does NOT
// scope abstract unix sockets (apps must reach Xvfb's) or signals (one exec call may kill what another
// started).
//
// In wire/ (not sandbox/init/) because both sandbox-init and the agent's in-process PID 1 of one-shot jails
// (wire/one_shot_init.h) use it, and wire is the one layer both may include (tests/unit/code_shape_test.cc).
//
// Raw syscalls, no libc wrapper and no allocation: EnterWorkloadDomain runs between fork and execve.
#ifndef SBX_WIRE_LANDLOCK_H_
#define SBX_WIRE_LANDLOCK_H_

namespace sbx::init {

// Creates the ruleset (once, in init, before the first fork). Returns its fd (close-on-exec), or -errno:
// -ENOSYS or -EOPNOTSUPP when the kernel lacks Landlock or has it disabled.
int CreateWorkloadRuleset();

// In a child between fork and execve: enters a new Landlock domain made from `ruleset_fd`. The calling
// process and everything it starts stay in it for good. Returns 0 or an errno. Async-signal-safe.
int EnterWorkloadDomain(int ruleset_fd);

// True when CreateWorkloadRuleset's error means "this kernel has no Landlock" (as opposed to a fault).
bool LandlockMissing(int err);

}  // namespace sbx::init

#endif  // SBX_WIRE_LANDLOCK_H_
