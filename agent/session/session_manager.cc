#include "agent/session/session_manager.h"

#include <algorithm>
#include <optional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "agent/obs/log.h"
#include "agent/session/cgroup_ledger.h"
#include "sandbox/policy/policy_builder.h"
#include "sandbox/policy/policy_loader.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

// Only limits may be narrowed by a request; anything else in its policy is refused by name.
absl::StatusOr<sandbox::PolicyNarrowing> NarrowingFromRequest(const pb::SandboxPolicy& policy) {
  pb::SandboxPolicy rest = policy;
  rest.clear_limits();
  if (rest.ByteSizeLong() != 0) {
    std::vector<const google::protobuf::FieldDescriptor*> fields;
    rest.GetReflection()->ListFields(rest, &fields);
    return absl::PermissionDeniedError(absl::StrCat(
        "policy.", fields.empty() ? "?" : fields[0]->name(),
        ": a request may only narrow policy.limits; the host's policy decides the rest"));
  }
  sandbox::PolicyNarrowing n;
  const pb::Limits& l = policy.limits();
  if (l.has_memory_max_bytes()) n.memory_max_bytes = l.memory_max_bytes();
  if (l.has_pids_max()) n.pids_max = l.pids_max();
  if (l.has_cpu_millicores()) n.cpu_millicores = l.cpu_millicores();
  if (l.has_wall_time_limit_ms()) n.wall_time_limit_ms = l.wall_time_limit_ms();
  if (l.has_open_files_max()) n.open_files_max = l.open_files_max();
  if (l.has_file_size_max_bytes()) n.file_size_max_bytes = l.file_size_max_bytes();
  if (l.has_output_max_bytes()) n.output_max_bytes = l.output_max_bytes();
  if (l.has_event_log_max_events()) n.event_log_max_events = l.event_log_max_events();
  if (l.has_event_log_max_bytes()) n.event_log_max_bytes = l.event_log_max_bytes();
  if (l.has_file_events_max_bytes()) n.file_events_max_bytes = l.file_events_max_bytes();
  if (l.has_display_max_width()) n.display_max_width = l.display_max_width();
  if (l.has_display_max_height()) n.display_max_height = l.display_max_height();
  if (l.has_kill_on_pids_limit()) {
    return absl::PermissionDeniedError("policy.limits.kill_on_pids_limit: set by the host's policy");
  }
  return n;
}

// A request's egress section, checked against the host policy's rules (the ceiling): each request allow rule
// must be covered by a host allow rule, each ask rule by a host allow or ask rule (asking about a destination
// the host asks about is no wider). PermissionDenied names the rule; InvalidArgument a malformed one.
absl::StatusOr<SessionEgress> EgressFromRequest(const sandbox::Policy& host, const pb::EgressRequest& request) {
  if (host.spec().network != sandbox::NetworkMode::kEgress) {
    return absl::PermissionDeniedError(
        "egress: the host's policy for this kind has no egress network (mode EGRESS); a request cannot add one");
  }
  constexpr int kMaxRules = 1024;
  if (request.allow_size() > kMaxRules || request.ask_size() > kMaxRules) {
    return absl::InvalidArgumentError(absl::StrCat("egress: at most ", kMaxRules, " allow and ", kMaxRules, " ask rules"));
  }
  if (!pb::EgressRequest::Default_IsValid(request.default_())) {
    return absl::InvalidArgumentError(absl::StrCat("egress.default: ", request.default_(), " is not DENY or ASK"));
  }
  SessionEgress out;
  out.allow.assign(request.allow().begin(), request.allow().end());
  out.ask.assign(request.ask().begin(), request.ask().end());
  out.default_ask = request.default_();
  out.ceiling_allow = host.spec().egress_allow;
  out.ceiling_ask = host.spec().egress_ask;
  // The host's rules parsed when the agent started (serve_command.cc); a failure here is the agent's bug.
  ASSIGN_OR_RETURN(std::vector<EgressRule> host_allow, ParseEgressRules(out.ceiling_allow));
  ASSIGN_OR_RETURN(std::vector<EgressRule> host_ask, ParseEgressRules(out.ceiling_ask));
  const auto check = [&](const std::vector<std::string>& rules, const char* field, bool ask) -> absl::Status {
    for (size_t i = 0; i < rules.size(); ++i) {
      absl::StatusOr<EgressRule> rule = ParseEgressRule(rules[i]);
      if (!rule.ok()) return Annotate(rule.status(), absl::StrCat("egress.", field, "[", i, "]"));
      const auto covers = [&](const EgressRule& h) { return h.Covers(*rule); };
      if (std::any_of(host_allow.begin(), host_allow.end(), covers)) continue;
      if (ask && std::any_of(host_ask.begin(), host_ask.end(), covers)) continue;
      return absl::PermissionDeniedError(absl::StrCat(
          "egress.", field, "[", i, "]: rule \"", rule->text, "\" is outside the host policy's network.allow",
          ask ? " and network.ask" : "", " (a request's egress rules may only narrow the host's)"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(out.allow, "allow", false));
  RETURN_IF_ERROR(check(out.ask, "ask", true));
  return out;
}

}  // namespace

uint32_t WarmPools::For(pb::SessionKind kind) const {
  switch (kind) {
    case pb::FILE:
      return files;
    case pb::DESKTOP:
      return desktops;
    case pb::BROWSER:
      return browsers;
    default:
      return 0;
  }
}

std::string NewSessionId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("s-%016x", rng());
}

SessionManager::SessionManager(Options options)
    : options_(std::move(options)),
      max_sessions_(options_.max_sessions),
      default_ttl_(options_.default_ttl),
      default_idle_timeout_(options_.default_idle_timeout),
      policies_(options_.policies),
      warm_sizes_(options_.warm) {
  reaper_ = std::jthread([this] { Reap(); });
  warmer_ = std::jthread([this] { KeepWarm(); });
}

SessionManager::~SessionManager() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (warmer_.joinable()) warmer_.join();
  if (reaper_.joinable()) reaper_.join();
  CancelAll("the agent is shutting down");
}

absl::StatusOr<pb::Session> SessionManager::Create(const pb::CreateRequest& request) {
  return CreateWithId(request, NewSessionId());
}

namespace {

// A request's options for its kind (a desktop's display, a browser's storage state) into `so`, checked
// against the kind and the policy's display cap.
absl::Status KindOptionsInto(const pb::CreateRequest& request, pb::SessionKind kind, const sandbox::Policy& policy,
                             Session::Options* so) {
  if (kind == pb::DESKTOP) {
    const pb::DesktopOptions& d = request.desktop();
    if ((d.width() != 0 && (d.width() < 64 || d.width() > 7680)) ||
        (d.height() != 0 && (d.height() < 64 || d.height() > 4320))) {
      return absl::InvalidArgumentError(absl::StrCat("desktop: ", d.width(), "x", d.height(),
                                                     " is not a display size (64..7680 x 64..4320)"));
    }
    // The policy's display cap: a screenshot's size follows the display's (a 7680x4320 noise PNG is ~100 MB).
    const uint32_t width = d.width() == 0 ? 1280 : d.width(), height = d.height() == 0 ? 800 : d.height();
    if (width > policy.limits().display_max_width) {
      return absl::PermissionDeniedError(absl::StrCat("desktop.width: ", width, " exceeds the policy's limits.display_max_width ",
                                                      policy.limits().display_max_width));
    }
    if (height > policy.limits().display_max_height) {
      return absl::PermissionDeniedError(absl::StrCat("desktop.height: ", height, " exceeds the policy's limits.display_max_height ",
                                                      policy.limits().display_max_height));
    }
    so->desktop = d;
  } else if (request.has_desktop()) {
    return absl::InvalidArgumentError("desktop: display options are for kind DESKTOP sessions");
  }
  if (!request.browser().storage_state_json().empty()) {
    if (kind != pb::BROWSER) return absl::InvalidArgumentError("browser: options are for kind BROWSER sessions");
    constexpr size_t kMaxStorageState = 512 << 10;
    if (request.browser().storage_state_json().size() > kMaxStorageState) {
      return absl::InvalidArgumentError(absl::StrCat("browser.storage_state_json: over ", kMaxStorageState >> 10, " KiB"));
    }
    so->storage_state_json = request.browser().storage_state_json();
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> SessionManager::StartSession(const pb::CreateRequest& request,
                                                                       const std::string& session_id, bool pooled) {
  const pb::SessionKind kind = request.kind() == pb::SESSION_KIND_UNSPECIFIED ? pb::FILE : request.kind();
  std::optional<sandbox::Policy> ceiling;
  std::chrono::milliseconds default_ttl, default_idle_timeout;
  {
    absl::MutexLock lock(&mu_);
    auto policy_it = policies_.find(kind);
    if (policy_it == policies_.end()) return absl::UnimplementedError("kind: not available on this agent");
    ceiling = policy_it->second;
    default_ttl = default_ttl_;
    default_idle_timeout = default_idle_timeout_;
  }
  ASSIGN_OR_RETURN(sandbox::PolicyNarrowing narrowing, NarrowingFromRequest(request.policy()));
  const std::chrono::milliseconds ttl =
      request.ttl_ms() > 0 ? std::chrono::milliseconds(request.ttl_ms()) : default_ttl;
  // The jail's own wall-clock timer enforces the ttl: the session's wall time is the shorter of the two. A
  // requested wall_time_limit_ms above the host's ceiling is left as asked, so that NarrowPolicy refuses it
  // naming the field (README: a wider value is PERMISSION_DENIED), rather than clamped to the ceiling.
  const uint64_t ceiling_wall = ceiling->limits().wall_time_limit_ms;
  if (!narrowing.wall_time_limit_ms) {
    narrowing.wall_time_limit_ms = std::min<uint64_t>(ttl.count(), ceiling_wall);
  } else if (*narrowing.wall_time_limit_ms <= ceiling_wall) {
    narrowing.wall_time_limit_ms = std::min<uint64_t>(*narrowing.wall_time_limit_ms, ttl.count());
  }
  ASSIGN_OR_RETURN(sandbox::Policy policy, sandbox::NarrowPolicy(*ceiling, narrowing));
  if (request.has_approvals()) {
    // A request adds gates to the host's (policy_builder.h AddApprovals); it cannot take one away.
    ASSIGN_OR_RETURN(policy, sandbox::PolicyBuilder(policy)
                                 .AddApprovals(sandbox::ApprovalsFromProto(request.approvals()))
                                 .TryBuild());
  }

  Session::Options so;
  so.id = session_id;
  so.kind = kind;
  so.labels.insert(request.labels().begin(), request.labels().end());
  so.ttl = std::chrono::milliseconds(policy.limits().wall_time_limit_ms);
  so.idle_timeout = request.idle_timeout_ms() > 0 ? std::chrono::milliseconds(request.idle_timeout_ms())
                                                  : default_idle_timeout;
  so.init_path = options_.init_path;
  so.cgroups = options_.cgroups;
  so.warnings = options_.warnings;
  so.env = policy.spec().env;
  so.metrics = options_.metrics;
  so.launcher = &launcher_;
  so.timer = &timer_;
  so.max_output_bytes = policy.limits().output_max_bytes;
  so.event_log.max_events = policy.limits().event_log_max_events;
  so.event_log.max_bytes = policy.limits().event_log_max_bytes;
  so.event_log.max_file_bytes = policy.limits().file_events_max_bytes;
  so.pooled = pooled;
  so.ledger = options_.ledger;
  so.egress_deny = options_.egress_deny;
  if (request.has_egress()) {
    ASSIGN_OR_RETURN(so.egress, EgressFromRequest(policy, request.egress()));
  }
  so.approvals = policy.spec().approvals;
  RETURN_IF_ERROR(KindOptionsInto(request, kind, policy, &so));
  if (options_.ledger != nullptr) RETURN_IF_ERROR(options_.ledger->Add(session_id));
  absl::StatusOr<std::shared_ptr<Session>> session = Session::Start(policy, std::move(so));
  if (!session.ok() && options_.ledger != nullptr) options_.ledger->Remove(session_id);  // the jail is gone
  return session;
}

int SessionManager::FindWarmLocked(const pb::CreateRequest& request) const {
  const pb::SessionKind kind = request.kind() == pb::SESSION_KIND_UNSPECIFIED ? pb::FILE : request.kind();
  // A pooled session of the request's kind, for a request that keeps the host's policy and the defaults (a
  // pooled desktop has the default display, a pooled browser no storage state).
  if (request.policy().ByteSizeLong() != 0 || request.ttl_ms() != 0 || request.idle_timeout_ms() != 0 ||
      request.has_desktop() || request.has_egress() || request.has_approvals() || request.has_browser()) {
    return -1;
  }
  for (size_t i = 0; i < warm_.size(); ++i) {
    // One that died in the pool (Chromium, the display) stays for the warmer to replace (and to end outside
    // the lock).
    if (warm_[i].session->kind() == kind && !warm_[i].session->ended()) return static_cast<int>(i);
  }
  return -1;
}

pb::Session SessionManager::AdoptPooledLocked(std::shared_ptr<Session> pooled, const pb::CreateRequest& request,
                                              const std::string& request_bytes, bool from_reservation) {
  pooled->TakeFromPool({request.labels().begin(), request.labels().end()});
  sessions_[pooled->id()] = pooled;
  if (from_reservation) {
    // The reservation's slot is now this session's, held until Delete like any reserved one.
    if (reserved_ > 0) --reserved_;
    held_ids_.insert(pooled->id());
  }
  if (!request.idempotency_key().empty()) {
    idempotency_[request.idempotency_key()] = Idempotent{request_bytes, pooled->id()};
  }
  return pooled->Describe();
}

std::optional<pb::Session> SessionManager::TakeWarmLocked(const pb::CreateRequest& request,
                                                          const std::string& request_bytes, bool from_reservation) {
  const int i = FindWarmLocked(request);
  if (i < 0) return std::nullopt;
  std::shared_ptr<Session> pooled = std::move(warm_[i].session);
  warm_.erase(warm_.begin() + i);
  pool_changed_ = true;  // the warmer starts its replacement
  refill_after_ = Clock::now() + kRefillDelay;
  return AdoptPooledLocked(std::move(pooled), request, request_bytes, from_reservation);
}

std::optional<std::string> SessionManager::ClaimWarm(const pb::CreateRequest& request) {
  absl::MutexLock lock(&mu_);
  const int i = FindWarmLocked(request);
  if (i < 0) return std::nullopt;
  std::shared_ptr<Session> pooled = std::move(warm_[i].session);
  warm_.erase(warm_.begin() + i);
  pool_changed_ = true;
  refill_after_ = Clock::now() + kRefillDelay;
  std::string id = pooled->id();
  claimed_[id] = std::move(pooled);
  return id;
}

void SessionManager::Unclaim(const std::string& id) {
  std::shared_ptr<Session> unused;
  {
    absl::MutexLock lock(&mu_);
    auto it = claimed_.find(id);
    if (it == claimed_.end()) return;
    unused = std::move(it->second);
    claimed_.erase(it);
  }
  unused.reset();  // ends it (outside the lock)
}

absl::StatusOr<pb::Session> SessionManager::CreateWithId(const pb::CreateRequest& request,
                                                        const std::string& session_id, bool from_reservation) {
  const pb::SessionKind kind = request.kind() == pb::SESSION_KIND_UNSPECIFIED ? pb::FILE : request.kind();
  std::string request_bytes;
  request.SerializeToString(&request_bytes);
  std::shared_ptr<Session> evicted;  // a pooled session that gave its slot to this session
  std::shared_ptr<Session> dead;     // a claimed session that died before it was taken
  {
    absl::MutexLock lock(&mu_);
    if (policies_.count(kind) == 0) {
      return absl::UnimplementedError(absl::StrCat(
          "kind: ", pb::SessionKind_IsValid(kind) ? pb::SessionKind_Name(kind) : absl::StrCat(static_cast<int>(kind)),
          " sessions are not available on this agent"));
    }
    if (!request.idempotency_key().empty()) {
      auto it = idempotency_.find(request.idempotency_key());
      if (it != idempotency_.end()) {
        if (it->second.request_bytes != request_bytes) {
          return absl::AbortedError(absl::StrCat("idempotency_key '", request.idempotency_key(),
                                                 "' was used for a different request"));
        }
        auto s = sessions_.find(it->second.session_id);
        if (s != sessions_.end()) return s->second->Describe();
        return absl::NotFoundError(absl::StrCat("the session created with idempotency_key '",
                                                request.idempotency_key(), "' was deleted"));
      }
    }
    if (auto claimed = claimed_.find(session_id); claimed != claimed_.end()) {
      std::shared_ptr<Session> pooled = std::move(claimed->second);
      claimed_.erase(claimed);
      // One that died meanwhile ends before a cold session starts under its id (its cgroup has that name).
      if (!pooled->ended()) return AdoptPooledLocked(std::move(pooled), request, request_bytes, from_reservation);
      dead = std::move(pooled);
    } else if (std::optional<pb::Session> pooled = TakeWarmLocked(request, request_bytes, from_reservation)) {
      return *std::move(pooled);
    }
    // Pooled sessions hold slots nobody asked for yet: one gives its slot up for a session that needs it.
    if (UsedLocked() >= max_sessions_ + (from_reservation ? 1 : 0) && !warm_.empty()) {
      evicted = std::move(warm_.front().session);
      warm_.pop_front();
    }
    if (from_reservation) {
      if (reserved_ > 0) --reserved_;
    } else if (UsedLocked() >= max_sessions_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("capacity: ", max_sessions_, " sessions are running; retry later"));
    }
    ++starting_;
  }
  evicted.reset();  // ends it (outside the lock)
  dead.reset();
  struct Unstart {
    SessionManager* self;
    bool reserved;
    bool started = false;
    ~Unstart() {
      if (started) return;  // counted as a session from the moment it was one (below)
      absl::MutexLock lock(&self->mu_);
      --self->starting_;
      if (reserved) ++self->reserved_;
    }
  } unstart{this, from_reservation};

  ASSIGN_OR_RETURN(std::shared_ptr<Session> session, StartSession(request, session_id));
  pb::Session described = session->Describe();
  absl::MutexLock lock(&mu_);
  // In the same critical section that makes it a session: counted in starting_ and in sessions_ at once,
  // it took two slots for a moment, and a fleet grant's TryReserve then was refused for capacity.
  sessions_[session->id()] = session;
  if (from_reservation) held_ids_.insert(session->id());
  --starting_;
  unstart.started = true;
  if (!request.idempotency_key().empty()) {
    idempotency_[request.idempotency_key()] = Idempotent{request_bytes, session->id()};
  }
  return described;
}

absl::StatusOr<std::shared_ptr<Session>> SessionManager::Find(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("session_id: no session '", id, "'"));
  return it->second;
}

std::vector<pb::Session> SessionManager::List(const std::map<std::string, std::string>& selector) const {
  std::vector<std::shared_ptr<Session>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, s] : sessions_) all.push_back(s);
  }
  std::vector<pb::Session> out;
  for (const auto& s : all) {
    if (s->Matches(selector)) out.push_back(s->Describe());
  }
  return out;
}

absl::StatusOr<pb::Session> SessionManager::Cancel(const std::string& id) {
  ASSIGN_OR_RETURN(std::shared_ptr<Session> session, Find(id));
  session->End(pb::Outcome::CANCELED, "canceled", "canceled by request");
  // The outcome follows promptly: the jail is SIGKILLed.
  std::vector<EventLog::EventPtr> ignored;
  session->events().Read(UINT64_MAX - 1, 1, Clock::now() + std::chrono::seconds(5), [] { return false; }, &ignored);
  return session->Describe();
}

absl::Status SessionManager::Delete(const std::string& id) {
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return absl::NotFoundError(absl::StrCat("session_id: no session '", id, "'"));
    session = std::move(it->second);
    sessions_.erase(it);
    ended_at_.erase(id);
    held_ids_.erase(id);
    std::erase_if(idempotency_, [&](const auto& kv) { return kv.second.session_id == id; });
  }
  session->End(pb::Outcome::CANCELED, "canceled", "the session was deleted");
  return absl::OkStatus();  // the last reference (ours, or a streaming handler's) tears the jail down
}

void SessionManager::CancelAll(const std::string& reason) {
  std::map<std::string, std::shared_ptr<Session>> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(sessions_);
    held_ids_.clear();
    for (Pooled& p : warm_) all[p.session->id()] = std::move(p.session);
    warm_.clear();
    for (auto& [id, session] : claimed_) all[id] = std::move(session);
    claimed_.clear();
    warm_sizes_ = WarmPools{};  // shutting down: the pools do not refill
  }
  for (auto& [id, s] : all) s->End(pb::Outcome::CANCELED, "canceled", reason);
  all.clear();  // joins each session's watcher after its jail is killed
}

size_t SessionManager::active() const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [id, s] : sessions_) n += s->ended() ? 0 : 1;
  return n;
}

uint32_t SessionManager::capacity() const {
  absl::MutexLock lock(&mu_);
  return max_sessions_;
}

size_t SessionManager::UsedLocked() const {
  size_t used = starting_ + reserved_ + warm_.size() + warming_;
  for (const auto& [id, s] : sessions_) used += (!s->ended() || held_ids_.count(id) > 0) ? 1 : 0;
  return used;
}

uint32_t SessionManager::free_capacity() const {
  absl::MutexLock lock(&mu_);
  // A pooled session's slot is free for whoever asks: a request of its kind takes the session, another
  // request takes its slot.
  const size_t used = UsedLocked() - warm_.size();
  return used >= max_sessions_ ? 0 : static_cast<uint32_t>(max_sessions_ - used);
}

uint32_t SessionManager::warm_count(pb::SessionKind kind) const {
  absl::MutexLock lock(&mu_);
  uint32_t n = 0;
  for (const Pooled& p : warm_) n += p.session->kind() == kind && !p.session->ended() ? 1 : 0;
  return n;
}

void SessionManager::Reserve() {
  absl::MutexLock lock(&mu_);
  ++reserved_;
}

bool SessionManager::TryReserve() {
  absl::MutexLock lock(&mu_);
  if (UsedLocked() - warm_.size() >= max_sessions_) return false;
  ++reserved_;
  return true;
}

void SessionManager::Unreserve() {
  absl::MutexLock lock(&mu_);
  if (reserved_ > 0) --reserved_;
}

std::vector<pb::SessionKind> SessionManager::kinds() const {
  absl::MutexLock lock(&mu_);
  std::vector<pb::SessionKind> out;
  for (const auto& [kind, policy] : policies_) out.push_back(static_cast<pb::SessionKind>(kind));
  return out;
}

void SessionManager::Reload(uint32_t max_sessions, std::chrono::milliseconds default_ttl,
                            std::chrono::milliseconds default_idle_timeout, std::map<int, sandbox::Policy> policies,
                            WarmPools warm) {
  std::deque<Pooled> retired;
  {
    absl::MutexLock lock(&mu_);
    warm_sizes_ = warm;
    // Pooled sessions were started under the old policies: fresh ones replace them (and one being started
    // now is dropped when it is ready).
    retired.swap(warm_);
    ++pool_generation_;
    pool_changed_ = true;
    max_sessions_ = max_sessions;
    default_ttl_ = default_ttl;
    default_idle_timeout_ = default_idle_timeout;
    policies_ = std::move(policies);
  }
  retired.clear();  // ends them (outside the lock)
}

std::optional<pb::SessionKind> SessionManager::PrunePoolLocked(std::vector<std::shared_ptr<Session>>* retired) {
  // A pooled session's ttl runs from its start: one that waited this long is replaced by a fresh one.
  constexpr auto kMaxPoolAge = std::chrono::minutes(5);
  constexpr pb::SessionKind kKinds[] = {pb::FILE, pb::DESKTOP, pb::BROWSER};
  const auto now = Clock::now();
  std::map<int, uint32_t> kept;  // by kind; a SIGHUP may have shrunk a pool: the newest are kept
  for (auto it = warm_.rbegin(); it != warm_.rend(); ++it) {
    const pb::SessionKind kind = it->session->kind();
    if (it->session->ended() || now - it->at > kMaxPoolAge || kept[kind] >= warm_sizes_.For(kind)) {
      retired->push_back(std::move(it->session));
    } else {
      ++kept[kind];
    }
  }
  std::erase_if(warm_, [](const Pooled& p) { return p.session == nullptr; });
  if (UsedLocked() >= max_sessions_) return std::nullopt;
  // Files first: they start in milliseconds, a browser in seconds. A kind without a policy has no pool.
  for (pb::SessionKind kind : kKinds) {
    if (kept[kind] < warm_sizes_.For(kind) && policies_.count(kind) > 0) return kind;
  }
  return std::nullopt;
}

void SessionManager::KeepWarm() {
  std::string last_error;  // logged once, not at every retry
  while (!Stopping()) {
    std::vector<std::shared_ptr<Session>> retired;
    std::optional<pb::SessionKind> start;
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      pool_changed_ = false;
      start = PrunePoolLocked(&retired);
      if (start.has_value() && Clock::now() < refill_after_) {
        // Just after a take: the refill waits (kRefillDelay) unless the agent stops.
        const absl::Duration wait = absl::FromChrono(refill_after_ - Clock::now());
        (void)mu_.AwaitWithTimeout(absl::Condition(&stopping_), wait);
        continue;  // `retired` ends after the lock is released, as below
      }
      if (start.has_value()) {
        ++warming_;
        generation = pool_generation_;
      } else if (retired.empty()) {
        // Aging is checked every second; a take, a reload or the end wakes the warmer at once.
        const auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || pool_changed_; };
        (void)mu_.AwaitWithTimeout(absl::Condition(&wake), absl::Seconds(1));
        continue;
      }
    }
    retired.clear();  // ends them (outside the lock)
    if (!start.has_value()) continue;
    pb::CreateRequest request;
    request.set_kind(*start);
    absl::StatusOr<std::shared_ptr<Session>> session = StartSession(request, NewSessionId(), /*pooled=*/true);
    std::shared_ptr<Session> stale;
    {
      absl::MutexLock lock(&mu_);
      --warming_;
      if (session.ok() && generation != pool_generation_) {
        // Started under policies a SIGHUP replaced meanwhile: it ends (outside the lock), a fresh one follows.
        stale = std::move(*session);
      } else if (session.ok()) {
        warm_.push_back(Pooled{std::move(*session), Clock::now()});
      } else {
        // NOTE: the next round tries again; a session that cannot start keeps failing Creates the same way.
        (void)mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Seconds(1));
      }
    }
    if (!session.ok() && session.status().ToString() != last_error) {
      last_error = session.status().ToString();
      Log(LogLevel::kWarn, "a warm-pool session did not start",
          {{"kind", pb::SessionKind_Name(*start)}, {"error", session.status().ToString()}});
    }
    stale.reset();
  }
}

bool SessionManager::Stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

void SessionManager::Reap() {
  for (;;) {
    {
      // A scan every 100 ms (idle timeouts, ended sessions to forget); the agent's end stops it at once.
      absl::MutexLock lock(&mu_);
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(100))) return;
    }
    const auto now = Clock::now();
    std::vector<std::shared_ptr<Session>> idle;
    std::vector<std::shared_ptr<Session>> forget;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = sessions_.begin(); it != sessions_.end();) {
        const std::shared_ptr<Session>& s = it->second;
        if (s->ended()) {
          auto [at, inserted] = ended_at_.emplace(it->first, now);
          if (!inserted && now - at->second > options_.keep_ended && held_ids_.count(it->first) == 0) {
            forget.push_back(s);
            ended_at_.erase(at);
            it = sessions_.erase(it);
            continue;
          }
        } else if (!s->busy() && now - s->last_used() > s->idle_timeout()) {
          idle.push_back(s);
        }
        ++it;
      }
    }
    for (auto& s : idle) {
      s->End(pb::Outcome::CANCELED, "idle_timeout",
             absl::StrCat("no tool call for ", s->idle_timeout().count(), " ms"));
    }
  }
}

}  // namespace sbx::agent
