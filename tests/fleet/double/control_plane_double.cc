#include "tests/fleet/double/control_plane_double.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace sbx::testing {
namespace {

namespace v1 = ::duvo::sandbox::v1;

constexpr std::chrono::milliseconds kMaxLongPoll{30000};
// How often waits re-check what no condition variable signals (a client's cancellation).
constexpr absl::Duration kPollSlice = absl::Milliseconds(20);

// Equal strings in time that depends only on their lengths.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

// Everything the double holds for one lease. Guarded by ControlPlaneDouble::mu_; never removed, so pointers
// into leases_ stay valid.
struct ControlPlaneDouble::LeaseState {
  std::string lease_id;
  std::string request;
  std::optional<int> kind;  // the request's kind, when it parses
  uint64_t ttl_ms = 0;
  int grants = 0;
  std::string agent_id;
  std::string outstanding_agent;  // counted in this agent's `outstanding` ("" = not counted)
  std::string session_id;
  std::optional<std::string> revoked;
  bool no_renew = false;
  std::vector<v1::SessionCommand> commands;
  std::map<uint64_t, v1::Event> events;
  uint64_t contiguous = 0;
  int gaps = 0;
  int attaches = 0;
  int commands_sent = 0;
  std::vector<v1::CommandError> command_errors;
  int outcome_reports = 0;
  std::optional<v1::ReportOutcomeRequest> outcome;
  std::optional<v1::ReportOutcomeRequest> last_report;
  std::chrono::steady_clock::time_point enqueued, first_granted, outcome_at;
  std::chrono::steady_clock::time_point expires;  // while outstanding: the grant or last renewal plus the ttl
  bool refused = false;
  bool expired = false;
};

// The generated service; a fresh one per server (Restart builds a new server).
class ControlPlaneDouble::Service final : public v1::WorkerGateway::Service {
 public:
  explicit Service(ControlPlaneDouble* owner) : owner_(owner) {}
  grpc::Status Lease(grpc::ServerContext* ctx, const v1::LeaseRequest* request,
                     v1::LeaseResponse* response) override {
    return owner_->DoLease(ctx, *request, response);
  }
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    return owner_->DoHeartbeat(ctx, *request, response);
  }
  grpc::Status Attach(grpc::ServerContext* ctx,
                      grpc::ServerReaderWriter<v1::ControlMessage, v1::AgentMessage>* stream) override {
    return owner_->DoAttach(ctx, stream);
  }
  grpc::Status ReportOutcome(grpc::ServerContext* ctx, const v1::ReportOutcomeRequest* request,
                             v1::ReportOutcomeResponse*) override {
    return owner_->DoReportOutcome(ctx, *request);
  }

 private:
  ControlPlaneDouble* const owner_;
};

ControlPlaneDouble::ControlPlaneDouble(DoubleOptions options) : options_(std::move(options)) {
  token_ = options_.token;
}

absl::StatusOr<std::unique_ptr<ControlPlaneDouble>> ControlPlaneDouble::Start(DoubleOptions options) {
  const size_t colon = options.address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == options.address.size()) {
    return absl::InvalidArgumentError("address must be host:port, got \"" + options.address + "\"");
  }
  int port = 0;
  for (char c : options.address.substr(colon + 1)) {
    if (c < '0' || c > '9' || port > 65535) {
      return absl::InvalidArgumentError("bad port in \"" + options.address + "\"");
    }
    port = port * 10 + (c - '0');
  }
  if (port > 65535) return absl::InvalidArgumentError("bad port in \"" + options.address + "\"");
  if (options.server_cert_pem.empty() != options.server_key_pem.empty()) {
    return absl::InvalidArgumentError("TLS needs both server_cert_pem and server_key_pem");
  }
  if (!options.client_ca_pem.empty() && options.server_cert_pem.empty()) {
    return absl::InvalidArgumentError("client_ca_pem (mTLS) needs TLS");
  }
  std::unique_ptr<ControlPlaneDouble> cp(new ControlPlaneDouble(std::move(options)));
  cp->host_ = cp->options_.address.substr(0, colon);
  cp->port_ = port;
  {
    absl::MutexLock lock(&cp->lifecycle_mu_);
    if (absl::Status status = cp->StartServer(); !status.ok()) return status;
  }
  if (cp->options_.expire_grace_ms > 0) {
    cp->expirer_ = std::jthread([raw = cp.get()](std::stop_token stop) { raw->ExpireLoop(stop); });
  }
  return cp;
}

absl::Status ControlPlaneDouble::StartServer() {
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options_.server_cert_pem.empty()) {
    grpc::SslServerCredentialsOptions ssl(options_.client_ca_pem.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_root_certs = options_.client_ca_pem;
    ssl.pem_key_cert_pairs.push_back({options_.server_key_pem, options_.server_cert_pem});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  auto service = std::make_unique<Service>(this);
  grpc::ServerBuilder builder;
  int selected = 0;
  builder.AddListeningPort(host_ + ":" + std::to_string(port_), creds, &selected);
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(options_.max_receive_bytes, INT32_MAX)));
  // A second double (or a stale one) on an explicit port must fail to bind, not share the port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected == 0) {
    return absl::UnavailableError("cannot serve on " + host_ + ":" + std::to_string(port_));
  }
  port_ = selected;
  service_ = std::move(service);
  server_ = std::move(server);
  return absl::OkStatus();
}

ControlPlaneDouble::~ControlPlaneDouble() {
  expirer_.request_stop();
  if (expirer_.joinable()) expirer_.join();
  Stop();
}

void ControlPlaneDouble::ExpireLoop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    absl::MutexLock lock(&mu_);
    if (stopping_) continue;  // the clock stops while the server is down
    const auto now = std::chrono::steady_clock::now();
    const auto grace = std::chrono::milliseconds(options_.expire_grace_ms);
    for (size_t i = 0, n = lease_order_.size(); i < n; ++i) {  // EndLocked may requeue: appends
      LeaseState& lease = *leases_.at(lease_order_[i]);
      if (lease.outstanding_agent.empty() || now < lease.expires + grace) continue;
      v1::ReportOutcomeRequest expired;
      expired.set_lease_id(lease.lease_id);
      expired.mutable_outcome()->set_status(v1::Outcome::FAILED);
      expired.mutable_outcome()->set_reason("lease_expired");
      expired.mutable_outcome()->set_message("neither renewed nor reported before its ttl (the double)");
      lease.outcome = expired;
      lease.outcome_at = now;
      ++outcomes_;
      EndLocked(lease, /*expired=*/true);
    }
  }
}

void ControlPlaneDouble::EndLocked(LeaseState& lease, bool expired) {
  if (expired) {
    lease.expired = true;
  } else {
    lease.refused = true;
  }
  if (!lease.outstanding_agent.empty()) {
    --agents_[lease.outstanding_agent].outstanding;
    lease.outstanding_agent.clear();
  }
  if (options_.requeue_ended) EnqueueLocked(lease.request, lease.ttl_ms, /*queue=*/true);
  BumpLocked();
}

std::string ControlPlaneDouble::target() const { return host_ + ":" + std::to_string(port_); }

void ControlPlaneDouble::Stop() {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  if (server_ == nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;  // long polls answer, Attach writers end
    for (grpc::ServerContext* ctx : attach_contexts_) ctx->TryCancel();
    BumpLocked();
  }
  // A deadline of now cancels every call still in flight; Shutdown returns once every handler has returned.
  server_->Shutdown(std::chrono::system_clock::now());
  server_->Wait();
  server_.reset();
  service_.reset();
}

absl::Status ControlPlaneDouble::Restart() {
  absl::MutexLock lifecycle(&lifecycle_mu_);
  if (server_ != nullptr) return absl::OkStatus();
  {
    absl::MutexLock lock(&mu_);
    stopping_ = false;
    // Agents get their ttl again to reach the control plane that came back.
    const auto now = std::chrono::steady_clock::now();
    for (auto& [id, lease] : leases_) {
      if (!lease->outstanding_agent.empty()) {
        lease->expires = std::max(lease->expires, now + std::chrono::milliseconds(lease->ttl_ms));
      }
    }
  }
  return StartServer();
}

void ControlPlaneDouble::DropStreams() {
  absl::MutexLock lock(&mu_);
  for (grpc::ServerContext* ctx : attach_contexts_) ctx->TryCancel();
}

void ControlPlaneDouble::SetToken(std::string token) {
  absl::MutexLock lock(&mu_);
  token_ = std::move(token);
}

std::string ControlPlaneDouble::Enqueue(const v1::SandboxRequest& request, uint64_t ttl_ms) {
  return EnqueueRaw(request.SerializeAsString(), ttl_ms);
}

std::string ControlPlaneDouble::EnqueueRaw(std::string request_bytes, uint64_t ttl_ms) {
  absl::MutexLock lock(&mu_);
  return EnqueueLocked(std::move(request_bytes), ttl_ms, /*queue=*/true);
}

std::string ControlPlaneDouble::EnqueueLocked(std::string request_bytes, uint64_t ttl_ms, bool queue) {
  auto lease = std::make_unique<LeaseState>();
  v1::SandboxRequest parsed;
  if (parsed.ParseFromString(request_bytes)) lease->kind = parsed.kind();
  lease->request = std::move(request_bytes);
  lease->ttl_ms = ttl_ms == 0 ? options_.lease_ttl_ms : ttl_ms;
  lease->enqueued = std::chrono::steady_clock::now();
  lease->lease_id = "l-" + std::to_string(next_lease_++);
  std::string id = lease->lease_id;
  if (queue) queue_.push_back(Grant{id});
  lease_order_.push_back(id);
  leases_.emplace(id, std::move(lease));
  BumpLocked();
  return id;
}

std::vector<std::string> ControlPlaneDouble::GrantStorm(int n, const v1::SandboxRequest& request) {
  const std::string bytes = request.SerializeAsString();
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (int i = 0; i < n; ++i) ids.push_back(EnqueueLocked(bytes, 0, /*queue=*/false));
  storm_.insert(storm_.end(), ids.begin(), ids.end());
  BumpLocked();
  return ids;
}

void ControlPlaneDouble::LoseNextLeaseResponses(int count) {
  absl::MutexLock lock(&mu_);
  lose_lease_responses_ = count;
}

void ControlPlaneDouble::GrantAgain(const std::string& lease_id) {
  absl::MutexLock lock(&mu_);
  if (leases_.count(lease_id) == 0) return;
  queue_.push_back(Grant{lease_id});
  BumpLocked();
}

void ControlPlaneDouble::GrantAgainTo(const std::string& lease_id, const std::string& agent_id) {
  absl::MutexLock lock(&mu_);
  if (leases_.count(lease_id) == 0) return;
  queue_.push_back(Grant{lease_id, agent_id});
  BumpLocked();
}

void ControlPlaneDouble::FailNext(Method m, grpc::StatusCode code, int count,
                                  std::chrono::milliseconds retry_after) {
  absl::MutexLock lock(&mu_);
  faults_[m] = Fault{code, count, retry_after};
}

void ControlPlaneDouble::Revoke(const std::string& lease_id, std::string reason) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  it->second->revoked = std::move(reason);
  BumpLocked();
}

void ControlPlaneDouble::StopRenewing(const std::string& lease_id) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  it->second->no_renew = true;
  BumpLocked();
}

void ControlPlaneDouble::SendCommand(const std::string& lease_id, v1::SessionCommand command) {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return;
  it->second->commands.push_back(std::move(command));
  BumpLocked();
}

void ControlPlaneDouble::SetAttachFault(AttachFault fault) {
  absl::MutexLock lock(&mu_);
  attach_fault_ = fault;
  BumpLocked();
}

void ControlPlaneDouble::SendRawCommand(const std::string& lease_id, const std::string& command_bytes) {
  // The bytes ride as the unknown fields of an empty SessionCommand: they serialize back exactly as given,
  // with no UTF-8 check on the way.
  v1::SessionCommand command;
  if (!command.GetReflection()->MutableUnknownFields(&command)->ParseFromString(command_bytes)) return;
  SendCommand(lease_id, std::move(command));
}

// --- Observations ------------------------------------------------------------------------------------------

ControlPlaneDouble::LeaseView ControlPlaneDouble::ViewLocked(const LeaseState& lease) const {
  LeaseView view;
  view.lease_id = lease.lease_id;
  view.agent_id = lease.agent_id;
  view.session_id = lease.session_id;
  view.request = lease.request;
  view.ttl_ms = lease.ttl_ms;
  view.grants = lease.grants;
  view.outcome_reports = lease.outcome_reports;
  view.outcome = lease.outcome;
  view.last_report = lease.last_report;
  view.events.reserve(lease.events.size());
  for (const auto& [seq, event] : lease.events) view.events.push_back(event);
  view.contiguous_seq = lease.contiguous;
  view.gaps = lease.gaps;
  view.attaches = lease.attaches;
  view.command_errors = lease.command_errors;
  view.commands_sent = lease.commands_sent;
  view.enqueued = lease.enqueued;
  view.first_granted = lease.first_granted;
  view.outcome_at = lease.outcome_at;
  view.refused = lease.refused;
  view.expired = lease.expired;
  return view;
}

std::optional<ControlPlaneDouble::LeaseView> ControlPlaneDouble::Lease(const std::string& lease_id) const {
  absl::MutexLock lock(&mu_);
  auto it = leases_.find(lease_id);
  if (it == leases_.end()) return std::nullopt;
  return ViewLocked(*it->second);
}

std::vector<ControlPlaneDouble::LeaseView> ControlPlaneDouble::Leases() const {
  absl::MutexLock lock(&mu_);
  std::vector<LeaseView> views;
  views.reserve(lease_order_.size());
  for (const std::string& id : lease_order_) views.push_back(ViewLocked(*leases_.at(id)));
  return views;
}

bool ControlPlaneDouble::WaitForOutcomes(size_t n, std::chrono::milliseconds timeout) const {
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  absl::MutexLock lock(&mu_);
  while (outcomes_ < n) {
    if (cv_.WaitWithDeadline(&mu_, deadline) && outcomes_ < n) return false;
  }
  return true;
}

bool ControlPlaneDouble::WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) const {
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  while (true) {
    uint64_t seen;
    {
      absl::MutexLock lock(&mu_);
      seen = version_;
    }
    if (pred()) return true;
    const absl::Time now = absl::Now();
    if (now >= deadline) return false;
    absl::MutexLock lock(&mu_);
    const absl::Time until = std::min(deadline, now + kPollSlice);
    while (version_ == seen && !cv_.WaitWithDeadline(&mu_, until)) {
    }
  }
}

std::map<std::string, ControlPlaneDouble::AgentView> ControlPlaneDouble::Agents() const {
  absl::MutexLock lock(&mu_);
  return agents_;
}

std::map<ControlPlaneDouble::Method, int> ControlPlaneDouble::Calls() const {
  absl::MutexLock lock(&mu_);
  return calls_;
}

int ControlPlaneDouble::unauthenticated() const {
  absl::MutexLock lock(&mu_);
  return unauthenticated_;
}

int ControlPlaneDouble::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

void ControlPlaneDouble::OnEvent(EventHook hook) {
  absl::MutexLock lock(&mu_);
  hook_ = hook ? std::make_shared<const EventHook>(std::move(hook)) : nullptr;
}

void ControlPlaneDouble::OnRequest(RequestHook hook) {
  absl::MutexLock lock(&mu_);
  request_hook_ = hook ? std::make_shared<const RequestHook>(std::move(hook)) : nullptr;
}

void ControlPlaneDouble::CallRequestHook(Method m, const google::protobuf::Message& request) {
  std::shared_ptr<const RequestHook> hook;
  {
    absl::MutexLock lock(&mu_);
    hook = request_hook_;
  }
  if (hook != nullptr) (*hook)(m, request);
}

// --- RPCs --------------------------------------------------------------------------------------------------

grpc::Status ControlPlaneDouble::Admit(grpc::ServerContext* ctx, Method m) {
  absl::MutexLock lock(&mu_);
  if (!token_.empty()) {
    const auto& metadata = ctx->client_metadata();
    auto it = metadata.find("authorization");
    const std::string want = "Bearer " + token_;
    if (it == metadata.end() ||
        !ConstantTimeEquals(std::string_view(it->second.data(), it->second.size()), want)) {
      ++unauthenticated_;
      BumpLocked();
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing or wrong bearer token");
    }
  }
  ++calls_[m];
  BumpLocked();
  auto fault = faults_.find(m);
  if (fault == faults_.end() || fault->second.remaining <= 0) return grpc::Status::OK;
  --fault->second.remaining;
  const grpc::StatusCode code = fault->second.code;
  const std::chrono::milliseconds retry_after = fault->second.retry_after;
  const std::string message = "injected fault";
  if (retry_after.count() <= 0) return grpc::Status(code, message);
  google::rpc::Status details;
  details.set_code(static_cast<int>(code));
  details.set_message(message);
  google::rpc::RetryInfo retry;
  retry.mutable_retry_delay()->set_seconds(retry_after.count() / 1000);
  retry.mutable_retry_delay()->set_nanos(static_cast<int32_t>((retry_after.count() % 1000) * 1000000));
  details.add_details()->PackFrom(retry);
  ctx->AddTrailingMetadata("retry-after", std::to_string((retry_after.count() + 999) / 1000));
  return grpc::Status(code, message, details.SerializeAsString());
}

std::vector<size_t> ControlPlaneDouble::GrantableLocked(const v1::LeaseRequest& request) {
  uint64_t total = 0;
  std::map<int, uint64_t> per_kind;
  for (const v1::KindCapacity& capacity : request.capacity()) {
    total += capacity.free();
    per_kind[capacity.kind()] += capacity.free();
  }
  if (request.max_sessions() > 0) {
    auto agent = agents_.find(request.agent_id());
    const int outstanding = agent == agents_.end() ? 0 : agent->second.outstanding;
    const uint64_t room = outstanding >= static_cast<int>(request.max_sessions())
                              ? 0
                              : request.max_sessions() - static_cast<uint32_t>(outstanding);
    total = std::min(total, room);
  }
  std::vector<size_t> picked;
  for (size_t i = 0; i < queue_.size() && total > 0; ++i) {
    if (!queue_[i].only_agent.empty() && queue_[i].only_agent != request.agent_id()) continue;
    const LeaseState& lease = *leases_.at(queue_[i].lease_id);
    if (lease.kind.has_value()) {
      auto kind = per_kind.find(*lease.kind);
      if (kind != per_kind.end()) {
        if (kind->second == 0) continue;
        --kind->second;
      }
    }
    --total;
    picked.push_back(i);
  }
  return picked;
}

grpc::Status ControlPlaneDouble::DoLease(grpc::ServerContext* ctx, const v1::LeaseRequest& request,
                                         v1::LeaseResponse* response) {
  if (grpc::Status status = Admit(ctx, Method::kLease); !status.ok()) return status;
  const absl::Time deadline =
      absl::Now() + absl::FromChrono(std::min(std::chrono::milliseconds(request.wait_ms()), kMaxLongPoll));
  absl::MutexLock lock(&mu_);
  ++agents_[request.agent_id()].lease_calls_open;
  // Every return below is under mu_.
  absl::Cleanup closed = [&] {
    --agents_[request.agent_id()].lease_calls_open;
    BumpLocked();
  };
  {
    AgentView& agent = agents_[request.agent_id()];
    ++agent.lease_calls;
    agent.max_sessions = request.max_sessions();
    agent.labels = std::map<std::string, std::string>(request.labels().begin(), request.labels().end());
    uint64_t free = 0, warm = 0;
    agent.warm_by_kind.clear();
    for (const v1::KindCapacity& capacity : request.capacity()) {
      free += capacity.free();
      warm += capacity.warm();
      agent.warm_by_kind[capacity.kind()] = capacity.warm();
    }
    agent.warm_advertised = static_cast<uint32_t>(std::min<uint64_t>(warm, UINT32_MAX));
    agent.max_free_advertised =
        std::max<uint64_t>(agent.max_free_advertised, std::min<uint64_t>(free, UINT32_MAX));
    BumpLocked();
  }
  std::vector<size_t> picked;
  std::vector<std::string> storm;
  while (true) {
    // A poller that is gone gets nothing: what it would be granted could never reach it.
    if (stopping_ || ctx->IsCancelled()) break;
    if (!storm_.empty()) {
      storm.swap(storm_);
      break;
    }
    picked = GrantableLocked(request);
    if (!picked.empty()) break;
    const absl::Time now = absl::Now();
    if (now >= deadline) break;
    cv_.WaitWithDeadline(&mu_, std::min(deadline, now + kPollSlice));
  }
  if (picked.empty() && storm.empty()) return grpc::Status::OK;
  const auto now = std::chrono::steady_clock::now();
  AgentView& agent = agents_[request.agent_id()];
  std::vector<std::string> granted = std::move(storm);
  for (size_t i : picked) granted.push_back(queue_[i].lease_id);
  for (const std::string& id : granted) {
    LeaseState& lease = *leases_.at(id);
    ++lease.grants;
    lease.expires = now + std::chrono::milliseconds(lease.ttl_ms);
    lease.agent_id = request.agent_id();
    if (lease.grants == 1) lease.first_granted = now;
    if (!lease.outcome.has_value() && lease.outstanding_agent.empty()) {
      lease.outstanding_agent = request.agent_id();
      ++agent.outstanding;
      agent.max_outstanding = std::max(agent.max_outstanding, agent.outstanding);
    }
    v1::LeaseGrant* grant = response->add_leases();
    grant->set_lease_id(lease.lease_id);
    grant->set_ttl_ms(lease.ttl_ms);
    grant->set_request(lease.request);
  }
  for (auto it = picked.rbegin(); it != picked.rend(); ++it) queue_.erase(queue_.begin() + *it);
  BumpLocked();
  if (lose_lease_responses_ > 0) {
    --lose_lease_responses_;
    response->Clear();
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "injected: the response was lost on the wire");
  }
  return grpc::Status::OK;
}

grpc::Status ControlPlaneDouble::DoHeartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest& request,
                                             v1::HeartbeatResponse* response) {
  if (grpc::Status status = Admit(ctx, Method::kHeartbeat); !status.ok()) return status;
  CallRequestHook(Method::kHeartbeat, request);
  absl::MutexLock lock(&mu_);
  AgentView& agent = agents_[request.agent_id()];
  ++agent.heartbeats;
  agent.refused_ids += request.refused_lease_ids_size();
  for (const std::string& id : request.refused_lease_ids()) {
    auto it = leases_.find(id);
    if (it != leases_.end() && it->second->outstanding_agent == request.agent_id()) {
      EndLocked(*it->second, /*expired=*/false);
    }
  }
  const auto now = std::chrono::steady_clock::now();
  for (const std::string& id : request.lease_ids()) {
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second->grants == 0) {
      v1::HeartbeatResponse::Revocation* revocation = response->add_revoked();
      revocation->set_lease_id(id);
      revocation->set_reason("unknown lease");
      continue;
    }
    const LeaseState& lease = *it->second;
    if (lease.revoked.has_value()) {
      v1::HeartbeatResponse::Revocation* revocation = response->add_revoked();
      revocation->set_lease_id(id);
      revocation->set_reason(*lease.revoked);
    } else if (!lease.no_renew) {
      v1::HeartbeatResponse::Renewal* renewal = response->add_renewed();
      renewal->set_lease_id(id);
      renewal->set_ttl_ms(lease.ttl_ms);
      if (!lease.outstanding_agent.empty()) it->second->expires = now + std::chrono::milliseconds(lease.ttl_ms);
    }
  }
  for (const std::string& id : lease_order_) {
    if (leases_.at(id)->outstanding_agent == request.agent_id()) response->add_held_lease_ids(id);
  }
  BumpLocked();
  return grpc::Status::OK;
}

bool ControlPlaneDouble::StoreEventLocked(LeaseState& lease, const v1::Event& event) {
  if (event.seq() <= lease.contiguous || !lease.events.emplace(event.seq(), event).second) return false;
  while (lease.events.count(lease.contiguous + 1) != 0) ++lease.contiguous;
  return true;
}

void ControlPlaneDouble::CallHook(const std::string& lease_id, const std::vector<v1::Event>& events) {
  if (events.empty()) return;
  std::shared_ptr<const EventHook> hook;
  {
    absl::MutexLock lock(&mu_);
    hook = hook_;
  }
  if (hook == nullptr) return;
  for (const v1::Event& event : events) (*hook)(lease_id, event);
}

grpc::Status ControlPlaneDouble::DoAttach(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::ControlMessage, v1::AgentMessage>* stream) {
  if (grpc::Status status = Admit(ctx, Method::kAttach); !status.ok()) return status;
  v1::AgentMessage message;
  if (!stream->Read(&message)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the stream ended before its hello");
  }
  if (!message.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first message must be a hello");
  }
  const std::string lease_id = message.hello().lease_id();

  // This stream's state, guarded by mu_: the writer sends acks and commands as they become due.
  struct StreamState {
    bool done = false;        // the reader ended: the writer ends too
    bool ack_due = false;     // an event arrived since the last ack
    size_t next_command = 0;  // the lease's commands before this index were written
  } state;
  LeaseState* lease = nullptr;
  uint64_t resume = 0;
  AttachFault fault = AttachFault::kNone;
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(lease_id);
    if (it == leases_.end() || it->second->grants == 0) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown lease " + lease_id);
    }
    if (stopping_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "shutting down");
    lease = it->second.get();
    ++lease->attaches;
    if (!message.hello().session_id().empty()) lease->session_id = message.hello().session_id();
    resume = lease->contiguous;
    attach_contexts_.insert(ctx);
    fault = attach_fault_;
    BumpLocked();
  }
  absl::Cleanup unregister = [this, ctx] {
    absl::MutexLock lock(&mu_);
    attach_contexts_.erase(ctx);
    BumpLocked();
  };
  if (fault != AttachFault::kNone) {
    if (fault == AttachFault::kStopReading) {
      v1::ControlMessage first;
      first.mutable_resume()->set_after_seq(resume);
      if (!stream->Write(first)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");
    }
    // A stalled control plane: no reads, no writes, until the agent gives up on the stream.
    absl::MutexLock lock(&mu_);
    while (!stopping_ && !ctx->IsCancelled()) cv_.WaitWithDeadline(&mu_, absl::Now() + kPollSlice);
    return grpc::Status(grpc::StatusCode::CANCELLED, "stream canceled");
  }

  v1::ControlMessage first;
  first.mutable_resume()->set_after_seq(resume);
  if (!stream->Write(first)) return grpc::Status(grpc::StatusCode::CANCELLED, "the stream broke");

  // The writer: the only thread that writes after the resume point (a sync stream allows one reader and one
  // writer at a time).
  std::jthread writer([this, lease, stream, &state] {
    while (true) {
      std::vector<v1::ControlMessage> batch;
      {
        absl::MutexLock lock(&mu_);
        while (!state.done && !stopping_ && !state.ack_due && state.next_command >= lease->commands.size()) {
          cv_.Wait(&mu_);
        }
        if (state.done || stopping_) return;
        if (state.ack_due) {
          state.ack_due = false;
          batch.emplace_back().set_ack_seq(lease->contiguous);
        }
        for (; state.next_command < lease->commands.size(); ++state.next_command) {
          *batch.emplace_back().mutable_command() = lease->commands[state.next_command];
          ++lease->commands_sent;
        }
        BumpLocked();
      }
      for (const v1::ControlMessage& out : batch) {
        if (!stream->Write(out)) return;  // broken: the reader sees it too
      }
    }
  });
  absl::Cleanup stop_writer = [this, &state, &writer] {
    {
      absl::MutexLock lock(&mu_);
      state.done = true;
      BumpLocked();
    }
    writer.join();
  };

  uint64_t last_on_stream = resume;
  while (stream->Read(&message)) {
    if (message.has_event()) {
      std::vector<v1::Event> fresh;
      {
        absl::MutexLock lock(&mu_);
        const uint64_t seq = message.event().seq();
        if (seq > resume) {
          if (seq != last_on_stream + 1) ++lease->gaps;
          last_on_stream = std::max(last_on_stream, seq);
        }
        if (StoreEventLocked(*lease, message.event())) fresh.push_back(message.event());
        state.ack_due = true;
        BumpLocked();
      }
      CallHook(lease_id, fresh);
    } else if (message.has_command_error()) {
      absl::MutexLock lock(&mu_);
      lease->command_errors.push_back(message.command_error());
      BumpLocked();
    }
  }
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "stream canceled");
  return grpc::Status::OK;
}

grpc::Status ControlPlaneDouble::DoReportOutcome(grpc::ServerContext* ctx,
                                                 const v1::ReportOutcomeRequest& request) {
  if (grpc::Status status = Admit(ctx, Method::kReportOutcome); !status.ok()) return status;
  CallRequestHook(Method::kReportOutcome, request);
  std::vector<v1::Event> fresh;
  {
    absl::MutexLock lock(&mu_);
    auto it = leases_.find(request.lease_id());
    if (it == leases_.end()) {
      // A lease the double never made: recorded all the same, so that a test can see it.
      auto lease = std::make_unique<LeaseState>();
      lease->lease_id = request.lease_id();
      lease->agent_id = request.agent_id();
      lease_order_.push_back(request.lease_id());
      it = leases_.emplace(request.lease_id(), std::move(lease)).first;
    }
    LeaseState& lease = *it->second;
    ++lease.outcome_reports;
    lease.last_report = request;
    if (!lease.outcome.has_value()) {
      lease.outcome = request;
      lease.outcome_at = std::chrono::steady_clock::now();
      if (lease.session_id.empty()) lease.session_id = request.session_id();
      for (const v1::Event& event : request.events()) {
        if (StoreEventLocked(lease, event)) fresh.push_back(event);
      }
      if (request.last_seq() > lease.contiguous) ++lease.gaps;
      if (!lease.outstanding_agent.empty()) {
        --agents_[lease.outstanding_agent].outstanding;
        lease.outstanding_agent.clear();
      }
      ++outcomes_;
    }
    BumpLocked();
  }
  CallHook(request.lease_id(), fresh);
  return grpc::Status::OK;
}

}  // namespace sbx::testing
