// How a jail's run is judged: what the kernel says about it (init's wait status, the cgroup's counters, the
// agent's own timers) together with what sandbox-init reported about the workload, into a RunResult.
//
// NOTE: sandbox-init runs as the workload's uid inside the jail, so its report is evidence, not truth
// (DESIGN.md rule 5): the kernel's word wins. An OOM kill in the cgroup is memory_limit whatever init says;
// a refused fork (with kill_on_pids_limit) is pids_limit; and a report that disagrees with init's own exit
// status (init exits with the workload's code, 128+N for signal N, 126/127 when it could not exec) is
// dropped in favour of that status, with a warning.
#ifndef SBX_SANDBOX_OUTCOME_H_
#define SBX_SANDBOX_OUTCOME_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "wire/init_report.h"
#include "sandbox/policy/policy.h"
#include "sandbox/result.h"

namespace sbx::sandbox {

// What the kernel and the agent itself know about a run, none of it writable from inside the jail.
struct KernelFacts {
  int init_wait_code = 0;    // init's siginfo si_code from waitid: CLD_EXITED, CLD_KILLED or CLD_DUMPED
  int init_wait_status = 0;  // si_status: init's exit code, or the signal that killed it
  uint64_t oom_kills = 0;    // memory.events oom_kill (v1: memory.oom_control oom_kill)
  uint64_t pids_max_events = 0;  // pids.events max
  bool timed_out = false;    // the agent's wall-clock timer fired
  bool canceled = false;     // a cancel signal arrived (and the timer did not fire first)
  // The agent's seccomp supervisor killed a caller for a KILL rule: the syscall of the last such kill.
  std::string seccomp_killed_syscall;
};

// Decides the run's status, reason, exit code or signal and message. `report` is what init wrote on its
// report channel, if a whole record arrived (magic checked here). Usage is left for the caller.
RunResult DecideOutcome(const KernelFacts& kernel, const std::optional<InitReport>& report, const Limits& limits);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_OUTCOME_H_
