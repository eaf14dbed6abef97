#include "sandbox/result.h"

#include <signal.h>

#include <cerrno>

namespace sbx::sandbox {

std::string_view RunStatusName(RunStatus status) {
  switch (status) {
    case RunStatus::kCompleted: return "completed";
    case RunStatus::kFailed: return "failed";
    case RunStatus::kCanceled: return "canceled";
  }
  return "failed";
}

std::string_view RunReasonName(RunReason reason) {
  switch (reason) {
    case RunReason::kExited: return "exited";
    case RunReason::kSignaled: return "signaled";
    case RunReason::kTimeLimit: return "time_limit";
    case RunReason::kMemoryLimit: return "memory_limit";
    case RunReason::kPidsLimit: return "pids_limit";
    case RunReason::kSeccompViolation: return "seccomp_violation";
    case RunReason::kSetupError: return "setup_error";
    case RunReason::kCanceled: return "canceled";
  }
  return "setup_error";
}

int ExitStatusFor(const RunResult& result) {
  if (result.exec_errno != 0) return result.exec_errno == ENOENT ? 127 : 126;
  if (result.reason == RunReason::kSetupError) return 125;
  // A seccomp kill exits as SIGSYS would, whether the kernel (RET_KILL_PROCESS) or the agent's supervisor
  // (SIGKILL, with audit_denials) carried it out: `run`'s exit status means the same either way.
  if (result.reason == RunReason::kSeccompViolation) return 128 + SIGSYS;
  if (result.signal > 0) return 128 + result.signal;
  if (result.exit_code >= 0) return result.exit_code;
  return 125;
}

}  // namespace sbx::sandbox
