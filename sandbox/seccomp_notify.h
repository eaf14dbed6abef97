// SeccompSupervisor: answers a jail's seccomp denials (SECCOMP_RET_USER_NOTIF) and records each one as an
// audit, rate-limited per jail.
//
// Where it lives, and why (DESIGN.md, "Processes and trust boundaries"): in the agent, on a thread of the
// Jail that owns it, outside the jail.
//  - Whoever holds the listener decides what a denied call does: it could answer "continue"
//    (SECCOMP_USER_NOTIF_FLAG_CONTINUE) and the call would run. So the listener must be out of the
//    workload's reach. sandbox-init runs as the workload's uid inside the jail; it is non-dumpable and
//    separated, but a listener there is one bug away from a workload that allows itself everything.
//    Rule 3 (no agent fd reaches a jail) is the other half: the jail child loads the filter with
//    SECCOMP_FILTER_FLAG_NEW_LISTENER, passes the listener to the agent over a socketpair (SCM_RIGHTS) and
//    closes its own copy before execve(sandbox-init), so no process of the jail ever holds it.
//  - Records name the caller's syscall and arguments as the kernel reports them (struct seccomp_notif), not
//    as the workload describes them. Only comm, NSpid, Tgid and PPid come from /proc/<pid>/status, and only
//    after SECCOMP_IOCTL_NOTIF_ID_VALID confirms the pid is still the blocked caller; comm is the
//    workload's choice, so it is escaped (\xNN) and never trusted for a decision.
//  - Rule 5 (nothing a jail does grows the agent without bound): a token bucket per jail (50 audits burst,
//    20/s) limits records; past it denials are only counted, and one kSuppressed record with the count
//    follows when the bucket has a token again (and at the end). A denied call is answered at once either
//    way, and answering allocates nothing.
//
// NOTE: when the supervisor is gone (the listener closed: the Jail destroyed), the kernel answers every
// pending and later notification of the filter with ENOSYS: the denied call still does not run.
//
// Cost: an allowed call never leaves the kernel's BPF. A denied call costs a round trip to this thread
// (two context switches, a few microseconds); see README, "Seccomp denial audits".
#ifndef SBX_SANDBOX_SECCOMP_NOTIFY_H_
#define SBX_SANDBOX_SECCOMP_NOTIFY_H_

#include <linux/seccomp.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sandbox/seccomp_program.h"
#include "base/unique_fd.h"

namespace sbx::sandbox {

// One denial (or a count of unrecorded ones), as the supervisor saw it.
struct SeccompAudit {
  enum class Kind { kDenied, kKilled, kSuppressed };
  Kind kind = Kind::kDenied;
  std::string syscall;   // "ptrace"; "#<nr>" when libseccomp does not know it; empty for kSuppressed
  std::string args;      // the first arguments decoded (DecodeSyscallArgs)
  int32_t pid = 0;       // the caller's pid inside the jail (the last NSpid field); 0 when unknown
  pid_t host_pid = 0;    // the caller's thread group in the agent's pid namespace; 0 when unknown
  std::string comm;      // escaped (EscapeComm)
  int errno_value = 0;   // kDenied: what the call returned
  int rule = -1;         // index into SeccompPolicy::rules; -1: the default action
  uint64_t suppressed = 0;  // kSuppressed: denials answered without a record since the last record
};

// Called on the supervisor's thread; must not block for long (the jail's denied calls wait meanwhile).
using SeccompAuditSink = std::function<void(const SeccompAudit&)>;

// "flags=CLONE_NEWUSER|CLONE_NEWNS" for clone/unshare, "request=0x5412" for ioctl, "family=AF_NETLINK" for
// socket, "cmd=BPF_PROG_LOAD" for bpf, "op=KEYCTL_JOIN_SESSION_KEYRING" for keyctl, "request=PTRACE_TRACEME"
// for ptrace; for any other syscall the first three arguments in hex ("0x1 0x0 0x7ffd...").
std::string DecodeSyscallArgs(int nr, const uint64_t args[6]);

// `comm` (at most 16 bytes as the kernel keeps it) with bytes outside printable ASCII, '"' and '\' as \xNN.
std::string EscapeComm(std::string_view comm);

// A token bucket: `burst` tokens, refilled at `per_second`. Not thread-safe (the supervisor's thread only).
class AuditRateLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  AuditRateLimiter(double burst, double per_second, Clock::time_point now);

  struct Admission {
    bool record = false;   // this denial gets a record
    uint64_t flush = 0;    // > 0: emit a kSuppressed record with this count first
  };
  // One denial at `now`.
  Admission Admit(Clock::time_point now);
  // Periodically while suppressed() > 0: the count to emit once the bucket has a token again (0: not yet).
  uint64_t Flush(Clock::time_point now);
  // At the end: whatever is still counted.
  uint64_t TakeSuppressed();
  uint64_t suppressed() const { return suppressed_; }

 private:
  void Refill(Clock::time_point now);
  const double burst_;
  const double per_second_;
  double tokens_;
  Clock::time_point last_;
  uint64_t suppressed_ = 0;
};

class SeccompSupervisor {
 public:
  struct Options {
    double audit_burst = 50;
    double audits_per_second = 20;
  };
  // Takes the listener and starts the thread. `sink` receives every record, on that thread.
  static absl::StatusOr<std::unique_ptr<SeccompSupervisor>> Start(UniqueFd listener, SeccompDenyTable table,
                                                                  SeccompAuditSink sink, Options options);
  static absl::StatusOr<std::unique_ptr<SeccompSupervisor>> Start(UniqueFd listener, SeccompDenyTable table,
                                                                  SeccompAuditSink sink) {
    return Start(std::move(listener), std::move(table), std::move(sink), Options());
  }
  // Stops and joins the thread, emits the last suppressed count, closes the listener (see the NOTE above).
  ~SeccompSupervisor();
  SeccompSupervisor(const SeccompSupervisor&) = delete;
  SeccompSupervisor& operator=(const SeccompSupervisor&) = delete;

  // The syscall of the last KILL decision carried out ("" when none): the outcome names it.
  std::string last_killed_syscall() const;
  uint64_t kills() const { return kills_.load(); }
  uint64_t denials() const { return denials_.load(); }

 private:
  SeccompSupervisor(UniqueFd listener, SeccompDenyTable table, SeccompAuditSink sink, Options options);
  void Run(std::stop_token stop);
  void Handle(seccomp_notif* req, seccomp_notif_resp* resp);

  UniqueFd listener_;
  UniqueFd wake_;  // eventfd: the destructor wakes the thread
  const SeccompDenyTable table_;
  const SeccompAuditSink sink_;
  AuditRateLimiter limiter_;  // the thread's only
  std::atomic<uint64_t> kills_{0};
  std::atomic<uint64_t> denials_{0};
  mutable absl::Mutex mu_;
  std::string last_killed_ ABSL_GUARDED_BY(mu_);
  std::jthread thread_;      // last: joined first
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_SECCOMP_NOTIFY_H_
