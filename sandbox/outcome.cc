#include "sandbox/outcome.h"

#include <signal.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sbx::sandbox {
namespace {

constexpr int kMaxSignal = 64;  // _NSIG - 1 on Linux

// A report whose fields make sense; anything else is as good as no report.
bool WellFormed(const InitReport& r) {
  if (r.magic != kInitReportMagic) return false;
  switch (r.kind) {
    case InitReport::kExited: return r.value >= 0 && r.value <= 255;
    case InitReport::kSignaled: return r.value > 0 && r.value <= kMaxSignal;
    case InitReport::kExecFailed: return r.value > 0;
    default: return false;
  }
}

// The status sandbox-init exits with after writing `r` (sandbox_init_main.cc).
int InitExitFor(const InitReport& r) {
  switch (r.kind) {
    case InitReport::kExited: return r.value;
    case InitReport::kSignaled: return 128 + r.value;
    default: return r.value == ENOENT ? 127 : 126;
  }
}

std::string DescribeReport(const InitReport& r) {
  switch (r.kind) {
    case InitReport::kExited: return absl::StrCat("exited ", r.value);
    case InitReport::kSignaled: return absl::StrCat("signal ", r.value);
    default: return absl::StrCat("exec failed, errno ", r.value);
  }
}

std::string DescribeWait(const KernelFacts& k) {
  return k.init_wait_code == CLD_EXITED ? absl::StrCat("exit ", k.init_wait_status)
                                        : absl::StrCat("killed by signal ", k.init_wait_status);
}

}  // namespace

RunResult DecideOutcome(const KernelFacts& kernel, const std::optional<InitReport>& report, const Limits& limits) {
  RunResult result;
  bool trusted = false;
  if (report && WellFormed(*report)) {
    // init exits with the status its report implies; a workload that rewrote init (or its report channel)
    // would have to forge both, and init's exit status comes from the kernel.
    trusted = kernel.init_wait_code == CLD_EXITED && kernel.init_wait_status == InitExitFor(*report);
    if (!trusted) {
      result.warnings.push_back(absl::StrCat("sandbox-init's report (", DescribeReport(*report),
                                             ") disagrees with its exit status from the kernel (",
                                             DescribeWait(kernel), "): the kernel's word is used"));
    }
    if ((report->flags & InitReport::kNotSeparated) != 0) {
      result.warnings.push_back(
          "this kernel lacks Landlock: the workload was NOT separated from sandbox-init by a Landlock domain "
          "(only init's non-dumpable state kept it out of init's memory)");
    }
  }
  if (trusted) {
    switch (report->kind) {
      case InitReport::kExited: result.exit_code = report->value; break;
      case InitReport::kSignaled: result.signal = report->value; break;
      default: result.exec_errno = report->value; break;
    }
  } else if (kernel.init_wait_code == CLD_EXITED) {
    // init's own status, read with init's convention: 128+N is the workload's death by signal N.
    const int s = kernel.init_wait_status;
    if (s > 128 && s <= 128 + kMaxSignal) {
      result.signal = s - 128;
    } else {
      result.exit_code = s;
    }
  } else {
    result.signal = kernel.init_wait_status;  // init itself was killed (the agent's kill, the OOM killer)
  }

  if (kernel.timed_out) {
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kTimeLimit;
    result.message = absl::StrCat("wall time limit of ", limits.wall_time_limit_ms, " ms reached");
  } else if (limits.kill_on_pids_limit && kernel.pids_max_events > 0) {
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kPidsLimit;
    result.message = absl::StrCat("the pids limit of ", limits.pids_max, " refused a fork");
  } else if (kernel.oom_kills > 0) {
    // Whatever init or the workload say: the OOM killer acted in this jail's cgroup.
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kMemoryLimit;
    result.message = absl::StrCat("the memory limit of ", limits.memory_max_bytes, " bytes was reached (",
                                  kernel.oom_kills, " OOM kills)");
  } else if (result.exec_errno != 0) {
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kSetupError;
    result.message = absl::StrCat("cannot execute the command: ", strerror(result.exec_errno));
  } else if (result.signal == SIGSYS) {
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kSeccompViolation;
    result.message = "killed by the seccomp policy (SIGSYS)";
  } else if (result.signal == SIGKILL && !kernel.seccomp_killed_syscall.empty()) {
    // With audit_denials a KILL rule is carried out by the agent's supervisor with SIGKILL (the kernel's
    // own kill would be SIGSYS), which knows the syscall.
    result.status = RunStatus::kFailed;
    result.reason = RunReason::kSeccompViolation;
    result.message = absl::StrCat("killed by the seccomp policy: syscall ", kernel.seccomp_killed_syscall);
  } else if (result.signal > 0) {
    result.status = RunStatus::kCompleted;
    result.reason = RunReason::kSignaled;
  } else {
    result.status = RunStatus::kCompleted;
    result.reason = RunReason::kExited;
  }
  if (kernel.canceled && !kernel.timed_out) {
    result.status = RunStatus::kCanceled;
    result.reason = RunReason::kCanceled;
  }
  return result;
}

}  // namespace sbx::sandbox
