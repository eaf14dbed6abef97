// The agent's configuration: AgentConfig textproto (deploy/agent.textproto) with defaults filled in.
#ifndef SBX_AGENT_AGENT_CONFIG_H_
#define SBX_AGENT_AGENT_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sbx::agent {

struct AgentConfig {
  std::string state_dir;
  std::string unix_socket;
  std::string tcp_address;        // empty: no TCP listener
  std::string bearer_token_file;  // required with tcp_address
  uint32_t max_sessions = 64;
  std::chrono::milliseconds default_ttl{std::chrono::hours(1)};
  std::chrono::milliseconds default_idle_timeout{std::chrono::minutes(15)};
  std::string policy_dir = "/etc/sandbox-agent/policies";
  std::string metrics_address = "127.0.0.1:9464";  // "off": none
  std::string init_path;                           // empty: located beside the binary
};

// The defaults for this user: root gets /run and /var/lib paths, others $XDG_RUNTIME_DIR / $XDG_STATE_HOME.
AgentConfig DefaultAgentConfig();

// Reads `path` (textproto duvo.sandbox.v1.AgentConfig) over the defaults. Errors name file, line and field.
absl::StatusOr<AgentConfig> LoadAgentConfig(std::string_view path);

}  // namespace sbx::agent

#endif  // SBX_AGENT_AGENT_CONFIG_H_
