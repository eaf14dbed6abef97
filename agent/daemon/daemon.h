// Daemon: the parts of `sandbox-agent serve` and their order. It owns every part (metrics, the cgroup ledger,
// the session manager, the Sandboxes service, the fleet agent, the gRPC servers, the TCP listener and its MCP
// endpoint) and wires them through their Options structs as non-owning pointers. Start brings the parts up in
// order, Run takes signals (SIGHUP reloads the configuration) until SIGTERM or SIGINT, and Shutdown takes
// them down, each before what it uses.
#ifndef SBX_AGENT_DAEMON_DAEMON_H_
#define SBX_AGENT_DAEMON_DAEMON_H_

#include <signal.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "agent/daemon/mcp_listener.h"
#include "agent/daemon/sandboxes_service.h"
#include "agent/daemon/serve_command.h"
#include "agent/fleet/agent_config.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/mcp/mcp_http.h"
#include "agent/obs/metrics.h"
#include "agent/session/cgroup_ledger.h"
#include "agent/session/session_manager.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/policy/policy.h"

namespace sbx::agent {

class ProbeHealthService;

class Daemon {
 public:
  explicit Daemon(ServeFlags flags);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Blocks SIGTERM, SIGINT and SIGHUP (for Run's sigwait; call it before any thread exists, so every thread
  // inherits the mask), then brings every part up. An error names what failed; the parts started so far
  // are destroyed with the Daemon.
  absl::Status Start();
  // Waits for signals: SIGHUP reloads; returns at SIGTERM or SIGINT.
  void Run();
  // Stops serving: probes see NOT_SERVING, MCP stops, the fleet drains, sessions are canceled, the servers
  // shut down, and the socket is removed.
  void Shutdown();

 private:
  // Start's steps, in order.
  absl::Status LoadConfig();       // the config file (and flags), policies, sandbox-init, the cgroup layout
  absl::Status StartMetrics();
  absl::Status StartSessions();    // the state dir, the cgroup ledger, the session manager, the service
  absl::Status StartFleet();       // fleet mode, when the config names a control plane
  absl::Status StartServer();      // the gRPC server on the unix socket (and TCP, with MCP over HTTP)
  absl::Status StartHealth();      // the health service alone on health_address, for probes
  void StartMcp();

  const ServeFlags flags_;
  sigset_t signals_{};
  AgentConfig config_;
  std::map<int, sandbox::Policy> policies_;  // until the session manager takes them
  std::string init_path_;
  std::vector<std::string> warnings_;
  std::optional<sandbox::CgroupLayout> layout_;  // none when rootless without cgroups
  // NOTE: declared in the order the parts start, so that they are destroyed in the reverse order.
  Metrics metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<CgroupLedger> ledger_;
  std::unique_ptr<SessionManager> sessions_;
  std::unique_ptr<SandboxesService> service_;
  std::unique_ptr<FleetAgent> fleet_;
  int tcp_port_ = 0;
  std::unique_ptr<mcp::TcpListener> tcp_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> inproc_;
  std::unique_ptr<duvo::sandbox::v1::Sandboxes::Stub> inproc_stub_;
  std::unique_ptr<mcp::McpHttpServer> mcp_http_;
  std::unique_ptr<grpc::Server> health_server_;
  std::unique_ptr<ProbeHealthService> probe_health_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_DAEMON_DAEMON_H_
