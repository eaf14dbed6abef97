#include "agent/daemon/daemon.h"

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

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/fleet/agent_config.h"
#include "agent/session/cgroup_ledger.h"
#include "agent/egress/egress_proxy.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/run/init_locator.h"
#include "agent/obs/log.h"
#include "agent/mcp/mcp_http.h"
#include "agent/obs/metrics.h"
#include "agent/session/session_manager.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/oom_score.h"
#include "sandbox/policy/policy_loader.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;

// The config's warm_files, warm_desktops and warm_browsers.
WarmPools WarmPoolsOf(const AgentConfig& config) {
  WarmPools warm;
  warm.files = config.warm_files;
  warm.desktops = config.warm_desktops;
  warm.browsers = config.warm_browsers;
  return warm;
}

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
void ReloadConfig(const ServeFlags& flags, const AgentConfig& running, SessionManager* sessions, FleetAgent* fleet) {
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
                   WarmPoolsOf(*config));
  if (fleet != nullptr) fleet->Reload(config->fleet);
  if (config->unix_socket != running.unix_socket || config->tcp_address != running.tcp_address ||
      config->state_dir != running.state_dir || config->metrics_address != running.metrics_address ||
      config->health_address != running.health_address || config->fleet.control_plane != running.fleet.control_plane) {
    Log(LogLevel::kWarn, "SIGHUP: listener, state_dir and control_plane changes take effect at the next restart");
  }
  Log(LogLevel::kInfo, "SIGHUP: configuration reloaded",
      {{"max_sessions", absl::StrCat(config->max_sessions)}, {"policy_dir", config->policy_dir}});
}

}  // namespace

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

Daemon::Daemon(ServeFlags flags) : flags_(std::move(flags)), probe_health_(std::make_unique<ProbeHealthService>()) {}

Daemon::~Daemon() = default;

absl::Status Daemon::Start() {
  // Signals are taken by sigwait in Run; block them before any thread exists so every thread inherits it.
  sigemptyset(&signals_);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&signals_, sig);
  pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
  signal(SIGPIPE, SIG_IGN);
  InitLogging();
  // When the host runs out of memory the kernel should kill a jail (each is set to 1000), not the agent that
  // holds every session. Without CAP_SYS_RESOURCE this cannot be done: one line says so, and serving goes on.
  if (absl::Status s = sandbox::ProtectAgentFromOomKiller(); !s.ok()) Log(LogLevel::kWarn, std::string(s.message()));

  RETURN_IF_ERROR(LoadConfig());
  RETURN_IF_ERROR(StartMetrics());
  RETURN_IF_ERROR(StartSessions());
  const std::string socket_dir = config_.unix_socket.substr(0, config_.unix_socket.rfind('/'));
  RETURN_IF_ERROR(MkdirAll(socket_dir, 0755));
  RETURN_IF_ERROR(ClaimSocketPath(config_.unix_socket));
  RETURN_IF_ERROR(StartFleet());
  RETURN_IF_ERROR(StartServer());
  RETURN_IF_ERROR(StartHealth());
  Log(LogLevel::kInfo, "serving",
      {{"socket", config_.unix_socket},
       {"tcp", config_.tcp_address.empty() ? "" : absl::StrCat(config_.tcp_address, " (port ", tcp_port_, ")")},
       {"metrics", metrics_server_ ? absl::StrCat("127.0.0.1:", metrics_server_->port()) : "off"}});
  return absl::OkStatus();
}

absl::Status Daemon::LoadConfig() {
  ASSIGN_OR_RETURN(config_, LoadAgentConfig(flags_.config_path));
  if (!flags_.socket.empty()) config_.unix_socket = flags_.socket;
  if (!flags_.metrics_address.empty()) config_.metrics_address = flags_.metrics_address;
  ASSIGN_OR_RETURN(policies_, LoadPolicies(config_));
  ASSIGN_OR_RETURN(init_path_, LocateInit(config_.init_path));
  absl::StatusOr<sandbox::CgroupLayout> layout = sandbox::PrepareCgroupLayout();
  if (!layout.ok()) {
    if (geteuid() == 0) return Annotate(layout.status(), "cgroups");
    warnings_.push_back(absl::StrCat("rootless: cgroup limits are NOT enforced: ", layout.status().message()));
    Log(LogLevel::kWarn, warnings_.back());
  } else {
    layout_ = std::move(*layout);
  }
  return absl::OkStatus();
}

absl::Status Daemon::StartMetrics() {
  if (config_.metrics_address == "off") return absl::OkStatus();
  ASSIGN_OR_RETURN(metrics_server_, MetricsServer::Start(config_.metrics_address, &metrics_));
  return absl::OkStatus();
}

absl::Status Daemon::StartSessions() {
  // The sessions' cgroups a previous agent on this state dir left behind go first.
  RETURN_IF_ERROR(MkdirAll(config_.state_dir, 0700));
  size_t recovered = 0;
  const sandbox::CgroupLayout* cgroups = layout_ ? &*layout_ : nullptr;
  ASSIGN_OR_RETURN(ledger_, CgroupLedger::Open(config_.state_dir + "/cgroups", cgroups, &recovered));
  if (recovered > 0) {
    Log(LogLevel::kWarn, "removed the cgroups of sessions that died with the previous agent",
        {{"count", absl::StrCat(recovered)}});
  }

  SessionManager::Options mo;
  mo.ledger = ledger_.get();
  mo.max_sessions = config_.max_sessions;
  mo.warm = WarmPoolsOf(config_);
  mo.egress_deny = config_.egress_deny;
  mo.default_ttl = config_.default_ttl;
  mo.default_idle_timeout = config_.default_idle_timeout;
  mo.init_path = init_path_;
  mo.cgroups = cgroups;
  mo.warnings = warnings_;
  mo.policies = std::move(policies_);
  mo.metrics = &metrics_;
  sessions_ = std::make_unique<SessionManager>(std::move(mo));
  metrics_.SetActiveSessions([raw = sessions_.get()] { return raw->active(); });
  metrics_.SetWarmSessions([raw = sessions_.get()](std::string_view kind) -> size_t {
    pb::SessionKind k = pb::SESSION_KIND_UNSPECIFIED;
    return pb::SessionKind_Parse(absl::AsciiStrToUpper(std::string(kind)), &k) ? raw->warm_count(k) : 0;
  });

  SandboxesService::Options so;
  so.sessions = sessions_.get();
  so.metrics = &metrics_;
  so.bearer_token_file = config_.bearer_token_file;
  service_ = std::make_unique<SandboxesService>(so);
  return absl::OkStatus();
}

absl::Status Daemon::StartFleet() {
  if (config_.fleet.control_plane.empty()) return absl::OkStatus();
  FleetAgent::Options fo;
  fo.fleet = config_.fleet;
  fo.outbox_dir = config_.state_dir + "/outbox";
  fo.sessions = sessions_.get();
  fo.metrics = &metrics_;
  absl::StatusOr<std::unique_ptr<FleetAgent>> started = FleetAgent::Start(std::move(fo));
  if (!started.ok()) return Annotate(started.status(), "fleet mode");
  fleet_ = std::move(*started);
  return absl::OkStatus();
}

absl::Status Daemon::StartServer() {
  grpc::EnableDefaultHealthCheckService(true);
  // Server reflection (grpc.reflection.v1alpha; Debian's gRPC 1.51 has no v1), so grpcurl-like tools and
  // dynamic clients can discover the API. NOTE: called explicitly: libgrpc++_reflection is linked from its
  // static archive, where the plugin's self-registering initializer would be dropped. It serves the API's
  // schema only (what proto/ publishes); every Sandboxes call still needs the bearer token on TCP.
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix://" + config_.unix_socket, grpc::InsecureServerCredentials());
  // The TCP address is ours (agent/daemon/mcp_listener.h): HTTP/2 connections go on to this server, HTTP/1.1
  // ones to the MCP endpoint /mcp.
  if (!config_.tcp_address.empty()) {
    ASSIGN_OR_RETURN(tcp_, mcp::TcpListener::Listen(config_.tcp_address, mcp::TcpListener::Options(), &tcp_port_));
  }
  builder.SetMaxReceiveMessageSize(4 << 20);
  // Bulk output and file chunks are 256 KiB messages: larger HTTP/2 frames (when the client accepts them)
  // and a larger write buffer cut per-frame work.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 4 << 20);
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  if (!server_) return absl::UnavailableError(absl::StrCat("cannot listen on ", config_.unix_socket));
  chmod(config_.unix_socket.c_str(), 0660);
  StartMcp();
  return absl::OkStatus();
}

// MCP over HTTP drives sessions through this server's own Sandboxes API, in process: every check of the
// gRPC path applies (the HTTP side checks the bearer token itself, before anything else).
void Daemon::StartMcp() {
  inproc_ = server_->InProcessChannel(grpc::ChannelArguments());
  inproc_stub_ = duvo::sandbox::v1::Sandboxes::NewStub(inproc_);
  if (!tcp_) return;
  mcp::McpHttpServer::Options ho;
  ho.stub = inproc_stub_.get();
  ho.bearer_token_file = config_.bearer_token_file;
  ho.max_sessions = std::max<size_t>(1, config_.max_sessions);
  ho.create.set_kind(duvo::sandbox::v1::FILE);
  (*ho.create.mutable_labels())["client"] = "mcp-http";
  mcp_http_ = std::make_unique<mcp::McpHttpServer>(std::move(ho));
  tcp_->Start(server_.get(), mcp_http_.get());
}

// The health service alone on TCP, for probes (Kubernetes grpc liveness/readiness): no API, no auth.
absl::Status Daemon::StartHealth() {
  if (config_.health_address.empty()) return absl::OkStatus();
  grpc::EnableDefaultHealthCheckService(false);  // this server carries ProbeHealthService instead
  grpc::ServerBuilder hb;
  int health_port = 0;
  hb.AddListeningPort(config_.health_address, grpc::InsecureServerCredentials(), &health_port);
  hb.RegisterService(probe_health_.get());
  health_server_ = hb.BuildAndStart();
  if (!health_server_ || health_port == 0) {
    return absl::UnavailableError(absl::StrCat("health_address: cannot listen on ", config_.health_address));
  }
  Log(LogLevel::kInfo, "health service", {{"address", config_.health_address}, {"port", absl::StrCat(health_port)}});
  return absl::OkStatus();
}

void Daemon::Run() {
  for (;;) {
    int sig = 0;
    if (sigwait(&signals_, &sig) != 0) continue;
    if (sig == SIGHUP) {
      ReloadConfig(flags_, config_, sessions_.get(), fleet_.get());
      continue;
    }
    Log(LogLevel::kInfo, "shutting down", {{"signal", strsignal(sig)}});
    return;
  }
}

void Daemon::Shutdown() {
  // Probes see NOT_SERVING from here on.
  if (server_->GetHealthCheckService() != nullptr) server_->GetHealthCheckService()->Shutdown();
  probe_health_->SetNotServing();
  // MCP first: its calls are canceled and its sessions Deleted while the gRPC server still serves them.
  if (tcp_) tcp_->Stop();
  mcp_http_.reset();
  if (fleet_) {
    // SIGTERM drains: running sessions get the grace period, then their outcomes are reported.
    const size_t undelivered = fleet_->Drain(config_.fleet.drain_grace);
    if (undelivered > 0) {
      Log(LogLevel::kWarn, "outcomes left in the outbox for the next start", {{"count", absl::StrCat(undelivered)}});
    }
    fleet_.reset();
  }
  sessions_->CancelAll("the agent is shutting down");
  Log(LogLevel::kInfo, "sessions canceled");
  // Streams of canceled sessions end by themselves; anything still in flight after a second is cut off.
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  Log(LogLevel::kInfo, "server shut down");
  server_->Wait();
  if (health_server_) health_server_->Shutdown(std::chrono::system_clock::now());
  // The gauges must not call into the session manager once it is gone.
  metrics_.SetActiveSessions(nullptr);
  metrics_.SetWarmSessions(nullptr);
  sessions_.reset();
  unlink(config_.unix_socket.c_str());
  Log(LogLevel::kInfo, "stopped");
}

}  // namespace sbx::agent
