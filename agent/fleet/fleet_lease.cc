// FleetAgent's leases: the long poll for grants (LeaseLoop), accepting or rejecting each grant (Accept), and
// running one lease (RunLease, the pump): its session, its start calls, and its journaled outcome.
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/fleet/fleet_internal.h"
#include "agent/obs/log.h"
#include "agent/session/jail_text.h"
#include "base/status.h"

namespace sbx::agent {

std::string GrpcError(const grpc::Status& s) {
  return absl::StrCat(s.error_code(), " ", s.error_message());
}

pb::Outcome Failed(const std::string& reason, const std::string& message) {
  pb::Outcome o;
  o.set_status(pb::Outcome::FAILED);
  o.set_reason(reason);
  o.set_message(message);
  return o;
}

std::vector<pb::Event> LostApprovalEvents(const std::vector<OutboxRecord>& records, const std::string& lease_id,
                                          const std::string& session_id) {
  std::map<uint64_t, pb::Event> by_seq;
  for (const OutboxRecord& rec : records) {
    pb::Event e;
    if (rec.key != lease_id || !e.ParseFromString(rec.payload)) continue;
    by_seq[e.seq()] = std::move(e);
  }
  std::vector<pb::Event> out;
  std::map<std::string, const pb::HumanRequest*> open;
  for (auto& [seq, e] : by_seq) {
    out.push_back(e);
    if (e.has_human_request()) open[e.human_request().request_id()] = &e.human_request();
    if (e.has_human_decision()) open.erase(e.human_decision().request_id());
  }
  for (const auto& [id, request] : open) {
    pb::Event e;
    e.set_session_id(session_id);
    e.set_unix_ms(UnixMs());
    pb::HumanDecision* d = e.mutable_human_decision();
    d->set_request_id(id);
    d->set_decision(pb::HumanDecision::CANCELED);
    d->set_call_id(request->call_id());
    d->set_note("session ended: agent_restart");
    d->set_by("agent");
    out.push_back(std::move(e));
  }
  return out;
}

pb::ReportOutcomeRequest LostReport(const std::string& agent_id, const std::string& lease_id,
                                   const std::string& session_id, const std::string& reason, const std::string& message) {
  pb::ReportOutcomeRequest report;
  report.set_agent_id(agent_id);
  report.set_lease_id(lease_id);
  report.set_session_id(session_id);
  *report.mutable_outcome() = Failed(reason, message);
  return report;
}

// ---------------------------------------------------------------------------------------------------------
// Leasing.

void FleetAgent::LeaseLoop(std::stop_token stop) {
  FleetSettings fleet = settings();
  Backoff backoff(fleet.backoff_initial, fleet.backoff_max);
  while (!stop.stop_requested() && !draining_) {
    fleet = settings();
    const uint32_t free = FreeCapacity();
    if (free == 0) {
      WaitFor(stop, milliseconds(100), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return FreeCapacityLocked() > 0; });
      continue;
    }
    pb::LeaseRequest request;
    request.set_agent_id(fleet.agent_id);
    request.mutable_labels()->insert(fleet.labels.begin(), fleet.labels.end());
    for (pb::SessionKind kind : options_.sessions->kinds()) {
      pb::KindCapacity* c = request.add_capacity();
      c->set_kind(kind);
      c->set_free(free);
      c->set_warm(std::min(free, options_.sessions->warm_count(kind)));
    }
    request.set_max_sessions(options_.sessions->capacity());
    request.set_wait_ms(fleet.lease_wait.count());

    grpc::ClientContext ctx;
    if (absl::Status s = PrepareContext(*token_, &ctx, fleet.lease_wait + milliseconds(5000)); !s.ok()) {
      Log(LogLevel::kError, "fleet: cannot lease", {{"error", s.ToString()}});
      SleepFor(backoff.Next(), stop);
      continue;
    }
    {
      absl::MutexLock lock(&lease_ctx_mu_);
      if (draining_) break;
      lease_ctx_ = &ctx;
    }
    {
      absl::MutexLock lock(&mu_);
      lease_call_open_ = ++lease_calls_started_;
    }
    // Once this call returned and its grants were handled, a held lease it could have carried is reconciled.
    absl::Cleanup call_done = [this] {
      absl::MutexLock lock(&mu_);
      lease_calls_done_ = std::max(lease_calls_done_, lease_call_open_);
      lease_call_open_ = 0;
    };
    pb::LeaseResponse response;
    const grpc::Status status = stub_->Lease(&ctx, request, &response);
    {
      absl::MutexLock lock(&lease_ctx_mu_);
      lease_ctx_ = nullptr;
    }
    // A storm (far more grants than asked for) is refused whole, whatever else happens.
    const bool storm = static_cast<uint64_t>(response.leases_size()) > uint64_t{free} + kLeaseSurplus;
    if (storm) RefuseWhole(response, free);
    if (draining_ || stop.stop_requested()) {
      // A lease granted as the drain began must still be answered: each is rejected and reported.
      if (!storm) {
        for (const pb::LeaseGrant& grant : response.leases()) Reject(grant.lease_id(), "the agent is draining");
      }
      break;
    }
    if (storm) continue;
    if (!status.ok()) {
      const milliseconds delay = backoff.Next(RetryDelay(status, ctx));
      Count("lease_error");
      Log(backoff.attempt() <= 1 ? LogLevel::kWarn : LogLevel::kDebug, "fleet: Lease failed; retrying",
          {{"error", GrpcError(status)}, {"retry_in_ms", absl::StrCat(delay.count())}});
      SleepFor(delay, stop);
      continue;
    }
    backoff.Reset();
    uint32_t taken = 0;
    for (const pb::LeaseGrant& grant : response.leases()) {
      Accept(grant, taken >= free);
      ++taken;
    }
  }
}

uint32_t FleetAgent::FreeCapacityLocked() const {
  const uint32_t free = options_.sessions->free_capacity();
  return free > report_held_.size() ? free - static_cast<uint32_t>(report_held_.size()) : 0;
}

uint32_t FleetAgent::FreeCapacity() const {
  absl::MutexLock lock(&mu_);
  return FreeCapacityLocked();
}

void FleetAgent::Reject(const std::string& lease_id, const std::string& message) {
  Count("rejected");
  Log(LogLevel::kWarn, "fleet: lease rejected", {{"lease_id", lease_id}, {"reason", message}});
  JournalReport(LostReport(settings().agent_id, lease_id, "", "rejected", message));
}

bool FleetAgent::JournalReport(const pb::ReportOutcomeRequest& report) {
  pb::OutcomeRecord out;
  *out.mutable_report() = report;
  absl::Status s = outbox_->Append(kOutcomeKind, report.lease_id(), out.SerializeAsString()).status();
  if (!s.ok()) {
    Log(LogLevel::kError, "outbox: cannot journal a report",
        {{"lease_id", report.lease_id()}, {"reason", report.outcome().reason()}, {"error", s.ToString()}});
    return false;
  }
  absl::MutexLock lock(&mu_);
  if (held_.emplace(report.lease_id(), "").second || held_[report.lease_id()].empty()) {
    report_held_.insert(report.lease_id());
  }
  ++journaled_;
  cv_.SignalAll();
  return true;
}

void FleetAgent::RefuseWhole(const pb::LeaseResponse& response, uint32_t free) {
  Count("refused_storm");
  size_t refused = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const pb::LeaseGrant& grant : response.leases()) {
      const std::string& id = grant.lease_id();
      // A grant of a lease this agent holds or finished is a duplicate, not a fresh lease to refuse.
      if (id.empty() || id.size() > 256 || known_.count(id) > 0 || finished_.count(id) > 0) continue;
      if (refusing_.size() < kRefusedLeases) refusing_.push_back(id);
      if (refused_.insert(id).second) {
        refused_order_.push_back(id);
        if (refused_order_.size() > kRefusedLeases) {
          refused_.erase(refused_order_.front());
          refused_order_.pop_front();
        }
      }
      ++refused;
    }
  }
  Log(LogLevel::kError,
      "fleet: a Lease response granted far more leases than the free capacity asked for; refused it whole (none "
      "runs; the ids go back in the next heartbeat's refused_lease_ids)",
      {{"grants", absl::StrCat(response.leases_size())},
       {"free", absl::StrCat(free)},
       {"bound", absl::StrCat(uint64_t{free} + kLeaseSurplus)},
       {"refused", absl::StrCat(refused)}});
}

// A grant seen before is not run again: a finished lease's recorded outcome is reported again, a duplicate of
// one held or journaled is ignored. False for those; true for a first grant, now known.
bool FleetAgent::FirstGrant(const pb::LeaseGrant& grant) {
  const std::string& id = grant.lease_id();
  std::optional<pb::ReportOutcomeRequest> recorded;
  {
    absl::MutexLock lock(&mu_);
    auto f = finished_.find(id);
    if (f != finished_.end() && held_.count(id) == 0 && leases_.count(id) == 0) recorded = f->second.report;
  }
  if (recorded) {
    // Finished here before (also before a restart): the control plane hears its outcome again; it runs once.
    Count("duplicate");
    Log(LogLevel::kWarn, "fleet: a finished lease was granted again; reporting its recorded outcome, not running it",
        {{"lease_id", id}, {"status", pb::Outcome::Status_Name(recorded->outcome().status())}});
    JournalReport(*recorded);
    return false;
  }
  {
    absl::MutexLock lock(&mu_);
    refused_.erase(id);  // granted again after a refusal: it never ran, so it may run now
    if (known_.count(id) > 0) {
      Count("duplicate");
      Log(LogLevel::kWarn, "fleet: duplicate lease ignored (it runs once)", {{"lease_id", id}});
      return false;
    }
    known_.insert(id);
    known_order_.push_back(id);
    if (known_order_.size() > kKnownLeases) {
      const std::string& oldest = known_order_.front();
      if (leases_.count(oldest) == 0 && held_.count(oldest) == 0) known_.erase(oldest);
      known_order_.pop_front();
    }
  }
  return true;
}

// The lease a first grant asks for, or nullptr when it is rejected (and reported): over capacity, too large,
// not a request, or a session kind this agent does not run.
std::shared_ptr<FleetAgent::Lease> FleetAgent::ValidateGrant(const pb::LeaseGrant& grant, bool over_capacity) {
  const std::string& id = grant.lease_id();
  const FleetSettings fleet = settings();
  if (over_capacity) {
    Reject(id, "the control plane granted more leases than the free capacity asked for");
    return nullptr;
  }
  if (grant.request().size() > fleet.max_request_bytes) {
    Reject(id, absl::StrCat("request: ", grant.request().size(), " bytes, over the agent's limit of ",
                            fleet.max_request_bytes));
    return nullptr;
  }
  auto lease = std::make_shared<Lease>();
  lease->lease_id = id;
  if (!lease->request.ParseFromString(grant.request())) {
    Reject(id, "request: not a valid duvo.sandbox.v1.SandboxRequest");
    return nullptr;
  }
  const pb::SessionKind kind = lease->request.kind();
  if (!pb::SessionKind_IsValid(kind) || kind == pb::SESSION_KIND_UNSPECIFIED) {
    Reject(id, absl::StrCat("kind: ", static_cast<int>(kind), " is not a session kind this agent knows"));
    return nullptr;
  }
  const std::vector<pb::SessionKind> kinds = options_.sessions->kinds();
  if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) {
    Reject(id, absl::StrCat("kind: ", pb::SessionKind_Name(kind), " sessions are not available on this agent"));
    return nullptr;
  }
  return lease;
}

void FleetAgent::Accept(const pb::LeaseGrant& grant, bool over_capacity) {
  const std::string& id = grant.lease_id();
  if (id.empty() || id.size() > 256) {
    Log(LogLevel::kError, "fleet: a grant without a usable lease_id; ignored",
        {{"lease_id_bytes", absl::StrCat(id.size())}});
    return;
  }
  if (!FirstGrant(grant)) return;
  std::shared_ptr<Lease> lease = ValidateGrant(grant, over_capacity);
  if (!lease) return;
  // The free capacity this grant answered was counted before the long poll: local sessions may have taken it.
  if (!options_.sessions->TryReserve()) {
    return Reject(id, "capacity: the agent's slots filled up while the grant was on its way");
  }
  // A pooled session that will serve the lease is claimed now, so that the record below names it: a second
  // journal write (AdoptPooledSession's) would sit on the lease's path to running.
  const std::optional<std::string> pooled = options_.sessions->ClaimWarm(CreateRequestOf(*lease));
  lease->session_id = pooled.value_or(NewSessionId());
  lease->set_expires(Clock::now() + LeaseTtl(grant.ttl_ms()));

  pb::LeaseRecord record;
  *record.mutable_grant() = grant;
  record.set_session_id(lease->session_id);
  record.set_leased_unix_ms(UnixMs());
  absl::StatusOr<uint64_t> record_id = outbox_->Append(kLeaseKind, id, record.SerializeAsString());
  if (!record_id.ok()) {
    // Without the journal entry a crash could lose this lease's outcome: do not run it.
    Log(LogLevel::kError, "outbox: cannot journal a lease; not running it",
        {{"lease_id", id}, {"error", record_id.status().ToString()}});
    if (pooled.has_value()) options_.sessions->Unclaim(*pooled);
    options_.sessions->Unreserve();
    return;
  }
  lease->record_id = *record_id;
  lease->record = std::move(record);
  {
    absl::MutexLock lock(&mu_);
    held_[id] = lease->session_id;
    leases_[id] = lease;
  }
  Count("leased");
  Log(LogLevel::kInfo, "fleet: leased", {{"lease_id", id}, {"session_id", lease->session_id}});
  lease->pump = std::jthread([this, raw = lease.get()] { RunLease(raw); });
}
// ---------------------------------------------------------------------------------------------------------
// One lease: the session, its stream, its outcome.

pb::CreateRequest FleetAgent::CreateRequestOf(const Lease& lease) {
  const pb::SandboxRequest& req = lease.request;
  pb::CreateRequest create;
  create.set_kind(req.kind());
  *create.mutable_policy() = req.policy();
  create.set_ttl_ms(req.ttl_ms());
  create.set_idle_timeout_ms(req.idle_timeout_ms());
  if (req.has_desktop()) *create.mutable_desktop() = req.desktop();
  if (req.has_egress()) *create.mutable_egress() = req.egress();
  if (req.has_approvals()) *create.mutable_approvals() = req.approvals();
  if (req.has_browser()) *create.mutable_browser() = req.browser();
  create.mutable_labels()->insert(req.labels().begin(), req.labels().end());
  (*create.mutable_labels())["lease_id"] = lease.lease_id;
  return create;
}

// Creates the lease's session (CreateWithId): the pooled session Accept claimed, or one that may come from a
// warm pool with an id of its own (adopted), or a cold one.
absl::StatusOr<std::shared_ptr<Session>> FleetAgent::CreateSession(Lease* lease) {
  absl::StatusOr<pb::Session> created = options_.sessions->CreateWithId(CreateRequestOf(*lease), lease->session_id, true);
  // A session claimed from the pool (Accept) that CreateWithId refused before taking it ends.
  if (!created.ok()) options_.sessions->Unclaim(lease->session_id);
  if (created.ok() && created->id() != lease->session_id) AdoptPooledSession(lease, created->id());
  absl::StatusOr<std::shared_ptr<Session>> session =
      created.ok() ? options_.sessions->Find(lease->session_id) : absl::StatusOr<std::shared_ptr<Session>>(created.status());
  return session;
}

void FleetAgent::AdoptPooledSession(Lease* lease, const std::string& session_id) {
  // Served from a warm pool: the session is the pooled one, with its own id. Journal that id before
  // anything else, so that after a crash the right cgroup is removed (recovery reports a lease once,
  // whichever of its records it finds).
  pb::LeaseRecord record = lease->record;
  record.set_session_id(session_id);
  absl::StatusOr<uint64_t> rejournaled = outbox_->Append(kLeaseKind, lease->lease_id, record.SerializeAsString());
  if (rejournaled.ok()) {
    if (absl::Status s = outbox_->Ack(lease->record_id); !s.ok()) {
      Log(LogLevel::kError, "outbox: cannot ack a lease record", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
    }
    lease->record_id = *rejournaled;
    lease->record = std::move(record);
  } else {
    Log(LogLevel::kError, "outbox: cannot journal the pooled session of a lease",
        {{"lease_id", lease->lease_id}, {"session_id", session_id}, {"error", rejournaled.status().ToString()}});
  }
  absl::MutexLock lock(&mu_);
  lease->session_id = session_id;
  held_[lease->lease_id] = lease->session_id;
}

// Journals the session's approval events under the lease (kApprovalKind), before any call can ask
// (DriveStartCalls, commands once the stream attaches).
void FleetAgent::JournalApprovals(Lease* lease) {
  lease->session->approvals().SetObserver(
      [outbox = outbox_.get(), journal = lease->approval_journal, lease_id = lease->lease_id,
       session_id = lease->session_id](const pb::Event& event) {
        pb::Event e = event;
        e.set_session_id(session_id);
        absl::MutexLock lock(&journal->mu);
        if (journal->closed) return;
        absl::StatusOr<uint64_t> id = outbox->Append(kApprovalKind, lease_id, e.SerializeAsString());
        if (id.ok()) {
          journal->ids.push_back(*id);
        } else {
          Log(LogLevel::kError, "outbox: cannot journal an approval event",
              {{"lease_id", lease_id}, {"error", id.status().ToString()}});
        }
      });
}

void FleetAgent::RunLease(Lease* lease) {
  absl::StatusOr<std::shared_ptr<Session>> session = CreateSession(lease);
  if (!session.ok()) {
    const absl::StatusCode code = session.status().code();
    const bool rejected = code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kPermissionDenied ||
                          code == absl::StatusCode::kUnimplemented || code == absl::StatusCode::kFailedPrecondition;
    Log(LogLevel::kWarn, "fleet: session did not start",
        {{"lease_id", lease->lease_id}, {"error", session.status().ToString()}});
    {
      // The session never existed: its slot is a reservation again (CreateWithId restored it).
      absl::MutexLock lock(&mu_);
      held_[lease->lease_id] = "";
    }
    JournalOutcome(lease, Failed(rejected ? "rejected" : "setup_error", std::string(session.status().message())));
    lease->stream_ended = true;
    lease->pump_done = true;
    return;
  }
  lease->session = *session;
  JournalApprovals(lease);
  lease->has_session = true;
  // A session that came up after the drain canceled the others (it was still starting then) ends too.
  if (canceling_) lease->session->End(pb::Outcome::CANCELED, "drained", "the agent drained before the session finished");
  if (lease->request.calls_size() > 0) lease->driver = std::jthread([this, lease] { DriveStartCalls(lease); });  // joined by this pump
  // The stream on a thread of its own: the outcome below is journaled when the session ends, whatever the
  // stream is doing then (stuck, reconnecting, or gone).
  lease->streamer = std::jthread([this, lease] { StreamLoop(lease); });
  AwaitSessionEnd(lease);
  JournalOutcome(lease, lease->session->Describe().outcome());
  lease->StopStream();
  {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();  // a streamer waiting to reconnect
  }
  if (lease->streamer.joinable()) lease->streamer.join();
  lease->pump_done = true;
}

// Waits for the session's outcome (the last event; the log closes right after) and, briefly, for the
// stream to have the last events acknowledged.
void FleetAgent::AwaitSessionEnd(Lease* lease) {
  std::vector<EventLog::EventPtr> ignored;
  while (!lease->session->events().closed()) {
    lease->session->events().Read(UINT64_MAX - 1, 1, Clock::time_point::max(), [] { return false; }, &ignored);
  }
  if (lease->driver.joinable()) lease->driver.join();  // it returns once the log is closed
  // A healthy stream delivers the last events within moments, and the report then carries none; past that
  // (or at once when the stream is gone) the report carries what the control plane has not acknowledged.
  const Clock::time_point ack_until = Clock::now() + (draining_ ? milliseconds(200) : kFinalAckWait);
  lease->WaitProgress(ack_until, [lease] {
    return lease->acked_seq >= lease->session->events().last_seq() || lease->stream_ended;
  });
}

void FleetAgent::DriveStartCalls(Lease* lease) {
  Session& session = *lease->session;
  std::optional<int> last_exit;
  for (int i = 0; i < lease->request.calls_size(); ++i) {
    const std::string call_id = absl::StrCat("start-", i + 1);
    absl::StatusOr<std::pair<std::string, uint64_t>> started =
        session.StartCallOnce(call_id, call_id, lease->request.calls(i));
    if (!started.ok()) {
      if (lease->request.end_after_calls()) {
        session.End(pb::Outcome::FAILED, "call_failed",
                    absl::StrCat("calls[", i, "] did not start: ", started.status().message()));
      }
      return;
    }
    // Wait for its tool_call_finished.
    uint64_t cursor = started->second;
    std::optional<pb::ToolCallFinished> finished;
    while (!finished) {
      std::vector<EventLog::EventPtr> events;
      const EventLog::ReadResult r =
          session.events().Read(cursor, 256, Clock::now() + milliseconds(500), [] { return false; }, &events);
      if (r == EventLog::ReadResult::kClosed) return;  // the session ended first
      for (const EventLog::EventPtr& e : events) {
        cursor = e->seq();
        if (e->has_tool_call_finished() && e->tool_call_finished().call_id() == call_id) {
          finished = e->tool_call_finished();
          break;
        }
      }
    }
    if (finished->has_error()) {
      if (lease->request.end_after_calls()) {
        session.End(pb::Outcome::FAILED, "call_failed",
                    absl::StrCat("calls[", i, "] failed: ", finished->error().message()));
      }
      return;
    }
    if (finished->result().has_exec()) {
      const pb::ExecResult& r = finished->result().exec();
      last_exit = r.has_exit_code() ? r.exit_code() : 128 + r.signal();
    }
  }
  if (lease->request.end_after_calls()) {
    session.End(pb::Outcome::COMPLETED, "exited", "the request's calls finished", last_exit.value_or(0));
  }
}

void FleetAgent::JournalOutcome(Lease* lease, const pb::Outcome& outcome) {
  pb::OutcomeRecord out;
  pb::ReportOutcomeRequest* report = out.mutable_report();
  report->set_agent_id(settings().agent_id);
  report->set_lease_id(lease->lease_id);
  report->set_session_id(lease->has_session ? lease->session_id : "");
  *report->mutable_outcome() = outcome;
  if (lease->has_session) {
    EventLog& log = lease->session->events();
    report->set_last_seq(log.last_seq());
    std::vector<EventLog::EventPtr> tail;
    log.Read(lease->acked_seq, SIZE_MAX, Clock::now(), [] { return true; }, &tail);
    // The report must fit in one outbox record: past the budget, output and file data are dropped (the
    // events stay, marked), and past the record's limit the rest of the tail is left out (last_seq says how
    // far it went).
    size_t bytes = 0;
    for (const EventLog::EventPtr& e : tail) {
      pb::Event copy = *e;
      if (bytes + copy.ByteSizeLong() > kReportEventBytes) {
        if (copy.has_output() && !copy.output().data().empty()) {
          copy.mutable_output()->set_dropped_bytes(copy.output().data().size());
          copy.mutable_output()->clear_data();
        } else if (copy.has_file() && !copy.file().data().empty()) {
          copy.mutable_file()->set_dropped_bytes(copy.file().data().size());
          copy.mutable_file()->clear_data();
        }
      }
      bytes += copy.ByteSizeLong();
      if (bytes > kReportMaxBytes) {
        Log(LogLevel::kWarn, "fleet: an outcome report left out the end of its event tail",
            {{"lease_id", lease->lease_id}, {"first_left_out_seq", absl::StrCat(copy.seq())}});
        break;
      }
      *report->add_events() = std::move(copy);
    }
  }
  absl::StatusOr<uint64_t> appended = outbox_->Append(kOutcomeKind, lease->lease_id, out.SerializeAsString());
  if (!appended.ok()) {
    // The lease record stays pending: the next start reports this session lost rather than nothing at all.
    Log(LogLevel::kError, "outbox: cannot journal an outcome",
        {{"lease_id", lease->lease_id}, {"error", appended.status().ToString()}});
  } else {
    if (lease->record_id != 0) {
      if (absl::Status s = outbox_->Ack(lease->record_id); !s.ok()) {
        Log(LogLevel::kError, "outbox: cannot ack a lease record", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
      }
    }
    // The approval events are in the outcome's events now.
    absl::MutexLock lock(&lease->approval_journal->mu);
    lease->approval_journal->closed = true;
    for (uint64_t id : lease->approval_journal->ids) {
      if (absl::Status s = outbox_->Ack(id); !s.ok()) {
        Log(LogLevel::kError, "outbox: cannot ack an approval record", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
      }
    }
  }
  Log(LogLevel::kInfo, "fleet: session ended",
      {{"lease_id", lease->lease_id},
       {"session_id", lease->session_id},
       {"status", pb::Outcome::Status_Name(outcome.status())},
       {"reason", outcome.reason()}});
  lease->finished = true;
  absl::MutexLock lock(&mu_);
  ++journaled_;
  cv_.SignalAll();
}

}  // namespace sbx::agent
