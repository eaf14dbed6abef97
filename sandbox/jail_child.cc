#include "sandbox/jail_child.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/securebits.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "wire/one_shot_init.h"

// NOTE: everything in this file runs between clone and execve. Raw syscalls and async-signal-safe libc
// wrappers only: no allocation, no locks, no logging, no C++ exceptions. On x86-64 the child shares the
// agent's memory (CLONE_VM|CLONE_VFORK, see jail.cc) and runs on the suspended launching thread's TLS, so
// it may write only its own stack and that thread's thread-locals (errno, g_err_fd). The id changes in particular go
// through syscall(2): glibc's setresuid/setgroups broadcast to every thread of the process under a lock
// that another thread of the parent may have held at clone time, which hangs the child forever.

namespace sbx::sandbox::internal {
namespace {

// thread_local: with CLONE_VM the child writes the launching thread's copy, which no other jail shares.
thread_local int g_err_fd = -1;

[[noreturn]] void Fail(ChildStep step, int err, int op_index = -1) {
  ChildError e{static_cast<int32_t>(step), err, op_index};
  if (g_err_fd >= 0) {
    ssize_t unused = write(g_err_fd, &e, sizeof(e));
    (void)unused;
  }
  _exit(125);
}

// Copies `src` into `buf` (PATH_MAX). Returns false when it does not fit.
bool CopyPath(char* buf, const char* src) {
  size_t n = strlen(src);
  if (n >= PATH_MAX) return false;
  memcpy(buf, src, n + 1);
  return true;
}

// mkdir -p of `path` (absolute), without allocation.
int MkdirAll(const char* path, mode_t mode) {
  char buf[PATH_MAX];
  if (!CopyPath(buf, path)) return ENAMETOOLONG;
  for (char* p = buf + 1; *p; ++p) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, mode) < 0 && errno != EEXIST) return errno;
    *p = '/';
  }
  if (mkdir(buf, mode) < 0 && errno != EEXIST) return errno;
  return 0;
}

// Creates the parent directories of `path`.
int MkdirParent(const char* path) {
  char buf[PATH_MAX];
  if (!CopyPath(buf, path)) return ENAMETOOLONG;
  char* slash = strrchr(buf, '/');
  if (slash == nullptr || slash == buf) return 0;
  *slash = '\0';
  return MkdirAll(buf, 0755);
}

// Creates an empty file to bind a non-directory onto.
int Touch(const char* path) {
  if (int err = MkdirParent(path); err != 0) return err;
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

// Applies read-only (or not), nosuid and (unless a device node) nodev to the mount at `path` and below.
int RestrictMount(const char* path, bool readonly, bool device = false) {
  mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_NOSUID | (device ? 0 : MOUNT_ATTR_NODEV) | (readonly ? MOUNT_ATTR_RDONLY : 0);
  if (mount_setattr(AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof(attr)) == 0) return 0;
  if (errno != ENOSYS) return errno;
  // Kernels before 5.12: remount the top mount, keeping the flags that are locked in a user namespace.
  unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | (device ? 0 : MS_NODEV) | (readonly ? MS_RDONLY : 0);
  if (mount(nullptr, path, nullptr, flags, nullptr) < 0) {
    // Retry with noexec kept (it may be locked).
    if (mount(nullptr, path, nullptr, flags | MS_NOEXEC, nullptr) < 0) return errno;
  }
  return 0;
}

// A read-only overlayfs over a host directory (see MountOp::overlay_*): the jail's view of it has inodes
// of its own. Two lower layers, since an overlay without an upper layer needs two; the second is empty.
//
// The kernel refuses (EINVAL, "overlayfs: failed to clone lowerpath") an overlay whose lower directory has
// mounts below it that are locked in the jail's user namespace, since the overlay would show what they
// cover. In a container that is /etc: the runtime bind-mounts /etc/hosts, /etc/resolv.conf and
// /etc/hostname. Then the source is bound read-only as it is (recursively, so the locked mounts stay
// over what they cover), and the jail's inotify watches on it see the host's activity on it: for the
// few read-only /etc files of the policies, what changes there is the host's business only.
int BindReadOnlyInstead(const MountOp& op) {
  if (mount(op.src, op.dst, nullptr, MS_BIND | MS_REC, nullptr) < 0) return errno;
  return RestrictMount(op.dst, true);
}

int MountOverlay(const MountOp& op, bool is_dir) {
  if (mkdir(op.overlay_empty, 0555) < 0 && errno != EEXIST) return errno;
  constexpr unsigned long kFlags = MS_RDONLY | MS_NOSUID | MS_NODEV;
  if (is_dir) {
    if (mount("overlay", op.dst, "overlay", kFlags, op.overlay_dir_options) < 0) {
      return errno == EINVAL ? BindReadOnlyInstead(op) : errno;
    }
    return 0;
  }
  // Files of one directory share a stage: an earlier file may have mounted it already (the file is then
  // visible in it; the stage is an empty directory until its overlay is mounted).
  struct stat st;
  if (stat(op.overlay_stage_file, &st) < 0) {
    if (int err = MkdirAll(op.overlay_stage, 0755); err != 0) return err;
    if (mount("overlay", op.overlay_stage, "overlay", kFlags, op.overlay_parent_options) < 0) {
      return errno == EINVAL ? BindReadOnlyInstead(op) : errno;
    }
  }
  if (mount(op.overlay_stage_file, op.dst, nullptr, MS_BIND, nullptr) < 0) return errno;
  return RestrictMount(op.dst, true);
}

int DoMountOp(const MountOp& op) {
  switch (op.kind) {
    case MountOp::Kind::kTmpfs: {
      if (int err = MkdirAll(op.dst, 0755); err != 0) return err;
      if (mount("tmpfs", op.dst, "tmpfs", MS_NOSUID | MS_NODEV, op.data) < 0) return errno;
      return 0;
    }
    case MountOp::Kind::kBind: {
      struct stat st;
      if (stat(op.src, &st) < 0) {
        if (op.optional && errno == ENOENT) return 0;
        return errno;
      }
      int err = S_ISDIR(st.st_mode) ? MkdirAll(op.dst, 0755) : Touch(op.dst);
      if (err != 0) return err;
      if (op.overlay_empty != nullptr && S_ISDIR(st.st_mode)) return MountOverlay(op, true);
      // A file only when src itself is one: a symlink's target would be resolved inside the stage.
      struct stat lst;
      if (op.overlay_empty != nullptr && lstat(op.src, &lst) == 0 && S_ISREG(lst.st_mode)) {
        return MountOverlay(op, false);
      }
      if (mount(op.src, op.dst, nullptr, MS_BIND | MS_REC, nullptr) < 0) return errno;
      return RestrictMount(op.dst, op.readonly, op.device);
    }
    case MountOp::Kind::kRebindReadOnly: {
      if (mount(op.dst, op.dst, nullptr, MS_BIND | MS_REC, nullptr) < 0) {
        if (op.optional && errno == ENOENT) return 0;
        return errno;
      }
      return RestrictMount(op.dst, true);
    }
    case MountOp::Kind::kProc: {
      if (int err = MkdirAll(op.dst, 0555); err != 0) return err;
      if (mount("proc", op.dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) < 0) return errno;
      return 0;
    }
    case MountOp::Kind::kDevpts: {
      if (int err = MkdirAll(op.dst, 0755); err != 0) return err;
      if (mount("devpts", op.dst, "devpts", MS_NOSUID | MS_NOEXEC, op.data) < 0) return errno;
      return 0;
    }
    case MountOp::Kind::kFile: {
      if (int err = MkdirParent(op.dst); err != 0) return err;
      int fd = open(op.dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, op.mode);
      if (fd < 0) return errno;
      size_t done = 0;
      while (done < op.data_len) {
        ssize_t n = write(fd, op.data + done, op.data_len - done);
        if (n < 0) {
          if (errno == EINTR) continue;
          int err = errno;
          close(fd);
          return err;
        }
        done += static_cast<size_t>(n);
      }
      if (fchmod(fd, op.mode) < 0) {
        int err = errno;
        close(fd);
        return err;
      }
      close(fd);
      return 0;
    }
    case MountOp::Kind::kSymlink: {
      if (int err = MkdirParent(op.dst); err != 0) return err;
      if (symlink(op.src, op.dst) < 0) return errno;
      return 0;
    }
  }
  return EINVAL;
}

int BringUpLoopback() {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  ifreq ifr{};
  memcpy(ifr.ifr_name, "lo", 3);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
    int err = errno;
    close(s);
    return err;
  }
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) {
    int err = errno;
    close(s);
    return err;
  }
  close(s);
  return 0;
}

int DropBoundingSet() {
  for (int cap = 0; cap < 64; ++cap) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
      if (errno == EINVAL) break;  // past CAP_LAST_CAP
      return errno;
    }
  }
  return 0;
}

int ClearCapabilities() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capset, &hdr, data) < 0) return errno;
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL) return errno;
  return 0;
}

// Sends `fd` over the socket `sock` (SCM_RIGHTS), with one byte of data. Stack memory only.
int SendFd(int sock, int fd) noexcept {
  FdMessage m;
  cmsghdr* cmsg = CMSG_FIRSTHDR(&m.msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  ssize_t n;
  do {
    n = sendmsg(sock, &m.msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == 1 ? 0 : (n < 0 ? errno : EPIPE);
}

// ---- RunJailChild's steps, in order. Each fails by Fail() (a ChildError and _exit), so none returns an error.

// Moves the pipes out of the way of fd 3 (init's report fd): *report_fd and *notify_fd get the copies (-1
// when the spec has none), g_err_fd the error pipe's.
void ArrangeFdsInChild(const ChildSpec& spec, int* report_fd, int* notify_fd) noexcept {
  g_err_fd = fcntl(spec.err_fd, F_DUPFD_CLOEXEC, 10);
  if (g_err_fd < 0) {
    g_err_fd = spec.err_fd;
    Fail(ChildStep::kFds, errno);
  }
  if (spec.report_fd >= 0) {
    *report_fd = fcntl(spec.report_fd, F_DUPFD_CLOEXEC, 10);
    if (*report_fd < 0) Fail(ChildStep::kFds, errno);
  }
  if (spec.notify_fd >= 0) {
    *notify_fd = fcntl(spec.notify_fd, F_DUPFD_CLOEXEC, 10);
    if (*notify_fd < 0) Fail(ChildStep::kFds, errno);
  }
}

// Tells the parent we wait for our id maps, and waits until it has written them (1) or given up.
void WaitForIdMapsInChild(const ChildSpec& spec) noexcept {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) Fail(ChildStep::kSync, errno);
  char byte = 1;
  ssize_t n;
  do {
    n = write(spec.ready_fd, &byte, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) Fail(ChildStep::kSync, n < 0 ? errno : EPIPE);
  do {
    n = read(spec.sync_fd, &byte, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1) Fail(ChildStep::kSync, n < 0 ? errno : EPIPE);
  if (byte != 1) Fail(ChildStep::kSync, EPERM);  // the parent could not map our ids
}

// Joins the v1 session cgroups first, by moving ourselves ("0"): that path skips the kernel's global
// threadgroup lock and its RCU grace period. Still host root here, so the tasks files are writable.
void JoinCgroupsInChild(const ChildSpec& spec) noexcept {
  // (A fork-style child's list comes from the helper after the clone: it ends at a nullptr, see ForkHandoff.)
  for (size_t i = 0; i < spec.num_cgroup_tasks_files && spec.cgroup_tasks_files[i] != nullptr; ++i) {
    int fd = open(spec.cgroup_tasks_files[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0) Fail(ChildStep::kCgroupJoin, errno, static_cast<int>(i));
    if (write(fd, "0", 1) != 1) Fail(ChildStep::kCgroupJoin, errno, static_cast<int>(i));
    close(fd);
  }
}

// Inside root for the setup, a session of our own, the cgroup namespace, loopback up.
void SetupNamespacesInChild(const ChildSpec& spec) noexcept {
  if (spec.id_range) {
    // Become inside-root (mapped to the range's base) so that files we create have a mapped owner.
    if (syscall(SYS_setresgid, 0, 0, 0) < 0) Fail(ChildStep::kSetIdsRoot, errno);
    if (syscall(SYS_setresuid, 0, 0, 0) < 0) Fail(ChildStep::kSetIdsRoot, errno);
    if (syscall(SYS_setgroups, 0, nullptr) < 0) Fail(ChildStep::kSetIdsRoot, errno);
  }
  if (setsid() < 0) Fail(ChildStep::kSetsid, errno);
  if (spec.new_cgroup_ns && unshare(CLONE_NEWCGROUP) < 0) Fail(ChildStep::kCgroupNs, errno);
  if (spec.loopback_up) {
    if (int err = BringUpLoopback(); err != 0) Fail(ChildStep::kLoopback, err);
  }
}

// The root: a tmpfs base at /tmp (pivoted to, so the host root stays reachable at /oldroot while binds are
// made), and the jail's root as a second tmpfs at /newroot with the mount plan applied; then the hostname,
// the root read-only, pivot_root into it (dropping the host's tree) and chdir to the workdir.
void PrepareRootInChild(const ChildSpec& spec) noexcept {
  if (mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) Fail(ChildStep::kMountPrivate, errno);
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755") < 0) {
    Fail(ChildStep::kBaseTmpfs, errno);
  }
  if (mkdir("/tmp/newroot", 0755) < 0 || mkdir("/tmp/oldroot", 0755) < 0) Fail(ChildStep::kBaseTmpfs, errno);
  if (syscall(SYS_pivot_root, "/tmp", "/tmp/oldroot") < 0) Fail(ChildStep::kPivotBase, errno);
  if (chdir("/") < 0) Fail(ChildStep::kPivotBase, errno);
  if (mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, spec.newroot_tmpfs_options) < 0) {
    Fail(ChildStep::kNewRootTmpfs, errno);
  }

  for (size_t i = 0; i < spec.num_ops; ++i) {
    if (int err = DoMountOp(spec.ops[i]); err != 0) Fail(ChildStep::kMountOp, err, static_cast<int>(i));
  }

  if (spec.set_hostname && sethostname(spec.hostname, spec.hostname_len) < 0) {
    Fail(ChildStep::kHostname, errno);
  }
  if (mount(nullptr, "/newroot", nullptr, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) <
      0) {
    Fail(ChildStep::kRootReadOnly, errno);
  }
  // pivot_root(".", ".") stacks the old root on top of the new one; detaching it drops the host's tree.
  if (chdir("/newroot") < 0) Fail(ChildStep::kPivotRoot, errno);
  if (syscall(SYS_pivot_root, ".", ".") < 0) Fail(ChildStep::kPivotRoot, errno);
  if (umount2(".", MNT_DETACH) < 0) Fail(ChildStep::kPivotRoot, errno);
  if (chdir("/") < 0) Fail(ChildStep::kPivotRoot, errno);
  if (chdir(spec.workdir) < 0) Fail(ChildStep::kWorkdir, errno);
}

void SetRlimitsInChild(const ChildSpec& spec) noexcept {
  for (size_t i = 0; i < spec.num_rlimits; ++i) {
    if (setrlimit(static_cast<__rlimit_resource>(spec.rlimits[i].resource), &spec.rlimits[i].value) < 0) {
      Fail(ChildStep::kRlimit, errno, static_cast<int>(i));
    }
  }
}

// No capabilities, the workload's uid/gid, no new privileges.
void DropPrivilegesInChild(const ChildSpec& spec) noexcept {
  // Capabilities: the bounding set needs CAP_SETPCAP, so it goes before the id change.
  if (int err = DropBoundingSet(); err != 0) Fail(ChildStep::kDropCaps, err);
  if (prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED, 0, 0, 0) < 0) {
    Fail(ChildStep::kDropCaps, errno);
  }
  if (spec.id_range && syscall(SYS_setgroups, 0, nullptr) < 0) Fail(ChildStep::kSetIds, errno);
  if (syscall(SYS_setresgid, spec.gid, spec.gid, spec.gid) < 0) Fail(ChildStep::kSetIds, errno);
  if (syscall(SYS_setresuid, spec.uid, spec.uid, spec.uid) < 0) Fail(ChildStep::kSetIds, errno);
  if (int err = ClearCapabilities(); err != 0) Fail(ChildStep::kDropCaps, err);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) Fail(ChildStep::kNoNewPrivs, errno);
  // Credential changes clear the parent-death signal: set it again.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) < 0) Fail(ChildStep::kNoNewPrivs, errno);
}

// Every fd but stdio and init's report channel is closed at exec; the report channel becomes fd 3.
void PrepareExecFdsInChild(int report_fd, int notify_fd) noexcept {
  if (syscall(SYS_close_range, 3u, ~0u, CLOSE_RANGE_CLOEXEC) < 0) {
    for (int fd = 3; fd < 65536; ++fd) {
      if (fd != g_err_fd && fd != report_fd && fd != notify_fd) close(fd);
    }
    if (fcntl(g_err_fd, F_SETFD, FD_CLOEXEC) < 0) Fail(ChildStep::kFds, errno);
    if (notify_fd >= 0 && fcntl(notify_fd, F_SETFD, FD_CLOEXEC) < 0) Fail(ChildStep::kFds, errno);
  }
  if (report_fd >= 0 && dup2(report_fd, 3) < 0) Fail(ChildStep::kFds, errno);
}

// In-process PID 1 (no exec closes anything): of the agent's fds only stdio stays, the report channel as fd 3
// (where sandbox-init has it, close-on-exec for the workload), and until the seccomp step the error pipe (4)
// and the listener's socket (5). A fork-style copy of the agent holds every fd the agent had: none of them
// may outlive this step.
void PrepareInProcessFdsInChild(int report_fd, int* notify_fd) noexcept {
  if (report_fd < 0 || dup3(report_fd, 3, O_CLOEXEC) < 0) Fail(ChildStep::kFds, report_fd < 0 ? EBADF : errno);
  if (dup3(g_err_fd, 4, O_CLOEXEC) < 0) Fail(ChildStep::kFds, errno);
  g_err_fd = 4;
  int first_closed = 5;
  if (*notify_fd >= 0) {
    if (dup3(*notify_fd, 5, O_CLOEXEC) < 0) Fail(ChildStep::kFds, errno);
    *notify_fd = 5;
    first_closed = 6;
  }
  if (syscall(SYS_close_range, static_cast<unsigned>(first_closed), ~0u, 0u) < 0) {
    for (int fd = first_closed; fd < 65536; ++fd) close(fd);
  }
}

// The parent may have blocked some signals for a signalfd, and set handlers: the jail starts clean.
void ResetSignalsInChild() noexcept {
  sigset_t none;
  sigemptyset(&none);
  if (sigprocmask(SIG_SETMASK, &none, nullptr) < 0) Fail(ChildStep::kExec, errno);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    struct sigaction sa {};
    sa.sa_handler = SIG_DFL;
    sigaction(sig, &sa, nullptr);  // fails harmlessly for the realtime signals glibc reserves
  }
}

// Loads the seccomp filter, the last step before exec; with user notification its listener goes to the agent.
void LoadSeccompInChild(const ChildSpec& spec, int notify_fd) noexcept {
  if (spec.seccomp != nullptr && notify_fd >= 0) {
    // seccomp(2), not prctl: only it takes flags. The listener (CLOEXEC) goes to the agent and is closed
    // here before exec. NOTE: from here to execve only the syscalls IsJailChildSyscall names run; their
    // denials are never notifications (nothing could answer: the agent's thread sleeps in vfork).
    const long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                                  spec.seccomp);
    if (listener < 0) Fail(ChildStep::kSeccomp, errno);
    if (int err = SendFd(notify_fd, static_cast<int>(listener)); err != 0) {
      Fail(ChildStep::kSeccompListener, err);
    }
    close(static_cast<int>(listener));
    close(notify_fd);
  } else if (spec.seccomp != nullptr && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, spec.seccomp, 0, 0) < 0) {
    Fail(ChildStep::kSeccomp, errno);
  }
}

}  // namespace

void RunJailChild(const ChildSpec& spec) {
  int report_fd = -1;
  int notify_fd = -1;
  ArrangeFdsInChild(spec, &report_fd, &notify_fd);
  WaitForIdMapsInChild(spec);
  JoinCgroupsInChild(spec);
  SetupNamespacesInChild(spec);
  PrepareRootInChild(spec);
  SetRlimitsInChild(spec);
  DropPrivilegesInChild(spec);
  if (spec.in_process_init) {
    PrepareInProcessFdsInChild(report_fd, &notify_fd);
    ResetSignalsInChild();
    LoadSeccompInChild(spec, notify_fd);
    // EOF on the error pipe tells the agent the jail is up, as the exec of sandbox-init would: it then starts
    // the seccomp supervisor, so a denial PID 1 or the workload meets from here on is answered. (Between the
    // filter and this close only IsJailChildSyscall's calls run.) The workload's own exec failure goes into
    // the InitReport, as with sandbox-init.
    close(g_err_fd);
    g_err_fd = -1;
    for (const ChildSpec::Region& r : spec.scrub) {
      if (r.start != nullptr) memset(r.start, 0, r.len);
    }
    sbx::init::OneShotCommand command;
    command.argv = spec.argv;
    command.envp = spec.envp;
    command.report_fd = 3;
    command.name = "sandbox-agent";
    _exit(sbx::init::RunOneShotInit(command));
  }
  PrepareExecFdsInChild(report_fd, notify_fd);
  ResetSignalsInChild();
  LoadSeccompInChild(spec, notify_fd);
  execve(spec.init_path, spec.argv, spec.envp);
  Fail(ChildStep::kExec, errno);
}

const char* ChildStepName(int32_t step) {
  switch (static_cast<ChildStep>(step)) {
    case ChildStep::kSync: return "waiting for the parent";
    case ChildStep::kFds: return "arranging file descriptors";
    case ChildStep::kCgroupJoin: return "joining the session cgroup";
    case ChildStep::kSetIdsRoot: return "switching to the jail's root id";
    case ChildStep::kSetsid: return "setsid";
    case ChildStep::kCgroupNs: return "unshare(CLONE_NEWCGROUP)";
    case ChildStep::kLoopback: return "bringing up loopback";
    case ChildStep::kMountPrivate: return "making mounts private";
    case ChildStep::kBaseTmpfs: return "mounting the base tmpfs";
    case ChildStep::kPivotBase: return "pivot_root to the base tmpfs";
    case ChildStep::kNewRootTmpfs: return "mounting the root tmpfs";
    case ChildStep::kMountOp: return "mount";
    case ChildStep::kHostname: return "sethostname";
    case ChildStep::kRootReadOnly: return "making the root read-only";
    case ChildStep::kPivotRoot: return "pivot_root to the jail root";
    case ChildStep::kWorkdir: return "chdir to the workdir";
    case ChildStep::kRlimit: return "setrlimit";
    case ChildStep::kDropCaps: return "dropping capabilities";
    case ChildStep::kSetIds: return "switching to the workload's uid/gid";
    case ChildStep::kNoNewPrivs: return "prctl(PR_SET_NO_NEW_PRIVS)";
    case ChildStep::kSeccomp: return "loading the seccomp filter";
    case ChildStep::kSeccompListener: return "sending the seccomp listener to the agent";
    case ChildStep::kExec: return "executing sandbox-init";
  }
  return "unknown step";
}

}  // namespace sbx::sandbox::internal
