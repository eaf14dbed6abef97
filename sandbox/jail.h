// Jail: one running sandbox — sandbox-init as PID 1 of new user, pid, mount, net, ipc, uts and cgroup
// namespaces, inside a session cgroup, on a tmpfs root built from the policy, seccomp'd, with no
// capabilities and an unprivileged host uid range. The Jail owns the init process (by pidfd), the cgroup
// and the id lease; destroying it kills every process in the jail, reaps init and removes the cgroup.
#ifndef SBX_SANDBOX_JAIL_H_
#define SBX_SANDBOX_JAIL_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/id_range.h"
#include "sandbox/policy/policy.h"
#include "sandbox/result.h"
#include "sandbox/seccomp_notify.h"
#include "base/unique_fd.h"

namespace sbx::sandbox {

struct JailOptions {
  std::vector<std::string> argv;  // the workload; argv[0] is looked up on the policy's PATH inside the jail
  // Instead of one command, sandbox-init serves the init protocol on a socketpair (TakeControlFd); argv must
  // then be empty. The jail lives until the control socket closes or the jail is killed.
  bool serve = false;
  std::string init_path;          // host path of the sandbox-init binary
  // One-shot jails only (ignored with `serve`): the jail child does not exec sandbox-init but stays PID 1
  // itself, running the same one-shot code (wire/one_shot_init.h), as bubblewrap does; that saves the exec of
  // a second binary. It needs a fork-style clone of the calling process (a CLONE_VFORK parent would sleep
  // until PID 1 exits), cheap for a small process such as `sandbox-agent run` but not for the daemon (see
  // sandbox/jail_clone.cc), which must leave it false.
  bool in_process_init = false;
  // Where the session cgroup goes; nullptr runs without one (rootless without delegation), in which case
  // the memory/pids/cpu limits are not enforced and `warnings` must say so.
  const CgroupLayout* cgroups = nullptr;
  std::string name;  // the cgroup's directory name; must be unique among running jails
  std::vector<std::string> warnings;  // carried into the RunResult
  // The environment the policy's passthrough names are taken from; nullptr = none.
  char** host_environ = nullptr;
  // How often Wait reads pids.events for kill_on_pids_limit (v1 cgroups cannot notify). A one-shot run
  // checks often; a daemon with hundreds of idle sessions less so (the pids limit holds either way).
  std::chrono::milliseconds pids_poll_interval{20};
  // The session cgroup starts in the CPU background (Cgroup::SetCpuBackground).
  bool cpu_background = false;
  // Receives the seccomp supervisor's records (policy seccomp.audit_denials), on the supervisor's thread,
  // from Start until Wait returns (or the Jail is destroyed). May be empty: denials are answered anyway.
  SeccompAuditSink seccomp_audit;
};

class Jail {
 public:
  // Builds the jail and executes sandbox-init in it; returns once init is running. A failure anywhere
  // (policy compile, cgroup, clone, a mount in the child) is an error naming the step, and leaves nothing
  // behind.
  static absl::StatusOr<std::unique_ptr<Jail>> Start(const Policy& policy, const JailOptions& options);

  ~Jail();
  Jail(const Jail&) = delete;
  Jail& operator=(const Jail&) = delete;

  // Waits for the run to end: init exits, the policy's wall time passes, or the pids controller refuses a
  // fork (with kill_on_pids_limit). `cancel_fd`, when >= 0, is a signalfd: the first signal on it is
  // forwarded to the workload and marks the run canceled; a second one, or 5 s without an end, kills the
  // jail. Reads the outcome from the kernel (exit status, memory.events, pids.events, SIGSYS).
  RunResult Wait(int cancel_fd = -1);

  // A listening TCP socket on 127.0.0.1:port inside the jail's network namespace (nonblocking), made by the
  // agent: the egress proxy accepts the jail's connections on it.
  absl::StatusOr<UniqueFd> ListenInNetns(uint16_t port) const;
  // SIGKILLs everything in the jail (idempotent): it kills PID 1 of the jail's pid namespace, which makes the
  // kernel kill everything else in it; nothing can join a dying pid namespace, and every process of the jail
  // is in it. The cgroup's kill is only the fallback, for a PID 1 that cannot be signalled: on cgroup v1 it
  // freezes the cgroup, kills and thaws, and perf put those freezer writes at 7% of the machine's CPU in a
  // stream of fleet sessions, each ended by Kill.
  void Kill();
  // Cgroup::SetCpuBackground of the session cgroup; does nothing without a cgroup.
  absl::Status SetCpuBackground(bool background) const;

  pid_t pid() const { return pid_; }
  // The seccomp supervisor's counters (0 without one): denials answered, callers killed.
  uint64_t seccomp_denials() const { return seccomp_ ? seccomp_->denials() : 0; }

  // The agent's end of the init-protocol socket (serving jails only; invalid after the first call).
  UniqueFd TakeControlFd() { return std::move(control_fd_); }

 private:
  Jail() = default;
  void Reap(int options);

  // Wait's steps. What happened while waiting, besides init's exit.
  struct WaitEvents {
    bool timed_out = false;    // the wall time passed: the jail was killed
    bool pids_killed = false;  // the pids controller refused a fork (kill_on_pids_limit): killed
    bool canceled = false;     // a cancel signal was forwarded
  };
  // Polls init's pidfd, the wall-time deadline, pids.events and `cancel_fd` until init is reaped.
  WaitEvents WatchUntilEnd(int cancel_fd);
  // A signal on `cancel_fd`: the first goes to the workload and arms the kill after the grace; a second
  // kills the jail.
  void OnCancelSignal(int cancel_fd, WaitEvents* ev, std::chrono::steady_clock::time_point* kill_at);
  // The run's usage from rusage, or better from the cgroup (whose counters also go to *cg); a cgroup that
  // cannot be read is a warning.
  Usage CollectUsage(std::chrono::steady_clock::time_point ended, CgroupUsage* cg,
                     std::vector<std::string>* warnings) const;

  pid_t pid_ = -1;
  UniqueFd pidfd_;
  UniqueFd report_fd_;   // read end of init's report pipe (one-shot jails)
  UniqueFd control_fd_;  // agent end of the init-protocol socket (serving jails)
  std::optional<Cgroup> cgroup_;
  std::optional<IdRange> ids_;
  // Answers the jail's seccomp denials (policy audit_denials); stopped at the end of Wait, once nothing in
  // the jail is left to ask.
  std::unique_ptr<SeccompSupervisor> seccomp_;
  Limits limits_;
  std::chrono::milliseconds pids_poll_interval_{20};
  std::vector<std::string> warnings_;
  std::chrono::steady_clock::time_point started_;
  std::atomic<bool> reaped_{false};  // Kill() may run on another thread than Wait()
  int wait_status_code_ = 0;  // siginfo si_code (CLD_EXITED / CLD_KILLED / CLD_DUMPED)
  int wait_status_ = 0;       // si_status
  uint64_t rusage_user_us_ = 0;
  uint64_t rusage_sys_us_ = 0;
  uint64_t rusage_maxrss_bytes_ = 0;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_JAIL_H_
