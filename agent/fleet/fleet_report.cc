// FleetAgent's reports to the control plane: heartbeats (renewals, revocations, and the held leases to
// reconcile), and the delivery of journaled outcomes (ReportLoop), each recorded as a finished lease.
#include <algorithm>
#include <iterator>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/fleet/fleet_internal.h"
#include "agent/obs/log.h"

namespace sbx::agent {

// ---------------------------------------------------------------------------------------------------------
// Heartbeats and reports.

void FleetAgent::HeartbeatLoop(std::stop_token stop) {
  // The first heartbeat goes out at once: its answer reconciles what a previous agent left behind.
  for (bool first = true;; first = false) {
    const FleetSettings fleet = settings();
    if (!first && !SleepFor(fleet.heartbeat_interval, stop)) return;
    if (stop.stop_requested()) return;
    std::vector<std::shared_ptr<Lease>> live, done;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = leases_.begin(); it != leases_.end();) {
        // Only a pump that returned is joined here: this loop never waits for a session's stream.
        if (it->second->pump_done) {
          done.push_back(it->second);
          it = leases_.erase(it);
        } else {
          live.push_back(it->second);
          ++it;
        }
      }
    }
    done.clear();  // joins the finished pumps
    const Clock::time_point now = Clock::now();
    pb::HeartbeatRequest request;
    request.set_agent_id(fleet.agent_id);
    std::map<std::string, std::shared_ptr<Lease>> by_id;
    for (const auto& lease : live) {
      if (lease->finished || (lease->has_session && lease->session->ended())) continue;
      if (now >= lease->expires()) {
        Count("expired");
        Log(LogLevel::kWarn, "fleet: lease lapsed; canceling its session", {{"lease_id", lease->lease_id}});
        if (lease->has_session) {
          lease->session->End(pb::Outcome::CANCELED, "lease_expired", "the lease was not renewed before its ttl");
        }
        continue;
      }
      request.add_lease_ids(lease->lease_id);
      by_id[lease->lease_id] = lease;
    }
    // Every heartbeat goes out, also with no lease held: its answer names leases the agent may not know.
    size_t refusing = 0;
    {
      absl::MutexLock lock(&mu_);
      refusing = std::min(refusing_.size(), kRefusedPerHeartbeat);
      for (size_t i = 0; i < refusing; ++i) request.add_refused_lease_ids(refusing_[i]);
    }
    grpc::ClientContext ctx;
    if (!PrepareContext(*token_, &ctx, std::max(fleet.heartbeat_interval * 2, milliseconds(1000))).ok()) continue;
    pb::HeartbeatResponse response;
    const Clock::time_point sent = Clock::now();
    const grpc::Status status = stub_->Heartbeat(&ctx, request, &response);
    if (!status.ok()) {
      Count("heartbeat_error");
      Log(LogLevel::kDebug, "fleet: Heartbeat failed", {{"error", GrpcError(status)}});
      continue;
    }
    if (refusing > 0) {
      absl::MutexLock lock(&mu_);
      refusing_.erase(refusing_.begin(), refusing_.begin() + static_cast<ptrdiff_t>(refusing));
    }
    Reconcile(response);
    for (const auto& renewal : response.renewed()) {
      auto it = by_id.find(renewal.lease_id());
      if (it != by_id.end()) it->second->set_expires(sent + LeaseTtl(renewal.ttl_ms()));
    }
    for (const auto& revoked : response.revoked()) {
      auto it = by_id.find(revoked.lease_id());
      if (it == by_id.end()) continue;
      Count("revoked");
      Log(LogLevel::kInfo, "fleet: lease revoked; canceling its session",
          {{"lease_id", revoked.lease_id()}, {"reason", revoked.reason()}});
      it->second->set_expires(Clock::now());
      if (it->second->has_session) {
        it->second->session->End(pb::Outcome::CANCELED, "lease_revoked",
                                 revoked.reason().empty() ? "the control plane revoked the lease" : revoked.reason());
      }
    }
  }
}

void FleetAgent::Reconcile(const pb::HeartbeatResponse& response) {
  std::vector<pb::ReportOutcomeRequest> reports;
  const std::string agent_id = settings().agent_id;
  {
    absl::MutexLock lock(&mu_);
    std::set<std::string> named;
    int considered = 0;
    for (const std::string& id : response.held_lease_ids()) {
      if (id.empty() || id.size() > 256 || ++considered > kReconcilePerHeartbeat) continue;
      named.insert(id);
      if (leases_.count(id) > 0 || held_.count(id) > 0 || finished_.count(id) > 0 || refused_.count(id) > 0) {
        suspects_.erase(id);
        continue;
      }
      // Named by the first answer after a salvage that may have hidden more than it could name.
      if (!reconciled_once_ && damage_unreadable_) damage_hid_.insert(id);
      // The Lease call in flight now may be carrying its grant: wait until it returned and its grants were
      // handled.
      auto [it, fresh] = suspects_.emplace(id, lease_call_open_);
      if (it->second != 0 && lease_calls_done_ < it->second) continue;
      suspects_.erase(it);
      // Held from here, so that a grant of it now is a duplicate rather than a run after its failed report.
      held_[id] = "";
      if (known_.insert(id).second) known_order_.push_back(id);
      const bool damaged = damage_hid_.count(id) > 0;
      reports.push_back(LostReport(
          agent_id, id, "", damaged ? "outbox_damaged" : "agent_restart",
          damaged ? kDamagedMessage
                  : "the control plane names this lease as held by this agent, which never journaled it: its grant "
                    "was lost on the wire or with an agent restart"));
    }
    reconciled_once_ = true;
    for (auto it = suspects_.begin(); it != suspects_.end();) {
      it = named.count(it->first) > 0 ? std::next(it) : suspects_.erase(it);
    }
  }
  for (const pb::ReportOutcomeRequest& report : reports) {
    Count("reconciled");
    Log(LogLevel::kWarn, "fleet: the control plane names a lease this agent does not know; reporting it failed",
        {{"lease_id", report.lease_id()}, {"reason", report.outcome().reason()}});
    if (!JournalReport(report)) {
      absl::MutexLock lock(&mu_);
      held_.erase(report.lease_id());  // named again by the next answer
    }
  }
}

std::vector<uint64_t> FleetAgent::AgeOutFinishedLocked() {
  std::vector<uint64_t> drop;
  const int64_t now = UnixMs();
  while (!finished_order_.empty()) {
    const auto oldest = finished_order_.begin();
    auto f = finished_.find(oldest->second);
    const bool too_many = finished_order_.size() > kFinishedLeases;
    const bool too_old = f != finished_.end() && now - f->second.unix_ms > kFinishedMaxAgeMs;
    if (!too_many && !too_old) break;
    drop.push_back(oldest->first);
    if (f != finished_.end() && f->second.record_id == oldest->first) finished_.erase(f);
    finished_order_.erase(oldest);
  }
  return drop;
}

void FleetAgent::RecordFinished(const OutboxRecord& rec, const pb::ReportOutcomeRequest& report) {
  pb::FinishedLeaseRecord finished;
  *finished.mutable_report() = report;
  finished.mutable_report()->clear_events();  // the control plane has them; the record stays small
  finished.set_finished_unix_ms(UnixMs());
  absl::StatusOr<uint64_t> id = outbox_->Append(kFinishedKind, rec.key, finished.SerializeAsString());
  if (!id.ok()) {
    Log(LogLevel::kError, "outbox: cannot record a finished lease (a re-grant after a restart would run it again)",
        {{"lease_id", rec.key}, {"error", id.status().ToString()}});
  }
  if (absl::Status s = outbox_->Ack(rec.id); !s.ok()) {
    Log(LogLevel::kError, "outbox: cannot ack a delivered outcome", {{"lease_id", rec.key}, {"error", s.ToString()}});
  }
  if (!id.ok()) return;
  std::vector<uint64_t> drop;
  {
    absl::MutexLock lock(&mu_);
    if (auto old = finished_.find(rec.key); old != finished_.end()) {
      drop.push_back(old->second.record_id);
      finished_order_.erase(old->second.record_id);
    }
    finished_[rec.key] = Finished{*id, finished.finished_unix_ms(), std::move(*finished.mutable_report())};
    finished_order_[*id] = rec.key;
    std::vector<uint64_t> aged = AgeOutFinishedLocked();
    drop.insert(drop.end(), aged.begin(), aged.end());
  }
  for (uint64_t old : drop) {
    if (absl::Status s = outbox_->Ack(old); !s.ok()) {
      Log(LogLevel::kError, "outbox: cannot ack an old finished-lease record", {{"error", s.ToString()}});
    }
  }
}

void FleetAgent::ReportLoop(std::stop_token stop) {
  FleetSettings fleet = settings();
  Backoff backoff(fleet.backoff_initial, fleet.backoff_max);
  while (!stop.stop_requested()) {
    uint64_t seen;
    {
      absl::MutexLock lock(&mu_);
      seen = journaled_;
    }
    std::vector<OutboxRecord> pending = outbox_->Pending(kOutcomeKind);
    if (pending.empty()) {
      WaitFor(stop, milliseconds(1000), [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return journaled_ != seen; });
      continue;
    }
    for (const OutboxRecord& rec : pending) {
      if (stop.stop_requested()) return;
      pb::OutcomeRecord out;
      if (!out.ParseFromString(rec.payload)) {
        Log(LogLevel::kError, "outbox: an unreadable outcome record; dropping it", {{"lease_id", rec.key}});
        (void)outbox_->Ack(rec.id);
        absl::MutexLock lock(&mu_);
        ++delivered_;  // out of the outbox all the same
        cv_.SignalAll();
        continue;
      }
      grpc::ClientContext ctx;
      if (absl::Status s = PrepareContext(*token_, &ctx, milliseconds(10000)); !s.ok()) {
        Log(LogLevel::kError, "fleet: cannot report", {{"error", s.ToString()}});
        SleepFor(backoff.Next(), stop);
        break;
      }
      pb::ReportOutcomeResponse response;
      const grpc::Status status = stub_->ReportOutcome(&ctx, out.report(), &response);
      // A report the control plane says it will never take (malformed, or of a lease it does not know) is
      // dropped: retrying it would hold back every outcome after it, and their slots.
      const bool refused = status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                           status.error_code() == grpc::StatusCode::NOT_FOUND ||
                           status.error_code() == grpc::StatusCode::OUT_OF_RANGE;
      if (!status.ok() && !refused) {
        const milliseconds delay = backoff.Next(RetryDelay(status, ctx));
        Count("report_error");
        Log(backoff.attempt() <= 1 ? LogLevel::kWarn : LogLevel::kDebug, "fleet: ReportOutcome failed; retrying",
            {{"lease_id", rec.key}, {"error", GrpcError(status)}, {"retry_in_ms", absl::StrCat(delay.count())}});
        SleepFor(delay, stop);
        break;
      }
      backoff.Reset();
      if (refused) {
        Count("report_refused");
        Log(LogLevel::kError, "fleet: the control plane refused an outcome report for good; dropping it",
            {{"lease_id", rec.key}, {"error", GrpcError(status)}});
      } else {
        Count("reported");
      }
      RecordFinished(rec, out.report());  // acks the outcome record
      std::string session_id;
      bool held = false;
      {
        absl::MutexLock lock(&mu_);
        auto it = held_.find(rec.key);
        if (it != held_.end()) {
          // A report-only hold has no slot to give back.
          held = report_held_.erase(rec.key) == 0;
          session_id = it->second;
          held_.erase(it);
        }
      }
      if (held) {
        if (session_id.empty()) {
          options_.sessions->Unreserve();
        } else {
          (void)options_.sessions->Delete(session_id);  // frees its slot
        }
      }
      absl::MutexLock lock(&mu_);
      ++delivered_;
      cv_.SignalAll();  // the lease loop may take another; a drain may be done
    }
  }
}

}  // namespace sbx::agent
