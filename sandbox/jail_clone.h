// Cloning the jail child (the launching thread's side of jail.cc's Start). Internal to sandbox/.
#ifndef SBX_SANDBOX_JAIL_CLONE_H_
#define SBX_SANDBOX_JAIL_CLONE_H_

#include <linux/filter.h>
#include <limits.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "sandbox/jail_child.h"

namespace sbx::sandbox::internal {

// Starts the jail child: returns its pid in the parent once it has exec'd sandbox-init or failed (x86-64,
// CLONE_VFORK), or at once (elsewhere). -1 with errno when clone fails.
// `before_copy` runs before the fallback's fork-style clone: that child gets a copy of `child` as it is then,
// so whatever the helper thread still fills in must be there first.
// `flags` are the namespaces' CLONE_* flags; the pidfd goes to *pidfd and the pid to *tid (see jail_clone.cc
// for when). `cgroup_fd` >= 0 (v2): the child is born in that cgroup, or, with the clone(2) fallback,
// *move_into_cgroup is set for the caller to move it.
// `fork_style`: always the fork-style clone, for a child that never execs (the in-process PID 1 of
// ChildSpec::in_process_init), which would keep a CLONE_VFORK parent asleep for the whole run. Such a child
// reads what the helper fills in late from a ForkHandoff (below), so `before_copy` is not called: the clone
// need not wait for it. Only for a small process such as `sandbox-agent run`: see jail_clone.cc for what a
// fork-style copy of the daemon costs.
pid_t StartChild(uint64_t flags, int* pidfd, pid_t* tid, int cgroup_fd, int* move_into_cgroup, const ChildSpec& child,
                 const std::function<void()>& before_copy, bool fork_style = false);

// What the setup helper hands a fork-style child (the in-process PID 1) after the clone: that child sees only a
// snapshot of the agent's memory as it was at clone time, but the helper makes the v1 cgroup and compiles the
// seccomp program while the child builds its mounts, as it does for a CLONE_VM child. So the helper writes
// them into this MAP_SHARED page range (the child keeps the mapping, at the same address), before it releases
// the child over the sync pipe; the child reads them only after that. ChildSpec's seccomp and
// cgroup_tasks_files point in here from the start; the tasks list ends at the first nullptr.
struct ForkHandoff {
  static constexpr size_t kMaxTasksFiles = 8;
  sock_fprog prog;
  sock_filter filter[BPF_MAXINSNS];
  const char* tasks_files[kMaxTasksFiles + 1];
  char tasks_paths[kMaxTasksFiles][PATH_MAX];
};

// The shared mapping of one ForkHandoff (zeroed), unmapped at destruction; get() is nullptr when mmap failed.
class SharedForkHandoff {
 public:
  SharedForkHandoff();
  ~SharedForkHandoff();
  SharedForkHandoff(const SharedForkHandoff&) = delete;
  SharedForkHandoff& operator=(const SharedForkHandoff&) = delete;
  ForkHandoff* get() const { return handoff_; }

 private:
  ForkHandoff* handoff_ = nullptr;
};

// The helper's side: copies the program's instructions and the tasks files' paths in. False when they do not
// fit (more than BPF_MAXINSNS instructions, kMaxTasksFiles files or PATH_MAX bytes).
bool FillForkHandoff(ForkHandoff* h, const std::vector<sock_filter>* instructions,
                     const std::vector<std::string>* tasks_files);

// Points `child` at `h` for what the helper fills in (seccomp, v1 tasks files) and marks it in-process PID 1.
void UseForkHandoff(ForkHandoff* h, ChildSpec* child);

}  // namespace sbx::sandbox::internal

#endif  // SBX_SANDBOX_JAIL_CLONE_H_
