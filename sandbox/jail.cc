#include "sandbox/jail.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <latch>
#include <thread>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "wire/init_report.h"
#include "sandbox/jail_child.h"
#include "sandbox/jail_clone.h"
#include "sandbox/mount_plan.h"
#include "sandbox/oom_score.h"
#include "sandbox/outcome.h"
#include "sandbox/seccomp_program.h"
#include "base/status.h"

namespace sbx::sandbox {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kCancelGrace = std::chrono::seconds(5);
constexpr int kSetupTimeoutMs = 30'000;

absl::Status WriteProcFile(pid_t pid, const char* file, std::string_view contents) {
  const std::string path = absl::StrCat("/proc/", pid, "/", file);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  ssize_t n = write(fd.get(), contents.data(), contents.size());
  if (n != static_cast<ssize_t>(contents.size())) {
    return ErrnoToStatus(n < 0 ? errno : EIO, absl::StrCat("write ", path, " <- '", ToAbsl(contents), "'"));
  }
  return absl::OkStatus();
}

int PidfdSendSignal(int pidfd, int sig) { return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0)); }

std::vector<std::string> BuildEnv(const PolicySpec& spec, char** host_environ) {
  std::vector<std::string> env;
  if (host_environ != nullptr) {
    for (const std::string& name : spec.env_passthrough) {
      for (char** e = host_environ; *e != nullptr; ++e) {
        if (strncmp(*e, name.c_str(), name.size()) == 0 && (*e)[name.size()] == '=') {
          env.emplace_back(*e);
          break;
        }
      }
    }
  }
  std::vector<EnvVar> vars = spec.env;
  if (spec.network == NetworkMode::kEgress) {
    // Every HTTP client of note reads one of these; the proxy listens on the jail's loopback.
    const std::string proxy = "http://127.0.0.1:" + std::to_string(spec.egress_proxy_port);
    const std::pair<const char*, std::string> proxy_env[] = {
        {"HTTP_PROXY", proxy}, {"HTTPS_PROXY", proxy}, {"http_proxy", proxy}, {"https_proxy", proxy},
        // The jail's own loopback services are reached directly.
        {"NO_PROXY", "localhost,127.0.0.1,::1"}, {"no_proxy", "localhost,127.0.0.1,::1"}};
    for (const auto& [name, value] : proxy_env) {
      if (std::none_of(vars.begin(), vars.end(), [&](const EnvVar& v) { return v.name == name; })) {
        vars.push_back(EnvVar{name, value});
      }
    }
  }
  for (const EnvVar& var : vars) {
    const std::string prefix = var.name + "=";
    std::erase_if(env, [&](const std::string& e) { return e.rfind(prefix, 0) == 0; });
    env.push_back(prefix + var.value);
  }
  return env;
}

// The one fd the jail child sent over `sock` (SCM_RIGHTS), without waiting.
absl::StatusOr<UniqueFd> ReceiveFd(int sock) {
  internal::FdMessage m;
  ssize_t n;
  do {
    n = recvmsg(sock, &m.msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return ErrnoToStatus(errno, "receiving the seccomp listener from the jail child");
  cmsghdr* cmsg = CMSG_FIRSTHDR(&m.msg);
  if (n != 1 || cmsg == nullptr || cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS ||
      cmsg->cmsg_len != CMSG_LEN(sizeof(int))) {
    return absl::InternalError("the jail child sent no seccomp listener");
  }
  int fd;
  memcpy(&fd, CMSG_DATA(cmsg), sizeof(fd));
  return UniqueFd(fd);
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// ---- Start's steps (the parent's side; the child's are RunJailChild's, in jail_child.cc)

absl::Status CheckStartOptions(const PolicySpec& spec, const JailOptions& options) {
  if (options.argv.empty() && !options.serve) return absl::InvalidArgumentError("no command given");
  if (!options.argv.empty() && options.serve) {
    return absl::InvalidArgumentError("a serving jail takes its commands over the init protocol, not argv");
  }
  if (spec.network == NetworkMode::kEgress && !options.serve) {
    return absl::UnimplementedError(
        "network.mode EGRESS: the egress proxy runs in the agent's daemon (sandbox-agent serve), not in `run`");
  }
  return absl::OkStatus();
}

// sandbox-init's argv: "--serve", or "--" and the workload.
std::vector<std::string> InitArgs(const JailOptions& options) {
  std::vector<std::string> init_args = {"sandbox-init"};
  if (options.serve) {
    init_args.push_back("--serve");
  } else {
    init_args.push_back("--");
    init_args.insert(init_args.end(), options.argv.begin(), options.argv.end());
  }
  return init_args;
}

CgroupLimits CgroupLimitsFor(const PolicySpec& spec, const JailOptions& options) {
  CgroupLimits cgroup_limits;
  cgroup_limits.memory_max_bytes = spec.limits.memory_max_bytes;
  cgroup_limits.pids_max = spec.limits.pids_max;
  cgroup_limits.cpu_millicores = spec.limits.cpu_millicores;
  cgroup_limits.cpu_background = options.cpu_background;
  return cgroup_limits;
}

uint64_t CloneFlagsFor(const PolicySpec& spec) {
  uint64_t flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS;
  if (spec.network != NetworkMode::kHost) flags |= CLONE_NEWNET;
  if (spec.new_ipc_ns) flags |= CLONE_NEWIPC;
  if (spec.new_uts_ns) flags |= CLONE_NEWUTS;
  return flags;
}

// The in-process PID 1 (JailOptions::in_process_init) on every architecture: it needs only the fork-style
// clone, which every kernel has. Serving jails always exec sandbox-init (the init protocol lives there).
bool InProcessInit(const JailOptions& options) { return options.in_process_init && !options.serve; }

// The channels between the agent and the jail child (see internal::ChildSpec).
struct ChildPipes {
  UniqueFd ready_read, ready_write;  // the child says it waits for its id maps
  UniqueFd sync_read, sync_write;    // the helper releases it
  UniqueFd err_read, err_write;      // a ChildError, or EOF at exec
  UniqueFd clone_done;               // eventfd: clone returned in the launcher
  // One-shot: init writes one InitReport on a pipe. Serving: a stream socket carries the init protocol.
  UniqueFd report_read, report_write;
  // With user notification the child sends the filter's listener over this socketpair (SCM_RIGHTS).
  UniqueFd notify_read, notify_write;
  std::optional<internal::SharedForkHandoff> handoff;  // the in-process PID 1's (a fork-style child)
};

// With user notification (policy audit_denials): the table the supervisor answers denials from, and the
// socketpair for the listener. Nothing without it.
absl::Status PrepareSeccompNotifyFromParent(const SeccompPolicy& seccomp, std::optional<SeccompDenyTable>* deny_table,
                                            ChildPipes* pipes) {
  if (!SeccompUsesUserNotif(seccomp)) return absl::OkStatus();
  ASSIGN_OR_RETURN(*deny_table, SeccompDenyTable::Build(seccomp));
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0) return ErrnoToStatus(errno, "socketpair");
  pipes->notify_read.Reset(sv[0]);
  pipes->notify_write.Reset(sv[1]);
  return absl::OkStatus();
}

absl::Status MakePipeFromParent(UniqueFd* read_end, UniqueFd* write_end) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return ErrnoToStatus(errno, "pipe2");
  read_end->Reset(fds[0]);
  write_end->Reset(fds[1]);
  return absl::OkStatus();
}

absl::Status MakeChildPipesFromParent(bool serve, bool in_process_init, ChildPipes* p) {
  if (in_process_init && p->handoff.emplace().get() == nullptr) return ErrnoToStatus(errno, "mmap (child handoff)");
  RETURN_IF_ERROR(MakePipeFromParent(&p->ready_read, &p->ready_write));
  RETURN_IF_ERROR(MakePipeFromParent(&p->sync_read, &p->sync_write));
  RETURN_IF_ERROR(MakePipeFromParent(&p->err_read, &p->err_write));
  p->clone_done.Reset(eventfd(0, EFD_CLOEXEC));
  if (!p->clone_done) return ErrnoToStatus(errno, "eventfd");
  if (!serve) return MakePipeFromParent(&p->report_read, &p->report_write);
  int report_pipe[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, report_pipe) < 0) return ErrnoToStatus(errno, "socketpair");
  p->report_read.Reset(report_pipe[0]);
  p->report_write.Reset(report_pipe[1]);
  return absl::OkStatus();
}

// The child's ends, closed in the parent once the child has its own (after clone).
void CloseChildEndsFromParent(ChildPipes* p) {
  p->err_write.Reset();
  p->ready_write.Reset();
  p->sync_read.Reset();
  p->report_write.Reset();
  p->notify_write.Reset();
}

// sandbox-init's argv and environment, and the pointer arrays the child passes to execve (into the strings
// here: fill in place, never move).
struct ExecArgs {
  std::vector<std::string> env, init_args;
  std::vector<char*> envp, argv;
};

// With an in-process PID 1 the child runs the workload's argv itself (it looks argv[0] up on the jail's PATH).
void FillExecArgs(const PolicySpec& spec, const JailOptions& options, bool in_process_init, ExecArgs* out) {
  out->env = BuildEnv(spec, options.host_environ);
  out->envp = CStrings(out->env);
  out->init_args = in_process_init ? options.argv : InitArgs(options);
  out->argv = CStrings(out->init_args);
}

// Everything the child reads, as pointers into the parent's precomputed data. The seccomp program and (v1)
// the cgroup tasks files are filled in by the setup helper before it releases the child.
internal::ChildSpec ChildSpecFor(const PolicySpec& spec, const ChildPipes& pipes, bool id_range, const MountPlan& plan,
                                 const internal::ChildRlimit* rlimits, size_t num_rlimits, const sock_fprog* prog,
                                 char* const* argv, char* const* envp) {
  internal::ChildSpec child;
  child.cgroup_tasks_files = nullptr;
  child.num_cgroup_tasks_files = 0;
  child.ready_fd = pipes.ready_write.get();
  child.sync_fd = pipes.sync_read.get();
  child.err_fd = pipes.err_write.get();
  child.report_fd = pipes.report_write.get();
  child.id_range = id_range;
  child.new_cgroup_ns = spec.new_cgroup_ns;
  child.loopback_up = spec.network != NetworkMode::kHost;
  child.ops = plan.ops().data();
  child.num_ops = plan.ops().size();
  child.newroot_tmpfs_options = plan.newroot_tmpfs_options();
  child.hostname = spec.hostname.c_str();
  child.hostname_len = spec.hostname.size();
  child.set_hostname = spec.new_uts_ns;
  child.workdir = spec.workdir.c_str();
  child.rlimits = rlimits;
  child.num_rlimits = num_rlimits;
  child.uid = spec.uid;
  child.gid = spec.gid;
  child.seccomp = prog;  // filled in by the helper thread before it releases the child
  child.notify_fd = pipes.notify_write.get();
  child.init_path = kInitPathInJail;
  child.argv = argv;
  child.envp = envp;
  if (pipes.handoff) internal::UseForkHandoff(pipes.handoff->get(), &child);
  return child;
}

// Start's helper thread (see Jail::Start): the child cannot write its own id maps, and with CLONE_VFORK the
// launching thread sleeps until the child execs. While the launcher clones, the helper does the work the
// child needs only after its release (the v1 session cgroup, the seccomp program); then it writes the
// child's id maps when the child says it is ready, releases it, and enforces the setup timeout.
struct SetupHelper {
  const PolicySpec& spec;
  const JailOptions& options;
  const CgroupLimits& cgroup_limits;
  const IdRange& lease;
  std::optional<Cgroup>& cgroup;  // the jail's; made here on v1
  internal::ChildSpec& child;
  sock_fprog& prog;
  bool v1_cgroup = false;
  bool want_listener = false;  // the compiled program must have a user-notification listener
  int ready_read = -1;
  int clone_done = -1;
  UniqueFd sync_write;
  // Not null: the child is a fork-style copy and reads the helper's work from here (ForkHandoff), not `child`.
  internal::ForkHandoff* handoff = nullptr;

  // Written by the kernel or the clone(2) fallback (see CloneWithPidfd), read here atomically.
  int pidfd = -1;
  pid_t child_pid = 0;       // CLONE_PARENT_SETTID: written by the kernel before the child runs
  int move_into_cgroup = 0;  // set by the clone(2) fallback on v2, before child_pid

  // v1: the child joins its cgroups itself (see Cgroup::V1SelfJoinFiles).
  std::vector<std::string> tasks_files{};
  std::vector<const char*> tasks_file_ptrs{};
  std::shared_ptr<const SeccompProgram> seccomp{};
  // The helper's failure: the child is not released.
  absl::Status status{};
  std::latch prework_done{1};  // the cgroup and seccomp work is over (for the clone(2) fallback)
  Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(kSetupTimeoutMs);

  int RemainingMs() const {
    return static_cast<int>(std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count()));
  }

  void Run() {
    PreworkFromParent();
    prework_done.count_down();
    pollfd fds[2] = {{ready_read, POLLIN, 0}, {clone_done, POLLIN, 0}};
    int ready;
    do {
      ready = poll(fds, 2, RemainingMs());
    } while (ready < 0 && errno == EINTR);
    if (ready > 0 && (fds[0].revents & POLLIN) != 0) {
      char byte;
      if (read(ready_read, &byte, 1) == 1) MapIdsAndReleaseFromParent();
      sync_write.Reset();
      do {
        ready = poll(&fds[1], 1, RemainingMs());
      } while (ready < 0 && errno == EINTR);
    }
    sync_write.Reset();
    if (ready == 0) {
      // Setup hangs (a mount that never returns...): the child dies, and clone returns in the launcher.
      if (status.ok()) status = absl::DeadlineExceededError("jail setup did not finish within 30 s");
      const int fd = __atomic_load_n(&pidfd, __ATOMIC_ACQUIRE);
      if (fd >= 0) PidfdSendSignal(fd, SIGKILL);
    }
  }

  // The v1 session cgroup (the child joins it right after its release) and the seccomp program (loaded
  // last, before exec).
  void PreworkFromParent() {
    if (v1_cgroup) {
      absl::StatusOr<Cgroup> created = Cgroup::Create(*options.cgroups, options.name, cgroup_limits);
      if (created.ok()) {
        cgroup.emplace(*std::move(created));
        tasks_files = cgroup->V1SelfJoinFiles();
        for (const std::string& f : tasks_files) tasks_file_ptrs.push_back(f.c_str());
        if (handoff == nullptr) child.cgroup_tasks_files = tasks_file_ptrs.data();
        if (handoff == nullptr) child.num_cgroup_tasks_files = tasks_file_ptrs.size();
      } else {
        status = created.status();
      }
    }
    if (status.ok()) {
      absl::StatusOr<std::shared_ptr<const SeccompProgram>> compiled = CompileSeccompCached(spec.seccomp);
      if (compiled.ok() && (*compiled)->user_notif != want_listener) {
        compiled = absl::InternalError("seccomp: the compiled program's listener does not match the policy");
      }
      if (compiled.ok()) {
        seccomp = *std::move(compiled);
        prog.len = static_cast<unsigned short>(seccomp->instructions.size());
        prog.filter = const_cast<sock_filter*>(seccomp->instructions.data());
      } else {
        status = compiled.status();
      }
    }
    if (status.ok() && handoff != nullptr &&
        !internal::FillForkHandoff(handoff, &seccomp->instructions, v1_cgroup ? &tasks_files : nullptr)) {
      status = absl::InternalError("jail setup: the seccomp program or cgroup paths do not fit the handoff");
    }
  }

  // The child waits for its id maps: write them (and its OOM score), then release it (1) or not (0).
  void MapIdsAndReleaseFromParent() {
    pid_t pid = __atomic_load_n(&child_pid, __ATOMIC_ACQUIRE);
    while (pid == 0 && RemainingMs() > 0) {  // the clone(2) fallback stores it after clone returns
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      pid = __atomic_load_n(&child_pid, __ATOMIC_ACQUIRE);
    }
    if (pid == 0) status = absl::DeadlineExceededError("the jail child's pid never arrived");
    // The clone(2) fallback could not clone it into its cgroup (v2): it joins before it goes on.
    if (pid != 0 && __atomic_load_n(&move_into_cgroup, __ATOMIC_RELAXED) != 0) status = cgroup->AddProcess(pid);
    if (status.ok() && lease.rootless()) status = WriteProcFile(pid, "setgroups", "deny");
    if (status.ok()) status = WriteProcFile(pid, "uid_map", lease.UidMap(spec.uid));
    if (status.ok()) status = WriteProcFile(pid, "gid_map", lease.GidMap(spec.gid));
    // The OOM killer's first choice, set from outside before init runs: init and the workload inherit it,
    // and without CAP_SYS_RESOURCE (never theirs) they cannot lower it below what a privileged writer set.
    // NOTE: with CLONE_VM | CLONE_VFORK the child still shares the agent's memory, but the kernel keeps a
    // vfork child's oom_score_adj its own: the agent's stays as it was.
    if (status.ok()) status = WriteProcFile(pid, "oom_score_adj", std::to_string(kJailOomScoreAdj));
    const char go = status.ok() ? 1 : 0;
    if (write(sync_write.get(), &go, 1) != 1 && status.ok()) {
      status = ErrnoToStatus(errno, "releasing the jail child");
    }
  }
};

// Waits for EOF on the error pipe, which means execve(sandbox-init) succeeded. (After a CLONE_VFORK clone
// the child has already exec'd or exited; elsewhere this waits for it, bounded by the helper's timeout.)
// False when the pipe did not become readable in time.
bool WaitForExecFromParent(int err_read) {
  pollfd pfd{err_read, POLLIN, 0};
  int ready;
  do {
    ready = poll(&pfd, 1, kSetupTimeoutMs + 1000);
  } while (ready < 0 && errno == EINTR);
  return ready > 0;
}

// What the child reported on its error pipe (readable): OK at EOF, else the step that failed, named with
// the mount or cgroup file it was at. The helper's own failure (`helper_status`) comes first.
absl::Status ChildResultFromParent(int err_read, const absl::Status& helper_status, const MountPlan& plan,
                                   const std::vector<std::string>& tasks_files) {
  internal::ChildError error{};
  ssize_t n;
  do {
    n = read(err_read, &error, sizeof(error));
  } while (n < 0 && errno == EINTR);
  if (!helper_status.ok()) return helper_status;
  if (n == sizeof(error)) {
    std::string what = internal::ChildStepName(error.step);
    if (error.step == static_cast<int32_t>(internal::ChildStep::kMountOp)) {
      what = absl::StrCat(what, " (", plan.Describe(static_cast<size_t>(error.op_index)), ")");
    }
    if (error.step == static_cast<int32_t>(internal::ChildStep::kCgroupJoin) && error.op_index >= 0 &&
        static_cast<size_t>(error.op_index) < tasks_files.size()) {
      what = absl::StrCat(what, " (", tasks_files[error.op_index], ")");
    }
    return ErrnoToStatus(error.err, absl::StrCat("jail setup failed while ", what));
  }
  if (n != 0) return absl::InternalError("jail setup: truncated report from the child");
  return absl::OkStatus();
}

// What init said about the workload (one-shot jails); absent when init itself was killed.
std::optional<InitReport> ReadInitReport(int report_fd) {
  if (report_fd < 0) return std::nullopt;
  InitReport r{};
  fcntl(report_fd, F_SETFL, O_NONBLOCK);
  if (read(report_fd, &r, sizeof(r)) == sizeof(r)) return r;
  return std::nullopt;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Jail>> Jail::Start(const Policy& policy, const JailOptions& options) {
  const PolicySpec& spec = policy.spec();
  RETURN_IF_ERROR(CheckStartOptions(spec, options));
  std::unique_ptr<Jail> jail(new Jail());
  jail->started_ = Clock::now();
  jail->limits_ = spec.limits;
  jail->warnings_ = options.warnings;
  jail->pids_poll_interval_ = options.pids_poll_interval;

  // The seccomp program is compiled (or found in the cache) by the helper thread while the child builds its
  // mounts; the child reads `prog` only after the helper released it. What the clone needs now is whether
  // the program will have a listener.
  sock_fprog prog{};
  std::optional<SeccompDenyTable> deny_table;
  ChildPipes pipes;
  RETURN_IF_ERROR(PrepareSeccompNotifyFromParent(spec.seccomp, &deny_table, &pipes));
  ASSIGN_OR_RETURN(IdRange ids, IdRange::Acquire());
  ASSIGN_OR_RETURN(MountPlan plan, MountPlan::Build(policy, options.init_path, spec.uid, spec.gid));
  const bool in_process_init = InProcessInit(options);
  ExecArgs exec;
  FillExecArgs(spec, options, in_process_init, &exec);
  const internal::ChildRlimit rlimits[] = {
      {RLIMIT_NOFILE, {spec.limits.open_files_max, spec.limits.open_files_max}},
      {RLIMIT_FSIZE, {spec.limits.file_size_max_bytes, spec.limits.file_size_max_bytes}},
      {RLIMIT_CORE, {0, 0}},
  };

  // v2: the child is cloned into its cgroup, which must exist first (one directory, a few writes). v1: the
  // helper thread makes the directories while the clone runs, and the child joins them once released.
  const CgroupLimits cgroup_limits = CgroupLimitsFor(spec, options);
  const bool v1_cgroup = options.cgroups != nullptr && options.cgroups->version == CgroupVersion::kV1;
  if (options.cgroups != nullptr && !v1_cgroup) {
    ASSIGN_OR_RETURN(Cgroup cgroup, Cgroup::Create(*options.cgroups, options.name, cgroup_limits));
    jail->cgroup_.emplace(std::move(cgroup));
  }
  const int cgroup_fd = jail->cgroup_ ? jail->cgroup_->v2_dir_fd() : -1;
  RETURN_IF_ERROR(MakeChildPipesFromParent(options.serve, in_process_init, &pipes));
  internal::ChildSpec child = ChildSpecFor(spec, pipes, !ids.rootless(), plan, rlimits,
                                           sizeof(rlimits) / sizeof(rlimits[0]), &prog, exec.argv.data(), exec.envp.data());

  SetupHelper helper{spec, options, cgroup_limits, ids, jail->cgroup_, child, prog, v1_cgroup, deny_table.has_value(),
                     pipes.ready_read.get(), pipes.clone_done.get(), std::move(pipes.sync_write),
                     pipes.handoff ? pipes.handoff->get() : nullptr};
  std::jthread mapper([&helper] { helper.Run(); });
  const pid_t pid = internal::StartChild(CloneFlagsFor(spec), &helper.pidfd, &helper.child_pid, cgroup_fd,
                               &helper.move_into_cgroup, child, [&] { helper.prework_done.wait(); }, in_process_init);
  const int clone_errno = errno;
  if (pid > 0) {
    jail->pid_ = pid;
    jail->pidfd_.Reset(helper.pidfd);
  }
  CloseChildEndsFromParent(&pipes);
  const bool err_readable = pid > 0 ? WaitForExecFromParent(pipes.err_read.get()) : true;
  const uint64_t one = 1;
  if (write(pipes.clone_done.get(), &one, sizeof(one)) != sizeof(one)) {
    // Cannot happen for an eventfd below its maximum; the helper then ends at its timeout.
  }
  mapper.join();
  if (pid < 0) return ErrnoToStatus(clone_errno, "clone (new namespaces)");
  jail->ids_.emplace(std::move(ids));

  // From here on a failure returns, and ~Jail kills and reaps the child and removes the cgroup.
  if (!err_readable) {
    // Something else still holds the error pipe's write end (a child stuck in the kernel): do not block on it.
    return helper.status.ok() ? absl::DeadlineExceededError("jail setup did not finish within 30 s") : helper.status;
  }
  RETURN_IF_ERROR(ChildResultFromParent(pipes.err_read.get(), helper.status, plan, helper.tasks_files));
  if (deny_table) {
    // The child sent the listener before its exec, which has happened: it is in the socket now.
    ASSIGN_OR_RETURN(UniqueFd listener, ReceiveFd(pipes.notify_read.get()));
    ASSIGN_OR_RETURN(jail->seccomp_, SeccompSupervisor::Start(std::move(listener), std::move(*deny_table),
                                                              options.seccomp_audit));
  }
  if (options.serve) {
    jail->control_fd_ = std::move(pipes.report_read);
  } else {
    jail->report_fd_ = std::move(pipes.report_read);
  }
  return jail;
}

Jail::~Jail() {
  if (!reaped_ && pidfd_) {
    Kill();
    Reap(0);
  }
  if (cgroup_) (void)cgroup_->Remove();
}

absl::StatusOr<UniqueFd> Jail::ListenInNetns(uint16_t port) const {
  if (reaped_ || pid_ <= 0) return absl::FailedPreconditionError("the jail has ended");
  const std::string path = absl::StrCat("/proc/", pid_, "/ns/net");
  UniqueFd ns(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!ns) return ErrnoToStatus(errno, absl::StrCat("open ", path));
  // setns(CLONE_NEWNET) changes only the calling thread: a short-lived thread makes the socket, which
  // stays in the jail's namespace after the thread ends.
  absl::StatusOr<UniqueFd> result = absl::InternalError("listen in the jail: no result");
  std::thread([&] {
    if (setns(ns.get(), CLONE_NEWNET) != 0) {
      result = ErrnoToStatus(errno, "setns into the jail's network namespace");
      return;
    }
    UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) {
      result = ErrnoToStatus(errno, "socket");
      return;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd.get(), 128) != 0) {
      result = ErrnoToStatus(errno, absl::StrCat("listen on 127.0.0.1:", port, " in the jail"));
      return;
    }
    result = std::move(fd);
  }).join();
  return result;
}

absl::Status Jail::SetCpuBackground(bool background) const {
  return cgroup_ ? cgroup_->SetCpuBackground(background) : absl::OkStatus();
}

void Jail::Kill() {
  if (reaped_) return;  // PID 1 is reaped: its pid namespace is empty already
  if (pidfd_ && PidfdSendSignal(pidfd_.get(), SIGKILL) == 0) return;
  if (cgroup_) (void)cgroup_->KillAll();
}

void Jail::Reap(int options) {
  if (reaped_) return;
  siginfo_t info{};
  rusage ru{};
  constexpr int kPidfd = 3;  // P_PIDFD
  long rc;
  do {
    rc = syscall(SYS_waitid, kPidfd, pidfd_.get(), &info, WEXITED | options, &ru);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0 || info.si_pid == 0) return;
  reaped_ = true;
  wait_status_code_ = info.si_code;
  wait_status_ = info.si_status;
  rusage_user_us_ = ru.ru_utime.tv_sec * 1'000'000ull + ru.ru_utime.tv_usec;
  rusage_sys_us_ = ru.ru_stime.tv_sec * 1'000'000ull + ru.ru_stime.tv_usec;
  rusage_maxrss_bytes_ = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

Jail::WaitEvents Jail::WatchUntilEnd(int cancel_fd) {
  const Clock::time_point deadline = started_ + std::chrono::milliseconds(limits_.wall_time_limit_ms);
  Clock::time_point kill_at = Clock::time_point::max();  // max: not armed
  WaitEvents ev;
  const bool poll_pids = cgroup_.has_value() && limits_.kill_on_pids_limit;

  while (!reaped_) {
    const Clock::time_point now = Clock::now();
    if (!ev.timed_out && !ev.canceled && now >= deadline) {
      ev.timed_out = true;
      Kill();
    }
    if (now >= kill_at) {
      Kill();
      kill_at = Clock::time_point::max();
    }
    if (poll_pids && !ev.pids_killed && !ev.timed_out) {
      absl::StatusOr<uint64_t> hits = cgroup_->ReadPidsMaxEvents();
      if (hits.ok() && *hits > 0) {
        ev.pids_killed = true;
        Kill();
      }
    }
    Clock::time_point wake = ev.timed_out ? now + std::chrono::seconds(1) : deadline;
    wake = std::min(wake, kill_at);
    if (poll_pids && !ev.pids_killed) wake = std::min(wake, now + pids_poll_interval_);
    const auto timeout_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count() + 1;

    pollfd fds[2] = {{pidfd_.get(), POLLIN, 0}, {cancel_fd, POLLIN, 0}};
    const int nfds = cancel_fd >= 0 ? 2 : 1;
    int ready = poll(fds, nfds, static_cast<int>(std::max<int64_t>(timeout_ms, 0)));
    if (ready < 0 && errno != EINTR) break;
    if (ready > 0 && nfds == 2 && (fds[1].revents & POLLIN)) OnCancelSignal(cancel_fd, &ev, &kill_at);
    if (ready > 0 && (fds[0].revents & POLLIN)) Reap(WNOHANG);
  }
  if (!reaped_) {
    Kill();
    Reap(0);
  }
  return ev;
}

void Jail::OnCancelSignal(int cancel_fd, WaitEvents* ev, std::chrono::steady_clock::time_point* kill_at) {
  signalfd_siginfo si{};
  if (read(cancel_fd, &si, sizeof(si)) != sizeof(si)) return;
  if (!ev->canceled) {
    ev->canceled = true;
    PidfdSendSignal(pidfd_.get(), static_cast<int>(si.ssi_signo));
    *kill_at = Clock::now() + kCancelGrace;
  } else {
    Kill();
  }
}

Usage Jail::CollectUsage(Clock::time_point ended, CgroupUsage* cg, std::vector<std::string>* warnings) const {
  Usage usage;
  usage.wall_ms = std::chrono::duration_cast<std::chrono::milliseconds>(ended - started_).count();
  usage.cpu_user_ms = rusage_user_us_ / 1000;
  usage.cpu_sys_ms = rusage_sys_us_ / 1000;
  usage.max_memory_bytes = rusage_maxrss_bytes_;
  if (!cgroup_) return usage;
  absl::StatusOr<CgroupUsage> read_usage = cgroup_->ReadUsage();
  if (!read_usage.ok()) {
    warnings->push_back(absl::StrCat("usage: ", read_usage.status().message()));
    return usage;
  }
  *cg = *read_usage;
  if (cg->cpu_known) {
    usage.cpu_user_ms = cg->cpu_user_us / 1000;
    usage.cpu_sys_ms = cg->cpu_sys_us / 1000;
  }
  if (cg->memory_peak_bytes > 0) usage.max_memory_bytes = cg->memory_peak_bytes;
  return usage;
}

RunResult Jail::Wait(int cancel_fd) {
  const WaitEvents ev = WatchUntilEnd(cancel_fd);
  const Clock::time_point ended = Clock::now();

  std::vector<std::string> warnings = warnings_;
  CgroupUsage cg;
  const Usage usage = CollectUsage(ended, &cg, &warnings);
  // What init said about the workload; absent when init itself was killed. Only evidence: DecideOutcome
  // weighs it against the kernel's facts.
  const std::optional<InitReport> report = ReadInitReport(report_fd_ ? report_fd_.get() : -1);
  KernelFacts kernel;
  kernel.init_wait_code = wait_status_code_;
  kernel.init_wait_status = wait_status_;
  kernel.oom_kills = cg.oom_kills;
  // The counter, read now (a fork refused just before the end counts too), or at least the hit Wait saw.
  kernel.pids_max_events = std::max<uint64_t>(cg.pids_max_events, ev.pids_killed ? 1 : 0);
  kernel.timed_out = ev.timed_out;
  kernel.canceled = ev.canceled;
  if (seccomp_) {
    kernel.seccomp_killed_syscall = seccomp_->last_killed_syscall();
    // Nothing in the jail is left to ask: the last suppressed count goes out now, before the outcome.
    seccomp_.reset();
  }
  RunResult result = DecideOutcome(kernel, report, limits_);
  result.usage = usage;
  warnings.insert(warnings.end(), result.warnings.begin(), result.warnings.end());
  result.warnings = std::move(warnings);
  if (cgroup_) (void)cgroup_->Remove();
  return result;
}

}  // namespace sbx::sandbox
