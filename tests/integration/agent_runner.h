// Runs the real sandbox-agent binary as a subprocess and collects its exit status, output and outcome JSON.
#ifndef SBX_TESTS_INTEGRATION_AGENT_RUNNER_H_
#define SBX_TESTS_INTEGRATION_AGENT_RUNNER_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/common/host_state.h"  // JailUidProcesses

namespace sbx::testing {

struct AgentRun {
  int exit_code = -1;  // 128+N when the agent itself died of signal N
  std::string out;
  std::string err;
  nlohmann::json outcome;  // null when no outcome file was written
};

struct AgentInvocation {
  std::vector<std::string> flags;    // run flags, before "--"
  std::vector<std::string> command;  // after "--"
  std::string stdin_data;
  std::vector<std::string> env = {"PATH=/usr/bin:/bin"};  // the agent's own environment
  std::vector<std::string> prefix;   // e.g. {"setpriv", "--reuid=65534", ...}
  bool bind_probe = true;            // --ro-bind the probe binary at /probe
};

// Runs `sandbox-agent run --outcome-json TMP FLAGS -- COMMAND`, waits for it and parses the outcome.
AgentRun RunAgent(const AgentInvocation& invocation);

// Starts the same without waiting; the caller reads with WaitAgent.
pid_t StartAgent(const AgentInvocation& invocation, int* out_fd, std::string* outcome_path);
AgentRun WaitAgent(pid_t pid, int out_fd, const std::string& outcome_path);

// The value of a "key=value" line in `out` (what the probes print), or "<missing>".
std::string Field(const std::string& out, const std::string& key);

std::string AgentBin();
std::string ProbeBin();

// Directories named "run-*" anywhere under /sys/fs/cgroup (our session cgroups).
std::vector<std::string> SessionCgroups();
// Number of mounts in this process's mount namespace.
int MountCount();

}  // namespace sbx::testing

#endif  // SBX_TESTS_INTEGRATION_AGENT_RUNNER_H_
