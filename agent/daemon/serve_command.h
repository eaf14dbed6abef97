// `sandbox-agent serve`: the daemon in local mode. Serves duvo.sandbox.v1.Sandboxes (and the gRPC health
// service) on a unix socket, optionally TCP with a bearer token, and Prometheus metrics on loopback.
#ifndef SBX_AGENT_DAEMON_SERVE_COMMAND_H_
#define SBX_AGENT_DAEMON_SERVE_COMMAND_H_

#include <string>

namespace sbx::agent {

struct ServeFlags {
  std::string config_path;      // empty: defaults
  std::string socket;           // overrides the config's unix_socket
  std::string metrics_address;  // overrides the config's metrics_address
};

// Runs until SIGTERM or SIGINT, then cancels every session and exits 0. Setup errors: one line, exit 1.
int ServeCommand(const ServeFlags& flags);

}  // namespace sbx::agent

#endif  // SBX_AGENT_DAEMON_SERVE_COMMAND_H_
