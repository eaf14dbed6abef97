// The child side of building a jail: everything between clone and execve(sandbox-init). It runs in a copy of
// a possibly multithreaded process, so it does raw syscalls only (no malloc, no locks, no logging). The parent
// precomputes every string, the mount plan and the BPF program; the child reports a failure as ChildError
// over a CLOEXEC pipe and _exits. Internal to sandbox/.
#ifndef SBX_SANDBOX_JAIL_CHILD_H_
#define SBX_SANDBOX_JAIL_CHILD_H_

#include <linux/filter.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace sbx::sandbox::internal {

// One step of building the jail's root, with paths already rebased (/oldroot/... and /newroot/...).
struct MountOp {
  enum class Kind : uint8_t {
    kTmpfs,           // mount tmpfs at dst with `data` options
    kBind,            // bind src (a host path under /oldroot) at dst, read-only unless !readonly
    kRebindReadOnly,  // bind dst onto itself read-only (e.g. /proc/sys); optional when absent
    kProc,            // fresh procfs at dst
    kDevpts,          // devpts newinstance at dst with `data` options
    kFile,            // create dst with `data` (data_len bytes) and `mode`
    kSymlink,         // symlink dst -> src
  };
  Kind kind = Kind::kTmpfs;
  const char* src = nullptr;
  const char* dst = nullptr;
  const char* data = nullptr;
  size_t data_len = 0;
  uint32_t mode = 0;
  bool readonly = true;
  bool optional = false;
  bool device = false;  // kBind of a device node: nodev would make it unusable
  // kBind read-only of a host directory or file, through a read-only overlayfs instead of a plain bind, so
  // that the jail sees overlay inodes of its own: inotify marks live on inodes, and a plain bind shares the
  // host's, so the host's activity would reach the jail's watches. nullptr: a plain bind.
  //  - src a directory: overlay at dst with `overlay_dir_options` ("lowerdir=SRC:EMPTY,...").
  //  - src a file: overlay of its parent directory (`overlay_parent_options`) at `overlay_stage` on the
  //    base tmpfs (shared by the files of one directory), then `overlay_stage_file` bound at dst; the
  //    stage is dropped with the old root.
  const char* overlay_empty = nullptr;  // the empty second lower layer, created on demand
  const char* overlay_dir_options = nullptr;
  const char* overlay_parent_options = nullptr;
  const char* overlay_stage = nullptr;
  const char* overlay_stage_file = nullptr;
};

struct ChildRlimit {
  int resource;
  rlimit value;
};

// Steps the child reports failures from (ChildError::step).
enum class ChildStep : int32_t {
  kSync = 1,
  kFds,
  kCgroupJoin,
  kSetIdsRoot,
  kSetsid,
  kCgroupNs,
  kLoopback,
  kMountPrivate,
  kBaseTmpfs,
  kPivotBase,
  kNewRootTmpfs,
  kMountOp,
  kHostname,
  kRootReadOnly,
  kPivotRoot,
  kWorkdir,
  kRlimit,
  kDropCaps,
  kSetIds,
  kNoNewPrivs,
  kSeccomp,
  kSeccompListener,
  kExec,
};

// What the child writes to its error pipe when a step fails.
struct ChildError {
  int32_t step;
  int32_t err;       // errno
  int32_t op_index;  // for kMountOp / kRlimit: the index into ops / rlimits; else -1
};

struct ChildSpec {
  int ready_fd = -1;   // write end: the child writes one byte when it waits for its id maps
  int sync_fd = -1;    // read end: one byte, 1 once the ids are mapped (anything else: give up)
  int err_fd = -1;     // write end, CLOEXEC: EOF at exec means success
  int report_fd = -1;  // becomes fd 3 of sandbox-init (init's report channel); -1 for none
  bool id_range = false;        // ids mapped as a 65536 range (root): switch to inside root for setup
  bool new_cgroup_ns = true;    // unshare the cgroup namespace once placed in the session cgroup
  // v1: `tasks` files the child joins by writing "0" to each, before anything else (see Cgroup).
  const char* const* cgroup_tasks_files = nullptr;
  size_t num_cgroup_tasks_files = 0;
  bool loopback_up = true;      // bring "lo" up in the new network namespace
  const MountOp* ops = nullptr;
  size_t num_ops = 0;
  const char* newroot_tmpfs_options = nullptr;
  const char* hostname = nullptr;
  size_t hostname_len = 0;
  bool set_hostname = true;
  const char* workdir = nullptr;  // inside the jail
  const ChildRlimit* rlimits = nullptr;
  size_t num_rlimits = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  const sock_fprog* seccomp = nullptr;
  // >= 0: load `seccomp` with SECCOMP_FILTER_FLAG_NEW_LISTENER and send the listener over this socket
  // (SCM_RIGHTS) to the agent's supervisor, closing the child's copy before exec: sandbox-init and the
  // workload never hold it. -1: no user notification (prctl).
  int notify_fd = -1;
  const char* init_path = nullptr;  // inside the jail
  // sandbox-init's argv, or with in_process_init the workload's.
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  // The child does not exec sandbox-init: after the seccomp filter it closes its error pipe (success, as the
  // exec would have) and stays PID 1 of a one-shot jail itself (wire/one_shot_init.h), reporting on fd 3.
  // Only for a fork-style clone (see jail_clone.h): a CLONE_VFORK parent would sleep until the child exits.
  bool in_process_init = false;
  // With in_process_init: the agent's command line and environment blocks (the kernel's arg_start..arg_end
  // and env_start..env_end), which PID 1 zeroes in its copy before it starts the workload. /proc/1/cmdline is
  // readable by any process of the pid namespace, with no ptrace check; it would show the agent's command
  // line (host paths of binds, the policy file), and the environment block the operator's environment.
  struct Region {
    char* start = nullptr;
    size_t len = 0;
  };
  Region scrub[2];
};

// A one-byte message with room for one fd (SCM_RIGHTS): the child's SendFd and the parent's ReceiveFd.
// Stack memory only (the child uses it between clone and exec); not copyable (msg points into it).
struct FdMessage {
  char byte = 0;
  iovec iov{};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};

  FdMessage() noexcept {
    iov.iov_base = &byte;
    iov.iov_len = 1;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
};

// Never returns: execs sandbox-init (or with in_process_init runs PID 1 and _exits with its status), or
// _exits(125) after writing a ChildError.
[[noreturn]] void RunJailChild(const ChildSpec& spec);

// A human name for a step ("pivot_root", "mount", ...).
const char* ChildStepName(int32_t step);

}  // namespace sbx::sandbox::internal

#endif  // SBX_SANDBOX_JAIL_CHILD_H_
