// A chaos run of fleet mode, shared by the chaos test (tests/fleet/chaos_test.cc) and fleet_bench --chaos:
// real `sandbox-agent serve` processes lease a mixed workload from the in-process control-plane double while
// a random agent is SIGKILLed (by its pid) every few seconds and restarted on its state directory, and the
// control plane is cut off (Stop() ... Restart()) for a few seconds, a given number of times. Then it waits,
// with a deadline, for every lease to have an outcome, stops the agents (SIGTERM) and collects what the
// double saw, what every workload left as evidence of having run, and what is left on the host.
//
// Evidence of runs: every workload's first act appends its token ("w<index>") to a file in a host directory
// bound read-write into every jail at /evidence (the agents' host policy is the default file policy plus that
// bind). A token that appears twice ran twice, whatever the agents or the double say.
#ifndef SBX_TESTS_FLEET_CHAOS_H_
#define SBX_TESTS_FLEET_CHAOS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "duvo/sandbox/v1/worker.pb.h"
#include "tests/fleet/double/control_plane_double.h"

namespace sbx::testing {

using ChaosClock = std::chrono::steady_clock;

struct ChaosOptions {
  int agents = 2;
  uint32_t capacity = 8;
  int leases = 1000;
  // kMixed: known exit codes (zero and not), output of known content and size (a few ~1 MiB), sleeps, file
  // tool calls. kTrue: /bin/true only, without evidence (for throughput).
  enum class Mix { kMixed, kTrue } mix = Mix::kMixed;
  // A random agent is killed every [kill_min, kill_max] (uniform, kill to kill: the restart is inside the
  // interval when it is shorter) while work is still queued and outcomes still arrive (none for 20 s ends
  // the kills); kill_max 0 = never.
  std::chrono::milliseconds kill_min{1000}, kill_max{3000};
  // Control-plane outages, in order; the i-th starts once (i+1)/(n+1) of the leases have an outcome.
  std::vector<std::chrono::milliseconds> outages = {std::chrono::milliseconds(3000),
                                                    std::chrono::milliseconds(5000)};
  // Every n-th kill waits (up to 1 s) for the double to grant that agent a lease and kills it right then (0 =
  // none): a grant the agent may not have journaled yet (issue 17 item 4).
  int kill_after_grant_every = 3;
  // After each restart, up to this many leases that agent had completed and reported before it was killed
  // are granted to it again (GrantAgainTo): a lease id it has seen must not run again.
  int regrants_per_restart = 1;
  // After the last kill and outage: how long every lease may take to get an outcome.
  std::chrono::milliseconds settle{90000};
  uint64_t seed = 1;
  bool verbose = true;  // progress lines on stderr
};

// One lease's workload and what it must produce when it completes.
struct ChaosWorkload {
  enum class Kind { kExit, kOutput, kSleep, kFiles, kTrue };
  Kind kind = Kind::kExit;
  std::string token;     // "w<index>", what it appends to the evidence file
  std::string lease_id;  // given by the double
  int expected_exit = 0;
  std::optional<std::string> expected_stdout;      // checked when set
  std::optional<std::string> expected_read_file;   // kFiles: the read_file result (call "start-3")
  duvo::sandbox::v1::SandboxRequest request;
};

// One SIGKILL and the restart that followed.
struct ChaosRestart {
  std::string agent_id;
  ChaosClock::time_point killed, restarted;  // restarted: just before the new process was spawned
  ChaosClock::time_point next_kill = ChaosClock::time_point::max();  // this agent's next kill
  // Leases the double had granted to this agent and had no outcome for, once the agent was dead.
  std::set<std::string> held;
  // Held lease -> when the double first saw a heartbeat or outcome report from this agent naming it, after
  // the restart and before this agent's next kill.
  std::map<std::string, ChaosClock::time_point> reported;
  bool start_failed = false;
  bool after_grant = false;  // killed right after a grant (ChaosOptions::kill_after_grant_every)
};

struct ChaosResult {
  std::vector<ChaosWorkload> workloads;
  std::vector<ControlPlaneDouble::LeaseView> leases;  // the double's view at the end, every lease it knows
  // Every ReportOutcome request per lease id, repeats included, in arrival order.
  std::map<std::string, std::vector<duvo::sandbox::v1::ReportOutcomeRequest>> reports;
  std::map<std::string, int> runs;  // token -> lines in the evidence file
  std::vector<ChaosRestart> restarts;
  std::vector<std::string> regranted;  // lease ids granted again after a restart
  int outages = 0;
  bool settled = false;  // every lease had an outcome before the deadline
  ChaosClock::time_point started, last_outcome;
  double seconds() const { return std::chrono::duration<double>(last_outcome - started).count(); }
  // SIGTERM at the end: exit status per agent id (-1: did not exit within a minute, then SIGKILLed).
  std::map<std::string, int> terminate_status;
  // What the run left on the host after the agents stopped (jail-uid processes, session cgroups, mounts,
  // processes in a session's cgroup), one per line; empty when nothing.
  std::string leftovers;
  // What the same scan found while sessions ran (at a kill): it can see them.
  int seen_running_cgroups = 0, seen_running_jail_processes = 0;
  std::map<std::string, std::string> agent_logs;  // agent id -> its log (every lifetime)
};

// Runs it. An error only when the run could not be set up (the double, the evidence dir, an agent that never
// started); everything that went wrong during the run is in the result for the caller to judge.
absl::StatusOr<ChaosResult> RunChaos(const ChaosOptions& options);

// What a run did wrong, by check. Every key is always present; an empty list means the check held.
//   one_outcome      a lease with no outcome, or reports that disagree (status, reason, exit, signal, session)
//   run_twice        a token in the evidence file more than once
//   lost             a lease with no outcome at the end (subset of one_outcome, named for the report)
//   exit_code        a COMPLETED lease whose exit code (or output, or read_file result) is not the expected
//   unexpected       an outcome other than COMPLETED or FAILED/agent_restart, or agent_restart from an agent
//                    that was not killed after the lease was granted, or a COMPLETED lease that never ran
//   restart_and_completed  a lease reported both FAILED/agent_restart and COMPLETED
//   events           events not seq 1..n, a gap the double counted, last_seq that does not match, or events of
//                    another session
//   unknown          outcomes for lease ids the double never granted
//   leftovers        the run's leftovers and agents that did not exit 0 on SIGTERM
std::map<std::string, std::vector<std::string>> CheckChaos(const ChaosResult& result);

// Restart-to-reported times (ms) of the restarts whose every held lease was reported before the agent's
// next kill, and the number of restarts that did not get there. Restarts that held nothing are neither.
std::vector<double> RestartToReportedMs(const ChaosResult& result, int* incomplete);

}  // namespace sbx::testing

#endif  // SBX_TESTS_FLEET_CHAOS_H_
