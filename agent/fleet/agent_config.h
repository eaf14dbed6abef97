// The agent's configuration: AgentConfig textproto (deploy/agent.textproto) with defaults filled in.
#ifndef SBX_AGENT_FLEET_AGENT_CONFIG_H_
#define SBX_AGENT_FLEET_AGENT_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/egress/egress_proxy.h"

namespace sbx::agent {

// Fleet mode (AgentConfig.fleet in agent_config.proto documents each field).
struct FleetSettings {
  std::string control_plane;  // empty: local mode only
  bool tls = false;
  std::string ca_file, cert_file, key_file, server_name;
  std::string token_file;
  std::string agent_id;  // default: the host name
  std::map<std::string, std::string> labels;
  std::chrono::milliseconds lease_wait{10000};
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds drain_grace{60000};
  std::chrono::milliseconds backoff_initial{200};
  std::chrono::milliseconds backoff_max{30000};
  uint64_t max_request_bytes = 1 << 20;
  std::chrono::milliseconds stream_op_timeout{20000};  // one Attach stream operation, at most
  bool outbox_salvage = true;  // outbox_damage: SALVAGE (default) or REFUSE
};

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
  std::string health_address;                      // empty: health only on the unix socket
  uint32_t warm_browsers = 0;                      // browser sessions kept started
  uint32_t warm_files = 0;                         // file sessions kept started
  uint32_t warm_desktops = 0;                      // desktop sessions kept started
  std::vector<IpNetwork> egress_deny;              // egress_deny_cidrs: the egress proxy's off-limits networks
  FleetSettings fleet;
};

// The defaults for this user: root gets /run and /var/lib paths, others $XDG_RUNTIME_DIR / $XDG_STATE_HOME.
AgentConfig DefaultAgentConfig();

// Reads `path` (textproto duvo.sandbox.v1.AgentConfig) over the defaults. Errors name file, line and field.
absl::StatusOr<AgentConfig> LoadAgentConfig(std::string_view path);

}  // namespace sbx::agent

#endif  // SBX_AGENT_FLEET_AGENT_CONFIG_H_
