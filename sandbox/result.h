// How a jail's run ended: data, not an error (sandbox2's Result). A non-OK Status means the infrastructure
// failed; a workload that crashed, hit a limit or was killed by policy is a RunResult.
#ifndef SBX_SANDBOX_RESULT_H_
#define SBX_SANDBOX_RESULT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sbx::sandbox {

enum class RunStatus { kCompleted, kFailed, kCanceled };

enum class RunReason {
  kExited,            // the workload exited (any code)
  kSignaled,          // the workload was ended by a signal of its own making
  kTimeLimit,         // the agent's wall-clock timer fired
  kMemoryLimit,       // the kernel's OOM killer acted in the jail's cgroup (memory.events oom_kill)
  kPidsLimit,         // the pids controller refused a fork (pids.events max) and the policy ends the run
  kSeccompViolation,  // the workload died of SIGSYS (a seccomp kill)
  kSetupError,        // the jail could not be built, or the command could not be executed
  kCanceled,          // by request (a signal to the agent, an API call, a drain)
};

struct Usage {
  uint64_t wall_ms = 0;
  uint64_t cpu_user_ms = 0;
  uint64_t cpu_sys_ms = 0;
  uint64_t max_memory_bytes = 0;
};

struct RunResult {
  RunStatus status = RunStatus::kFailed;
  RunReason reason = RunReason::kSetupError;
  int exit_code = -1;  // when the workload exited
  int signal = 0;      // when a signal ended it
  int exec_errno = 0;  // when the command could not be executed (ENOENT -> 127, else 126)
  Usage usage;
  std::string message;                // human detail for setup errors and limits
  std::vector<std::string> warnings;  // e.g. limits rootless mode cannot enforce
};

std::string_view RunStatusName(RunStatus status);
std::string_view RunReasonName(RunReason reason);

// The exit status a CLI reports for `result`, like env(1) and docker: the command's code; 128+N for signal N;
// 125 when the sandbox could not be set up; 126/127 when the command was not executable / not found.
int ExitStatusFor(const RunResult& result);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_RESULT_H_
