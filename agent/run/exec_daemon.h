// `sandbox-agent serve ARGS...` executes sandbox-agentd ARGS... (beside this binary, or in
// ../libexec/sandbox-agent/), keeping the pid, so supervisors and signals see the daemon itself.
#ifndef SBX_AGENT_RUN_EXEC_DAEMON_H_
#define SBX_AGENT_RUN_EXEC_DAEMON_H_

#include <string>
#include <vector>

namespace sbx::agent {

// Returns only on failure (one line on stderr, exit status 1).
int ExecDaemon(const std::vector<std::string>& args);

}  // namespace sbx::agent

#endif  // SBX_AGENT_RUN_EXEC_DAEMON_H_
