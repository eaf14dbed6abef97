// `sandbox-agent run`: one command in a fresh jail, stdio passed through, the outcome read from the kernel.
#ifndef SBX_AGENT_RUN_RUN_COMMAND_H_
#define SBX_AGENT_RUN_RUN_COMMAND_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sbx::agent {

struct RunFlags {
  std::string policy_path;   // empty: /etc/sandbox-agent/policies/file.textproto, else the built-in default
  std::string outcome_json;  // empty: none
  std::string init_path;     // empty: located (init_locator.h)
  std::optional<double> time_limit_seconds;
  std::optional<std::string> memory_limit;  // bytes, or with a K/M/G suffix (powers of 1024)
  std::optional<uint32_t> pids_limit;
  std::vector<std::string> ro_binds;  // SRC[:DST]
  std::vector<std::string> rw_binds;  // SRC[:DST]
  std::vector<std::string> env;       // KEY=VALUE
  std::string cwd;
  std::vector<std::string> command;
};

// Runs the command and returns the process exit status: the command's; 128+N for signal N; 125 when the
// sandbox could not be set up (one line on stderr says why); 126/127 when the command is not executable /
// not found. Once a jail has run, it ends the process with that status (_exit, after flushing stdio) instead of
// returning, except in sanitizer builds.
int RunCommand(const RunFlags& flags);

}  // namespace sbx::agent

#endif  // SBX_AGENT_RUN_RUN_COMMAND_H_
