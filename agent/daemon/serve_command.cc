#include "agent/daemon/serve_command.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "agent/fleet/agent_config.h"
#include "agent/session/cgroup_ledger.h"
#include "agent/egress/egress_proxy.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/run/init_locator.h"
#include "agent/obs/log.h"
#include "agent/mcp/mcp_http.h"
#include "agent/daemon/mcp_listener.h"
#include "agent/obs/metrics.h"
#include "agent/daemon/sandboxes_service.h"
#include "agent/session/session_manager.h"
#include "duvo/sandbox/v1/session.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/oom_score.h"
#include "sandbox/policy/policy_loader.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::agent {
namespace {

absl::Status MkdirAll(const std::string& dir, mode_t mode) {
  std::string partial;
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      partial = dir.substr(0, i);
      if (mkdir(partial.c_str(), mode) < 0 && errno != EEXIST) return ErrnoToStatus(errno, absl::StrCat("mkdir ", partial));
    }
  }
  return absl::OkStatus();
}

// Makes `path` free for a new socket: refuses when a live agent answers there, removes a stale socket.
absl::Status ClaimSocketPath(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) < 0) return errno == ENOENT ? absl::OkStatus() : ErrnoToStatus(errno, path);
  if (!S_ISSOCK(st.st_mode)) return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket"));
  UniqueFd probe(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return absl::InvalidArgumentError(absl::StrCat(path, ": too long for a unix socket"));
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    return absl::FailedPreconditionError(absl::StrCat("another agent is serving on ", path));
  }
  if (unlink(path.c_str()) < 0) return ErrnoToStatus(errno, absl::StrCat("remove stale socket ", path));
  return absl::OkStatus();
}

// The host's ceiling per session kind: <policy_dir>/<kind>.textproto, else the built-in one.
absl::StatusOr<std::map<int, sandbox::Policy>> LoadPolicies(const AgentConfig& config) {
  std::map<int, sandbox::Policy> policies;
  const struct {
    duvo::sandbox::v1::SessionKind kind;
    const char* file;
    absl::StatusOr<sandbox::Policy> (*builtin)();
  } kinds[] = {
      {duvo::sandbox::v1::FILE, "file.textproto", &sandbox::DefaultFilePolicy},
      {duvo::sandbox::v1::DESKTOP, "desktop.textproto", &sandbox::DefaultDesktopPolicy},
      {duvo::sandbox::v1::BROWSER, "browser.textproto", &sandbox::DefaultBrowserPolicy},
  };
  for (const auto& k : kinds) {
    const std::string path = config.policy_dir + "/" + k.file;
    absl::StatusOr<sandbox::Policy> policy =
        access(path.c_str(), F_OK) == 0 ? sandbox::LoadPolicyFile(path) : k.builtin();
    if (!policy.ok()) return policy.status();
    if (policy->spec().network == sandbox::NetworkMode::kEgress) {
      // The egress rules are the proxy's to read: a policy with a bad one fails here, naming it.
      absl::StatusOr<std::vector<EgressRule>> rules = ParseEgressRules(policy->spec().egress_allow);
      if (!rules.ok()) return Annotate(rules.status(), absl::StrCat(path, ": network.allow"));
      rules = ParseEgressRules(policy->spec().egress_ask);
      if (!rules.ok()) return Annotate(rules.status(), absl::StrCat(path, ": network.ask"));
    }
    policies.emplace(k.kind, std::move(*policy));
  }
  return policies;
}

// SIGHUP: re-reads the config file and the policies. Capacity, defaults, policies and fleet settings apply
// to new sessions and calls; running sessions keep theirs. A bad file changes nothing (logged).
void Reload(const ServeFlags& flags, const AgentConfig& running, SessionManager* sessions, FleetAgent* fleet) {
  absl::StatusOr<AgentConfig> config = LoadAgentConfig(flags.config_path);
  if (!config.ok()) {
    Log(LogLevel::kError, "SIGHUP: the configuration did not load; keeping the running one",
        {{"error", config.status().ToString()}});
    return;
  }
  absl::StatusOr<std::map<int, sandbox::Policy>> policies = LoadPolicies(*config);
  if (!policies.ok()) {
    Log(LogLevel::kError, "SIGHUP: a policy did not load; keeping the running ones",
        {{"error", policies.status().ToString()}});
    return;
  }
  sessions->Reload(config->max_sessions, config->default_ttl, config->default_idle_timeout, std::move(*policies),
                   config->warm_browsers);
  if (fleet != nullptr) fleet->Reload(config->fleet);
  if (config->unix_socket != running.unix_socket || config->tcp_address != running.tcp_address ||
      config->state_dir != running.state_dir || config->metrics_address != running.metrics_address ||
      config->health_address != running.health_address || config->fleet.control_plane != running.fleet.control_plane) {
    Log(LogLevel::kWarn, "SIGHUP: listener, state_dir and control_plane changes take effect at the next restart");
  }
  Log(LogLevel::kInfo, "SIGHUP: configuration reloaded",
      {{"max_sessions", absl::StrCat(config->max_sessions)}, {"policy_dir", config->policy_dir}});
}

// grpc.health.v1 Check alone, for the TCP probe listener (health_address; Kubernetes' grpc probes call
// Check). gRPC's default health service cannot serve a server that has no synchronous service of its own,
// so this one is ours: the overall status ("") and the agent's service are SERVING until the agent starts to
// stop.
class ProbeHealthService final : public grpc::health::v1::Health::Service {
 public:
  void SetNotServing() { serving_ = false; }
  grpc::Status Check(grpc::ServerContext*, const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override {
    if (!Known(request->service())) return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service");
    response->set_status(Status());
    return grpc::Status::OK;
  }
 private:
  static bool Known(const std::string& service) {
    return service.empty() || service == "duvo.sandbox.v1.Sandboxes";
  }
  grpc::health::v1::HealthCheckResponse::ServingStatus Status() const {
    return serving_ ? grpc::health::v1::HealthCheckResponse::SERVING
                    : grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  }
  std::atomic<bool> serving_{true};
};

int Fail(const absl::Status& status) {
  fprintf(stderr, "sandbox-agent serve: %.*s\n", static_cast<int>(status.message().size()), status.message().data());
  return 1;
}

}  // namespace

int ServeCommand(const ServeFlags& flags) {
  // Signals are taken by sigwait below; block them before any thread exists so every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  InitLogging();
  // When the host runs out of memory the kernel should kill a jail (each is set to 1000), not the agent that
  // holds every session. Without CAP_SYS_RESOURCE this cannot be done: one line says so, and serving goes on.
  if (absl::Status s = sandbox::ProtectAgentFromOomKiller(); !s.ok()) Log(LogLevel::kWarn, std::string(s.message()));

  absl::StatusOr<AgentConfig> config = LoadAgentConfig(flags.config_path);
  if (!config.ok()) return Fail(config.status());
  if (!flags.socket.empty()) config->unix_socket = flags.socket;
  if (!flags.metrics_address.empty()) config->metrics_address = flags.metrics_address;

  absl::StatusOr<std::map<int, sandbox::Policy>> policies = LoadPolicies(*config);
  if (!policies.ok()) return Fail(policies.status());
  absl::StatusOr<std::string> init = LocateInit(config->init_path);
  if (!init.ok()) return Fail(init.status());

  std::vector<std::string> warnings;
  absl::StatusOr<sandbox::CgroupLayout> layout = sandbox::PrepareCgroupLayout();
  if (!layout.ok()) {
    if (geteuid() == 0) return Fail(Annotate(layout.status(), "cgroups"));
    warnings.push_back(absl::StrCat("rootless: cgroup limits are NOT enforced: ", layout.status().message()));
    Log(LogLevel::kWarn, warnings.back());
  }

  Metrics metrics;
  std::unique_ptr<MetricsServer> metrics_server;
  if (config->metrics_address != "off") {
    absl::StatusOr<std::unique_ptr<MetricsServer>> started = MetricsServer::Start(config->metrics_address, &metrics);
    if (!started.ok()) return Fail(started.status());
    metrics_server = std::move(*started);
  }

  // The sessions' cgroups a previous agent on this state dir left behind go first.
  if (absl::Status s = MkdirAll(config->state_dir, 0700); !s.ok()) return Fail(s);
  size_t recovered = 0;
  absl::StatusOr<std::unique_ptr<CgroupLedger>> ledger =
      CgroupLedger::Open(config->state_dir + "/cgroups", layout.ok() ? &*layout : nullptr, &recovered);
  if (!ledger.ok()) return Fail(ledger.status());
  if (recovered > 0) {
    Log(LogLevel::kWarn, "removed the cgroups of sessions that died with the previous agent",
        {{"count", absl::StrCat(recovered)}});
  }

  SessionManager::Options mo;
  mo.ledger = ledger->get();
  mo.max_sessions = config->max_sessions;
  mo.warm_browsers = config->warm_browsers;
  mo.egress_deny = config->egress_deny;
  mo.default_ttl = config->default_ttl;
  mo.default_idle_timeout = config->default_idle_timeout;
  mo.init_path = *init;
  mo.cgroups = layout.ok() ? &*layout : nullptr;
  mo.warnings = warnings;
  mo.policies = std::move(*policies);
  mo.metrics = &metrics;
  auto sessions = std::make_unique<SessionManager>(std::move(mo));
  metrics.SetActiveSessions([raw = sessions.get()] { return raw->active(); });
  metrics.SetWarmBrowsers([raw = sessions.get()] { return raw->warm_count(); });

  SandboxesService::Options so;
  so.sessions = sessions.get();
  so.metrics = &metrics;
  so.bearer_token_file = config->bearer_token_file;
  SandboxesService service(so);

  const std::string socket_dir = config->unix_socket.substr(0, config->unix_socket.rfind('/'));
  if (absl::Status s = MkdirAll(socket_dir, 0755); !s.ok()) return Fail(s);
  if (absl::Status s = ClaimSocketPath(config->unix_socket); !s.ok()) return Fail(s);

  std::unique_ptr<FleetAgent> fleet;
  if (!config->fleet.control_plane.empty()) {
    FleetAgent::Options fo;
    fo.fleet = config->fleet;
    fo.outbox_dir = config->state_dir + "/outbox";
    fo.sessions = sessions.get();
    fo.metrics = &metrics;
    absl::StatusOr<std::unique_ptr<FleetAgent>> started = FleetAgent::Start(std::move(fo));
    if (!started.ok()) return Fail(Annotate(started.status(), "fleet mode"));
    fleet = std::move(*started);
  }

  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection (grpc.reflection.v1alpha; Debian's gRPC 1.51 has no v1), so grpcurl-like tools and
  // dynamic clients can discover the API. NOTE: called explicitly: libgrpc++_reflection is linked from its
  // static archive, where the plugin's self-registering initializer would be dropped. It serves the API's
  // schema only (what proto/ publishes); every Sandboxes call still needs the bearer token on TCP.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix://" + config->unix_socket, grpc::InsecureServerCredentials());
  // The TCP address is ours (agent/mcp/mcp_listener.h): HTTP/2 connections go on to this server, HTTP/1.1
  // ones to the MCP endpoint /mcp.
  int tcp_port = 0;
  std::unique_ptr<mcp::TcpListener> tcp;
  if (!config->tcp_address.empty()) {
    absl::StatusOr<std::unique_ptr<mcp::TcpListener>> listening =
        mcp::TcpListener::Listen(config->tcp_address, mcp::TcpListener::Options(), &tcp_port);
    if (!listening.ok()) return Fail(listening.status());
    tcp = std::move(*listening);
  }
  builder.SetMaxReceiveMessageSize(4 << 20);
  // Bulk output and file chunks are 256 KiB messages: larger HTTP/2 frames (when the client accepts them)
  // and a larger write buffer cut per-frame work.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 4 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) return Fail(absl::UnavailableError(absl::StrCat("cannot listen on ", config->unix_socket)));
  chmod(config->unix_socket.c_str(), 0660);
  // MCP over HTTP drives sessions through this server's own Sandboxes API, in process: every check of the
  // gRPC path applies (the HTTP side checks the bearer token itself, before anything else).
  std::shared_ptr<grpc::Channel> inproc = server->InProcessChannel(grpc::ChannelArguments());
  std::unique_ptr<duvo::sandbox::v1::Sandboxes::Stub> inproc_stub = duvo::sandbox::v1::Sandboxes::NewStub(inproc);
  std::unique_ptr<mcp::McpHttpServer> mcp_http;
  if (tcp) {
    mcp::McpHttpServer::Options ho;
    ho.stub = inproc_stub.get();
    ho.bearer_token_file = config->bearer_token_file;
    ho.max_sessions = std::max<size_t>(1, config->max_sessions);
    ho.create.set_kind(duvo::sandbox::v1::FILE);
    (*ho.create.mutable_labels())["client"] = "mcp-http";
    mcp_http = std::make_unique<mcp::McpHttpServer>(std::move(ho));
    tcp->Start(server.get(), mcp_http.get());
  }
  // The health service alone on TCP, for probes (Kubernetes grpc liveness/readiness): no API, no auth.
  std::unique_ptr<grpc::Server> health_server;
  ProbeHealthService probe_health;
  if (!config->health_address.empty()) {
    grpc::EnableDefaultHealthCheckService(false);  // this server carries ProbeHealthService instead
    grpc::ServerBuilder hb;
    int health_port = 0;
    hb.AddListeningPort(config->health_address, grpc::InsecureServerCredentials(), &health_port);
    hb.RegisterService(&probe_health);
    health_server = hb.BuildAndStart();
    if (!health_server || health_port == 0) {
      return Fail(absl::UnavailableError(absl::StrCat("health_address: cannot listen on ", config->health_address)));
    }
    Log(LogLevel::kInfo, "health service", {{"address", config->health_address}, {"port", absl::StrCat(health_port)}});
  }
  Log(LogLevel::kInfo, "serving",
      {{"socket", config->unix_socket},
       {"tcp", config->tcp_address.empty() ? "" : absl::StrCat(config->tcp_address, " (port ", tcp_port, ")")},
       {"metrics", metrics_server ? absl::StrCat("127.0.0.1:", metrics_server->port()) : "off"}});

  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      Reload(flags, *config, sessions.get(), fleet.get());
      continue;
    }
    Log(LogLevel::kInfo, "shutting down", {{"signal", strsignal(sig)}});
    break;
  }
  // Probes see NOT_SERVING from here on.
  if (server->GetHealthCheckService() != nullptr) server->GetHealthCheckService()->Shutdown();
  probe_health.SetNotServing();
  // MCP first: its calls are canceled and its sessions Deleted while the gRPC server still serves them.
  if (tcp) tcp->Stop();
  mcp_http.reset();
  if (fleet) {
    // SIGTERM drains: running sessions get the grace period, then their outcomes are reported.
    const size_t undelivered = fleet->Drain(config->fleet.drain_grace);
    if (undelivered > 0) {
      Log(LogLevel::kWarn, "outcomes left in the outbox for the next start", {{"count", absl::StrCat(undelivered)}});
    }
    fleet.reset();
  }
  sessions->CancelAll("the agent is shutting down");
  Log(LogLevel::kInfo, "sessions canceled");
  // Streams of canceled sessions end by themselves; anything still in flight after a second is cut off.
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  Log(LogLevel::kInfo, "server shut down");
  server->Wait();
  if (health_server) health_server->Shutdown(std::chrono::system_clock::now());
  // The gauges must not call into the session manager once it is gone.
  metrics.SetActiveSessions(nullptr);
  metrics.SetWarmBrowsers(nullptr);
  sessions.reset();
  unlink(config->unix_socket.c_str());
  Log(LogLevel::kInfo, "stopped");
  // Every session, jail and cgroup is gone and the socket removed. NOTE: gRPC's own teardown
  // (grpc_shutdown, run when the builder's credentials go) can wait up to 10 s for an executor thread
  // parked in a poller timeout; nothing of ours is left for it to clean, so leave now.
  fflush(nullptr);
  _exit(0);
}

}  // namespace sbx::agent
