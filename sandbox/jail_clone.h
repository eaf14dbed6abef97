// Cloning the jail child (the launching thread's side of jail.cc's Start). Internal to sandbox/.
#ifndef SBX_SANDBOX_JAIL_CLONE_H_
#define SBX_SANDBOX_JAIL_CLONE_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>

#include "sandbox/jail_child.h"

namespace sbx::sandbox::internal {

// Starts the jail child: returns its pid in the parent once it has exec'd sandbox-init or failed (x86-64,
// CLONE_VFORK), or at once (elsewhere). -1 with errno when clone fails.
// `before_copy` runs before the fallback's fork-style clone: that child gets a copy of `child` as it is then,
// so whatever the helper thread still fills in must be there first.
// `flags` are the namespaces' CLONE_* flags; the pidfd goes to *pidfd and the pid to *tid (see jail_clone.cc
// for when). `cgroup_fd` >= 0 (v2): the child is born in that cgroup, or, with the clone(2) fallback,
// *move_into_cgroup is set for the caller to move it.
// `fork_style`: always the fork-style clone (after `before_copy`), for a child that never execs (the in-process
// PID 1 of ChildSpec::in_process_init), which would keep a CLONE_VFORK parent asleep for the whole run. Only for
// a small process such as `sandbox-agent run`: see jail_clone.cc for what a fork-style copy of the daemon costs.
pid_t StartChild(uint64_t flags, int* pidfd, pid_t* tid, int cgroup_fd, int* move_into_cgroup, const ChildSpec& child,
                 const std::function<void()>& before_copy, bool fork_style = false);

}  // namespace sbx::sandbox::internal

#endif  // SBX_SANDBOX_JAIL_CLONE_H_
