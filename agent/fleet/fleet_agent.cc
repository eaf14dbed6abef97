// FleetAgent's lifetime (start with the outbox's recovery, reload, drain) and the commands the control plane
// sends over a lease's stream. The stream is in fleet_stream.cc, leases in fleet_lease.cc, heartbeats and
// reports in fleet_report.cc; what they share is in fleet_internal.h.
#include "agent/fleet/fleet_agent.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include <malloc.h>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/fleet_internal.h"
#include "agent/obs/log.h"
#include "agent/session/jail_text.h"
#include "base/status.h"

namespace sbx::agent {

namespace {

// The largest UploadPart.data one upload command may carry (worker.proto). The reader thread writes each
// chunk into the jail before it reads the next message, so a chunk is what the agent holds of an upload at a
// time (twice, briefly: gRPC's buffer and the parsed message), and gRPC's flow control holds the sender back
// meanwhile.
constexpr size_t kMaxUploadPartBytes = 4 << 20;
// What a gated upload may send before it is approved (held in memory until the decision).
constexpr size_t kMaxHeldUploadBytes = 16 << 20;

}  // namespace

void FleetAgent::Count(std::string_view event) {
  if (options_.metrics != nullptr) options_.metrics->FleetEvent(event);
}

FleetAgent::FleetAgent(Options options) : options_(std::move(options)), fleet_(options_.fleet) {}

absl::StatusOr<std::unique_ptr<FleetAgent>> FleetAgent::Start(Options options) {
  if (options.sessions == nullptr) return absl::InvalidArgumentError("FleetAgent needs a SessionManager");
  std::unique_ptr<FleetAgent> agent(new FleetAgent(std::move(options)));
  FleetAgent& a = *agent;
  absl::StatusOr<std::optional<std::string>> torn_lease = a.OpenOutbox();
  if (!torn_lease.ok()) return torn_lease.status();
  RETURN_IF_ERROR(a.Connect());
  RETURN_IF_ERROR(a.Recover(*torn_lease));
  if (a.options_.metrics != nullptr) {
    a.options_.metrics->SetFleetGauges([&a] { return a.leases_held(); },
                                       [&a] { return a.undelivered_outcomes(); });
  }
  a.reporter_ = std::jthread([&a](std::stop_token stop) { a.ReportLoop(stop); });
  a.heartbeat_ = std::jthread([&a](std::stop_token stop) { a.HeartbeatLoop(stop); });
  a.leaser_ = std::jthread([&a](std::stop_token stop) { a.LeaseLoop(stop); });
  Log(LogLevel::kInfo, "fleet: leasing",
      {{"control_plane", a.options_.fleet.control_plane}, {"agent_id", a.options_.fleet.agent_id}});
  return agent;
}

// Opens the outbox and logs what it dropped or salvaged. Returns the lease whose record a torn tail cut
// short, if any: its grant never started a session.
absl::StatusOr<std::optional<std::string>> FleetAgent::OpenOutbox() {
  OutboxOptions outbox_options;
  outbox_options.on_damage = options_.fleet.outbox_salvage ? OutboxDamagePolicy::kSalvage : OutboxDamagePolicy::kRefuse;
  ASSIGN_OR_RETURN(outbox_, Outbox::Open(options_.outbox_dir, outbox_options));
  // A torn last record (a crash mid-write): a lease record's grant never started a session. Reported below.
  std::optional<std::string> torn_lease;
  if (outbox_->dropped_tail_bytes() > 0) {
    const std::optional<OutboxLostRecord>& torn = outbox_->torn_record();
    Log(LogLevel::kWarn, "outbox: dropped a torn tail",
        {{"journal", outbox_->journal_path()},
         {"bytes", absl::StrCat(outbox_->dropped_tail_bytes())},
         {"record", torn ? torn->kind : "unreadable"},
         {"lease_id", torn ? ToValidUtf8(torn->key) : ""}});
    if (torn && torn->kind == kLeaseKind) torn_lease = torn->key;
  }
  if (const std::optional<OutboxDamage>& damage = outbox_->damage(); damage) {
    // One line for the operator: what, where, and which leases it hid. A lost "finished" record's outcome was
    // delivered already.
    std::string lost;
    absl::MutexLock lock(&mu_);
    for (const OutboxLostRecord& r : damage->lost) {
      if (r.kind != kLeaseKind && r.kind != kOutcomeKind) continue;
      if (damage_hid_.insert(r.key).second) absl::StrAppend(&lost, lost.empty() ? "" : ",", ToValidUtf8(r.key));
    }
    damage_unreadable_ = damage->unreadable;
    Log(LogLevel::kError, "outbox: damaged journal salvaged",
        {{"journal", outbox_->journal_path()},
         {"offset", absl::StrCat(damage->offset)},
         {"damaged_bytes", absl::StrCat(damage->bytes)},
         {"problem", damage->what},
         {"lost_lease_ids", lost},
         {"more_may_be_lost", damage->unreadable ? "yes: reported outbox_damaged when the control plane names them" : "no"},
         {"set_aside", damage->set_aside}});
  }
  return torn_lease;
}

absl::Status FleetAgent::Connect() {
  ASSIGN_OR_RETURN(channel_, MakeWorkerChannel(options_.fleet));
  ASSIGN_OR_RETURN(stream_channel_, MakeWorkerChannel(options_.fleet, WorkerChannelUse::kStreams));
  stub_ = pb::WorkerGateway::NewStub(channel_);
  token_ = std::make_unique<TokenFile>(options_.fleet.token_file);
  if (!options_.fleet.tls) {
    Log(LogLevel::kWarn, "fleet: the control plane connection is plaintext (no fleet.tls)",
        {{"control_plane", options_.fleet.control_plane}});
  }
  return absl::OkStatus();
}

// What the outbox held at start, before recovery changed it.
struct FleetAgent::RecoveryScan {
  // A lease served from the warm pool may have two records (a crash between journaling the pooled session and
  // acking the first record): the newest one is reported.
  std::map<std::string, uint64_t> newest;
  // A lease whose outcome is journaled already (a crash between journaling it and acking the lease record)
  // is reported with that outcome only.
  std::set<std::string> journaled;
  std::set<std::string> keys;  // of every pending record
};

// Recovery: leases journaled by a previous agent that never got an outcome died with it.
absl::Status FleetAgent::Recover(const std::optional<std::string>& torn_lease) {
  // NOTE: no other thread exists yet; mu_ is held for the members it guards.
  absl::MutexLock lock(&mu_);
  RecoveryScan scan;
  for (const OutboxRecord& rec : outbox_->Pending()) {
    scan.keys.insert(rec.key);
    if (rec.kind == kLeaseKind) scan.newest[rec.key] = std::max(scan.newest[rec.key], rec.id);
    if (rec.kind == kOutcomeKind) scan.journaled.insert(rec.key);
  }
  RETURN_IF_ERROR(RecoverFinished());
  RETURN_IF_ERROR(RecoverUnreadableOutcomes());
  size_t lost = 0;
  RETURN_IF_ERROR(ReportLostLeases(scan, torn_lease, &lost));
  const size_t undelivered = HoldUndelivered();
  if (lost > 0 || undelivered > 0) {
    Log(LogLevel::kInfo, "fleet: recovered the outbox",
        {{"lost_sessions", absl::StrCat(lost)}, {"outcomes_to_report", absl::StrCat(undelivered)}});
  }
  return absl::OkStatus();
}

// Finished leases, by their "finished" records; the oldest age out.
absl::Status FleetAgent::RecoverFinished() {
  // Finished leases, newest record per lease; an unreadable one still says the lease finished.
  for (const OutboxRecord& rec : outbox_->Pending(kFinishedKind)) {
    pb::FinishedLeaseRecord f;
    if (!f.ParseFromString(rec.payload)) {
      Log(LogLevel::kError, "outbox: an unreadable finished-lease record; a re-grant is answered outbox_damaged",
          {{"lease_id", ToValidUtf8(rec.key)}});
      *f.mutable_report() = LostReport(options_.fleet.agent_id, rec.key, "", "outbox_damaged", kDamagedMessage);
      f.set_finished_unix_ms(UnixMs());
    }
    if (auto old = finished_.find(rec.key); old != finished_.end()) {
      finished_order_.erase(old->second.record_id);
      RETURN_IF_ERROR(outbox_->Ack(old->second.record_id));
    }
    finished_[rec.key] = Finished{rec.id, f.finished_unix_ms(), std::move(*f.mutable_report())};
    finished_order_[rec.id] = rec.key;
  }
  for (uint64_t id : AgeOutFinishedLocked()) RETURN_IF_ERROR(outbox_->Ack(id));
  return absl::OkStatus();
}

absl::Status FleetAgent::RecoverUnreadableOutcomes() {
  // An outcome record that does not parse is still the lease's end: reported failed, outbox_damaged.
  for (const OutboxRecord& rec : outbox_->Pending(kOutcomeKind)) {
    pb::OutcomeRecord out;
    if (out.ParseFromString(rec.payload)) continue;
    Log(LogLevel::kError, "outbox: an unreadable outcome record; reporting the lease failed, outbox_damaged",
        {{"lease_id", ToValidUtf8(rec.key)}});
    *out.mutable_report() = LostReport(options_.fleet.agent_id, rec.key, "", "outbox_damaged", kDamagedMessage);
    RETURN_IF_ERROR(outbox_->Append(kOutcomeKind, rec.key, out.SerializeAsString()).status());
    RETURN_IF_ERROR(outbox_->Ack(rec.id));
  }
  return absl::OkStatus();
}

// Journals an outcome for each lease that died with the previous agent (or whose record a torn tail cut
// short), and acks its lease and approval records.
absl::Status FleetAgent::ReportLostLeases(const RecoveryScan& scan, const std::optional<std::string>& torn_lease,
                                          size_t* lost) {
  if (torn_lease && scan.keys.count(*torn_lease) == 0 && finished_.count(*torn_lease) == 0) {
    pb::OutcomeRecord out;
    *out.mutable_report() =
        LostReport(options_.fleet.agent_id, *torn_lease, "", "agent_restart",
                   "the agent restarted while it journaled the lease, before its session started");
    RETURN_IF_ERROR(outbox_->Append(kOutcomeKind, *torn_lease, out.SerializeAsString()).status());
    ++*lost;
  }
  const std::vector<OutboxRecord> approvals = outbox_->Pending(kApprovalKind);
  for (const OutboxRecord& rec : outbox_->Pending()) {
    if (rec.kind != kLeaseKind) continue;
    pb::LeaseRecord lr;
    const bool readable = lr.ParseFromString(rec.payload);
    if (!readable) {
      Log(LogLevel::kError, "outbox: an unreadable lease record; reporting it failed, outbox_damaged",
          {{"lease_id", ToValidUtf8(rec.key)}});
    }
    // NOTE: the lost session's cgroup is gone already: the agent's cgroup ledger removed it at start.
    if (scan.newest.at(rec.key) != rec.id || scan.journaled.count(rec.key) > 0) {
      RETURN_IF_ERROR(outbox_->Ack(rec.id));
      continue;
    }
    pb::OutcomeRecord out;
    pb::ReportOutcomeRequest* report = out.mutable_report();
    report->set_agent_id(options_.fleet.agent_id);
    report->set_lease_id(rec.key);
    report->set_session_id(lr.session_id());
    *report->mutable_outcome() =
        readable ? Failed("agent_restart", "the agent restarted while the session ran; its jail ended with the agent")
                 : Failed("outbox_damaged", kDamagedMessage);
    for (pb::Event& e : LostApprovalEvents(approvals, rec.key, lr.session_id())) *report->add_events() = std::move(e);
    RETURN_IF_ERROR(outbox_->Append(kOutcomeKind, rec.key, out.SerializeAsString()).status());
    RETURN_IF_ERROR(outbox_->Ack(rec.id));
    ++*lost;
  }
  // Every lease's approval events are in its outcome record now (journaled before, or just above).
  for (const OutboxRecord& rec : approvals) RETURN_IF_ERROR(outbox_->Ack(rec.id));
  return absl::OkStatus();
}

// Every undelivered outcome holds a slot (a report-only hold) until the control plane takes it. Returns
// how many.
size_t FleetAgent::HoldUndelivered() {
  size_t undelivered = 0;
  for (const OutboxRecord& rec : outbox_->Pending()) {
    if (rec.kind != kOutcomeKind || !held_.emplace(rec.key, "").second) continue;  // one slot per lease
    known_.insert(rec.key);
    known_order_.push_back(rec.key);
    report_held_.insert(rec.key);
    ++undelivered;
  }
  return undelivered;
}

FleetAgent::~FleetAgent() {
  // The metrics server may outlive this agent: its gauges must not call into it any more.
  if (options_.metrics != nullptr) options_.metrics->SetFleetGauges(nullptr, nullptr);
  // Start() failed before the outbox opened (locked, damaged and refused): nothing started, nothing to drain.
  if (outbox_ == nullptr) return;
  if (!drained_) Drain(milliseconds(0), milliseconds(0));
}

FleetSettings FleetAgent::settings() const {
  absl::MutexLock lock(&mu_);
  return fleet_;
}

bool FleetAgent::SleepFor(milliseconds d, const std::stop_token& stop) {
  WaitFor(stop, d, [] { return false; });
  return !stop.stop_requested();
}

size_t FleetAgent::undelivered_outcomes() const { return outbox_->pending_count(kOutcomeKind); }

size_t FleetAgent::leases_held() const {
  absl::MutexLock lock(&mu_);
  return held_.size();
}

void FleetAgent::Reload(const FleetSettings& fleet) {
  absl::MutexLock lock(&mu_);
  if (fleet.control_plane != fleet_.control_plane || fleet.tls != fleet_.tls || fleet.ca_file != fleet_.ca_file ||
      fleet.cert_file != fleet_.cert_file || fleet.key_file != fleet_.key_file) {
    Log(LogLevel::kWarn, "SIGHUP: fleet.control_plane and fleet.tls changes take effect at the next restart");
  }
  if (fleet.token_file != fleet_.token_file) {
    Log(LogLevel::kWarn, "SIGHUP: a new fleet.token_file path takes effect at the next restart (the file's "
                         "contents are re-read whenever they change)");
  }
  const std::string control_plane = fleet_.control_plane, token_file = fleet_.token_file;
  fleet_ = fleet;
  fleet_.control_plane = control_plane;
  fleet_.token_file = token_file;
}

// ---------------------------------------------------------------------------------------------------------
// Commands over a lease's stream.

void FleetAgent::FinishUploadLocked(Lease* lease, const std::string& id, const absl::Status& s)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease->cmd_mu) {
  Lease::Upload& up = lease->uploads[id];
  up.held.clear();
  up.done = true;
  if (up.call != nullptr) {
    // Its tool_call_finished: the result of Finish, or `s` (the file removed).
    if (!s.ok()) up.call->Fail(s);
    up.call.reset();
  } else {
    // It never began (the session had ended): its end is still an event named after the command.
    pb::Event done;
    pb::ToolCallFinished* f = done.mutable_tool_call_finished();
    f->set_call_id(id);
    f->mutable_error()->set_code(static_cast<int>(s.code()));
    f->mutable_error()->set_message(std::string(s.message()));
    lease->session->events().Append(std::move(done));
  }
  // The chunks passed through gRPC's buffers and this thread's malloc arena; glibc keeps freed memory in
  // an arena for reuse, which left an agent hundreds of MiB larger after one big upload. Give it back.
  malloc_trim(0);
}

void FleetAgent::WriteUploadChunkLocked(Lease* lease, const std::string& id, const pb::UploadPart& chunk)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease->cmd_mu) {
  Lease::Upload& up = lease->uploads[id];
  // The same Session::Upload as local mode's Upload: a bad sha256, a failed write or an abort leaves no file.
  absl::Status s = up.call->Write(chunk.offset(), chunk.data());
  if (s.ok()) {
    up.next_offset = chunk.offset() + chunk.data().size();
    if (!chunk.last()) return;
    s = up.call->Finish(chunk.sha256()).status();
  }
  FinishUploadLocked(lease, id, s);
}

void FleetAgent::OnUploadDecided(Lease* lease, const std::string& id, const pb::HumanDecision& decision) {
  absl::MutexLock lock(&lease->cmd_mu);
  auto it = lease->uploads.find(id);
  if (it == lease->uploads.end() || it->second.done) return;
  Lease::Upload& up = it->second;
  if (absl::Status s = DecisionStatus(decision); !s.ok()) {
    FinishUploadLocked(lease, id, s);
    return;
  }
  up.gate = Lease::Upload::Gate::kApproved;
  std::vector<pb::UploadPart> held = std::move(up.held);
  up.held.clear();
  up.held_bytes = 0;
  up.next_offset = 0;
  for (const pb::UploadPart& chunk : held) {
    WriteUploadChunkLocked(lease, id, chunk);
    if (lease->uploads[id].done) break;
  }
}

// An upload chunk, cmd_mu held: refused, written, or held for its gate's decision (then `*ask_out` is the
// question to ask, after the lock is released).
void FleetAgent::HandleUploadChunkLocked(Lease* lease, const std::string& id, const pb::UploadPart& chunk,
                                         const CommandFail& fail, std::optional<GateAsk>* ask_out)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease->cmd_mu) {
  Session& session = *lease->session;
  if (chunk.data().size() > kMaxUploadPartBytes) {
    // The upload this chunk belongs to cannot go on (its bytes would have a hole): it ends, leaving no file.
    const std::string message = absl::StrCat("upload.data: ", chunk.data().size(), " bytes in one chunk, over the limit of ",
                                             kMaxUploadPartBytes, " bytes (4 MiB); send smaller chunks");
    auto it = lease->uploads.find(id);
    if (it != lease->uploads.end()) {
      if (it->second.call != nullptr) it->second.call->Fail(absl::InvalidArgumentError(message));
      it->second.call.reset();
      it->second.held.clear();
      it->second.done = true;
    }
    fail(absl::StatusCode::kInvalidArgument, message);
    malloc_trim(0);  // what the chunk took goes back to the system (see FinishUploadLocked)
    return;
  }
  Lease::Upload& up = lease->uploads[id];
  if (up.done || chunk.offset() + chunk.data().size() <= up.next_offset) {
    if (!chunk.data().empty() || up.done) return;  // a resend of a chunk already written
  }
  if (chunk.offset() != up.next_offset) {
    return fail(absl::StatusCode::kInvalidArgument,
                absl::StrCat("upload: chunk at offset ", chunk.offset(), ", expected ", up.next_offset));
  }
  // Its tool call begins with its first chunk (tool_call_started, before a HumanRequest its gate raises);
  // the command id is its call id and its idempotency key.
  if (up.call == nullptr) {
    absl::StatusOr<std::unique_ptr<Session::Upload>> begun = session.BeginUpload(id, id, chunk.path(), chunk.mode());
    if (!begun.ok()) return FinishUploadLocked(lease, id, begun.status());
    up.call = std::move(*begun);
  }
  // A gated upload (approvals "upload") waits for its decision before a byte is written; its chunks are
  // held meanwhile, up to kMaxHeldUploadBytes (the decision arrives on this same stream, so this thread
  // cannot wait for it).
  if (up.gate == Lease::Upload::Gate::kUnasked) {
    std::optional<GateAsk> ask = session.gates().ForTransfer("upload", chunk.path(), "");
    if (!ask) {
      up.gate = Lease::Upload::Gate::kApproved;
    } else {
      up.gate = Lease::Upload::Gate::kWaiting;
      up.next_offset = chunk.offset() + chunk.data().size();
      up.held_bytes = chunk.data().size();
      up.held.push_back(chunk);
      ask->call_id = id;
      *ask_out = std::move(ask);  // asked by the caller, once the lock is released
      return;
    }
  }
  if (up.gate == Lease::Upload::Gate::kWaiting) {
    if (up.held_bytes + chunk.data().size() > kMaxHeldUploadBytes) {
      FinishUploadLocked(lease, id, absl::ResourceExhaustedError(absl::StrCat(
                                        "upload: more than ", kMaxHeldUploadBytes,
                                        " bytes sent before the upload was approved; the upload ended")));
      return;
    }
    up.next_offset = chunk.offset() + chunk.data().size();
    up.held_bytes += chunk.data().size();
    up.held.push_back(chunk);
    return;
  }
  WriteUploadChunkLocked(lease, id, chunk);
}

void FleetAgent::HandleUploadCommand(Lease* lease, const std::string& id, const pb::UploadPart& chunk,
                                     const CommandFail& fail) {
  std::optional<GateAsk> ask;
  {
    absl::MutexLock lock(&lease->cmd_mu);
    HandleUploadChunkLocked(lease, id, chunk, fail, &ask);
  }
  // Asked with the lock released: the decision may come at once (a session-scoped one) and takes the lock.
  if (!ask) return;
  lease->session->approvals().Ask(std::move(*ask), [this, lease, id](const pb::HumanDecision& d) {
    OnUploadDecided(lease, id, d);
  });
}

void FleetAgent::HandleCommand(Lease* lease, const pb::SessionCommand& command,
                               const std::function<void(const pb::AgentMessage&)>& send) {
  Session& session = *lease->session;
  const std::string& id = command.command_id();
  const auto fail = [&](absl::StatusCode code, std::string message) {
    pb::AgentMessage m;
    m.mutable_command_error()->set_command_id(id);
    m.mutable_command_error()->set_code(static_cast<int>(code));
    m.mutable_command_error()->set_message(ToValidUtf8(message));  // it may quote jail-made text
    send(m);
  };
  if (id.empty() || id.size() > 256) {
    return fail(absl::StatusCode::kInvalidArgument, "command_id: required, at most 256 bytes");
  }
  if (command.has_upload()) return HandleUploadCommand(lease, id, command.upload(), fail);
  {
    absl::MutexLock lock(&lease->cmd_mu);
    if (!lease->commands_seen.insert(id).second) return;  // resent after a reconnect: already carried out
  }
  session.Touch();
  switch (command.command_case()) {
    case pb::SessionCommand::kCall: {
      absl::StatusOr<std::pair<std::string, uint64_t>> started = session.StartCallOnce(id, id, command.call());
      if (!started.ok()) fail(started.status().code(), std::string(started.status().message()));
      return;
    }
    case pb::SessionCommand::kInput: {
      const pb::ExecInput& in = command.input();
      if (absl::Status s = session.ControlExec(in.call_id(), Session::ExecControl::Of(in)); !s.ok()) {
        fail(s.code(), std::string(s.message()));
      }
      return;
    }
    case pb::SessionCommand::kAnswer: {
      // The same registry as local mode's RespondHumanRequest; the command id is the idempotency key, so a
      // redelivered answer (another agent-side dedupe missed it) returns the recorded decision and changes
      // nothing.
      const pb::HumanAnswer& a = command.answer();
      pb::HumanDecision::Decision decision = a.decision();
      if (decision == pb::HumanDecision::DECISION_UNSPECIFIED) {
        decision = a.approved() ? pb::HumanDecision::APPROVE : pb::HumanDecision::REJECT;
      }
      absl::StatusOr<pb::HumanDecision> decided =
          session.approvals().Respond(a.request_id(), decision, a.scope(), a.note(), a.text(), id, "control_plane");
      if (!decided.ok()) {
        fail(decided.status().code(), absl::StrCat("answer (command ", id, "): ", decided.status().message()));
      }
      return;
    }
    case pb::SessionCommand::kCancel:
      session.End(pb::Outcome::CANCELED, "canceled",
                  command.cancel().reason().empty() ? "canceled by the control plane" : command.cancel().reason());
      return;
    default:
      return fail(absl::StatusCode::kInvalidArgument, "command: none given (call, upload, input, answer, cancel)");
  }
}

// ---------------------------------------------------------------------------------------------------------
// Drain.

// Stops the lease loop: no more grants are asked for, and the long poll in flight is canceled.
void FleetAgent::StopLeasing() {
  draining_ = true;
  {
    absl::MutexLock lock(&lease_ctx_mu_);
    if (lease_ctx_ != nullptr) lease_ctx_->TryCancel();
  }
  leaser_.request_stop();
  {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  }
  if (leaser_.joinable()) leaser_.join();
}

// Reports what the outbox holds until it is empty or `flush_until`, then stops the heartbeat and the
// reporter. Returns how many outcomes are still undelivered.
size_t FleetAgent::DeliverOutbox(Clock::time_point flush_until) {
  for (;;) {
    uint64_t delivered;
    {
      absl::MutexLock lock(&mu_);
      delivered = delivered_;
    }
    const size_t undelivered = undelivered_outcomes();
    if (undelivered == 0 || Clock::now() >= flush_until) {
      heartbeat_.request_stop();
      reporter_.request_stop();
      {
        absl::MutexLock lock(&mu_);
        cv_.SignalAll();
      }
      if (heartbeat_.joinable()) heartbeat_.join();
      if (reporter_.joinable()) reporter_.join();
      drained_ = true;
      Log(LogLevel::kInfo, "fleet: drained", {{"undelivered_outcomes", absl::StrCat(undelivered)}});
      return undelivered;
    }
    // The reporter counts each outcome it takes out of the outbox (delivered_).
    absl::MutexLock lock(&mu_);
    WaitLocked(flush_until, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return delivered_ != delivered; });
  }
}

size_t FleetAgent::Drain(milliseconds grace, milliseconds flush) {
  StopLeasing();
  const auto running = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t n = 0;
    for (const auto& [id, lease] : leases_) n += lease->finished ? 0 : 1;
    return n;
  };
  {
    absl::MutexLock lock(&mu_);
    Log(LogLevel::kInfo, "fleet: draining", {{"running", absl::StrCat(running())}, {"grace_ms", absl::StrCat(grace.count())}});
    WaitLocked(Clock::now() + grace, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running() == 0; });
  }
  std::vector<std::shared_ptr<Lease>> all;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, lease] : leases_) all.push_back(lease);
  }
  canceling_ = true;
  for (const auto& lease : all) {
    if (!lease->finished && lease->has_session) {
      lease->session->End(pb::Outcome::CANCELED, "drained", "the agent drained before the session finished");
    }
  }
  {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();  // pumps waiting to reconnect a stream see their session ended
  }
  // Every pump journals its outcome when its session ends (a canceled jail ends within moments), whatever
  // its stream does; the flush budget bounds the wait.
  const Clock::time_point flush_until = Clock::now() + flush;
  {
    absl::MutexLock lock(&mu_);
    WaitLocked(flush_until, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running() == 0; });
    if (const size_t n = running(); n > 0) {
      Log(LogLevel::kWarn, "fleet: sessions still ending after the drain's flush time", {{"count", absl::StrCat(n)}});
    }
  }
  // Their streams end now (a stream the control plane stopped reading would otherwise wait for its deadline).
  for (const auto& lease : all) lease->StopStream();
  for (const auto& lease : all) {
    if (lease->pump.joinable()) lease->pump.join();
  }
  {
    absl::MutexLock lock(&mu_);
    leases_.clear();
  }
  all.clear();
  return DeliverOutbox(flush_until);
}

}  // namespace sbx::agent
