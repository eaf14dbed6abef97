#include "agent/fleet/fleet_agent.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include <malloc.h>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "agent/session/jail_text.h"
#include "agent/session/file_transfer.h"
#include "agent/obs/log.h"
#include "duvo/sandbox/v1/agent_state.pb.h"
#include "base/status.h"

namespace sbx::agent {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr char kLeaseKind[] = "lease";
constexpr char kOutcomeKind[] = "outcome";
constexpr char kFinishedKind[] = "finished";
// A lease's HumanRequest / HumanDecision events, journaled as they happen (payload: the Event), so that the
// report of a session lost with the agent still has every decision; acked once the lease's outcome is.
constexpr char kApprovalKind[] = "approval";
// Finished leases remembered in the outbox (FinishedLeaseRecord): the newest this many, for this long.
constexpr size_t kFinishedLeases = 20000;
constexpr int64_t kFinishedMaxAgeMs = 24 * 3600 * 1000;
// A LeaseResponse with more grants than the free capacity asked for plus this is refused whole.
constexpr uint64_t kLeaseSurplus = 16;
// Refused lease ids kept to send (and remembered so as not to reconcile them); sent at most this many a
// heartbeat.
constexpr size_t kRefusedLeases = 100000;
constexpr size_t kRefusedPerHeartbeat = 10000;
// Held leases considered per heartbeat answer (the rest come again in the next).
constexpr int kReconcilePerHeartbeat = 1024;
// Lease ids remembered for duplicate detection beyond those in the outbox.
constexpr size_t kKnownLeases = 100000;
// A lease's ttl from the control plane: 0 is 30 s; at most a day (a larger value would overflow the clock).
milliseconds LeaseTtl(uint64_t ttl_ms) {
  return milliseconds(ttl_ms == 0 ? 30000 : std::min<uint64_t>(ttl_ms, 24 * 3600 * 1000));
}

// Events a report carries for the control plane to fill its gaps; output and file data beyond it travel as
// dropped_bytes.
constexpr size_t kReportEventBytes = 2 << 20;
constexpr size_t kReportMaxBytes = 3 << 20;    // all its events (an outbox record holds at most 4 MiB)
// After the session ended, how long the stream may take to have its last events acknowledged.
constexpr milliseconds kFinalAckWait{2000};

int64_t UnixMs() {
  return std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string GrpcError(const grpc::Status& s) {
  return absl::StrCat(s.error_code(), " ", s.error_message());
}

// The largest UploadPart.data one upload command may carry (worker.proto). The reader thread writes each
// chunk into the jail before it reads the next message, so a chunk is what the agent holds of an upload at a
// time (twice, briefly: gRPC's buffer and the parsed message), and gRPC's flow control holds the sender back
// meanwhile.
constexpr size_t kMaxUploadPartBytes = 4 << 20;
// What a gated upload may send before it is approved (held in memory until the decision).
constexpr size_t kMaxHeldUploadBytes = 16 << 20;

// Attach, spoken with the control plane's messages as raw bytes: the generated stub parses each
// ControlMessage inside gRPC, and one that does not parse (a proto3 string that is not UTF-8) fails the whole
// stream, so that a control plane resending its commands after every reconnect would never get past it. Read
// as bytes, such a command is answered by its id (ParseControl) and the stream goes on.
using AttachStream = grpc::ClientReaderWriter<pb::AgentMessage, grpc::ByteBuffer>;
std::unique_ptr<AttachStream> OpenAttach(grpc::ChannelInterface* channel, grpc::ClientContext* ctx) {
  static const grpc::internal::RpcMethod kAttach("/duvo.sandbox.v1.WorkerGateway/Attach",
                                                 grpc::internal::RpcMethod::BIDI_STREAMING);
  // NOTE: the factory the generated stub uses, with ByteBuffer for the messages read.
  return std::unique_ptr<AttachStream>(
      grpc::internal::ClientReaderWriterFactory<pb::AgentMessage, grpc::ByteBuffer>::Create(channel, kAttach, ctx));
}

// The last length-delimited field `number` of a serialized message, if any (nullopt also when it is
// malformed).
std::optional<std::string> LengthDelimitedField(std::string_view bytes, int number) {
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  std::optional<std::string> found;
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    if (WireFormatLite::GetTagFieldNumber(tag) == number &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t size = 0;
      std::string value;
      if (!in.ReadVarint32(&size) || !in.ReadString(&value, static_cast<int>(size))) return std::nullopt;
      found = std::move(value);
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      return std::nullopt;
    }
  }
  return found;
}

// The path ("call.exec.argv") of the first string field of a serialized `type` that is not UTF-8, or "".
std::string NonUtf8Field(const google::protobuf::Descriptor* type, std::string_view bytes, const std::string& prefix,
                         int depth = 0) {
  using google::protobuf::FieldDescriptor;
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    const FieldDescriptor* f = type->FindFieldByNumber(WireFormatLite::GetTagFieldNumber(tag));
    const bool nested = f != nullptr && WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED &&
                        (f->type() == FieldDescriptor::TYPE_STRING || f->type() == FieldDescriptor::TYPE_MESSAGE);
    if (!nested) {
      if (!WireFormatLite::SkipField(&in, tag)) return "";
      continue;
    }
    uint32_t size = 0;
    std::string value;
    if (!in.ReadVarint32(&size) || !in.ReadString(&value, static_cast<int>(size))) return "";
    const std::string path = prefix.empty() ? f->name() : absl::StrCat(prefix, ".", f->name());
    if (f->type() == FieldDescriptor::TYPE_STRING) {
      if (!IsValidUtf8(value)) return path;
    } else if (depth < 16) {
      std::string inner = NonUtf8Field(f->message_type(), value, path, depth + 1);
      if (!inner.empty()) return inner;
    }
  }
  return "";
}

// One message read from Attach. A command that does not parse is `refused`: its id (as far as it can be
// read) and why, naming the field; the stream goes on without it.
struct ControlRead {
  pb::ControlMessage message;
  bool refused = false;
  std::string refused_id, error;
};

ControlRead ParseControl(grpc::ByteBuffer* buffer) {
  ControlRead r;
  grpc::ByteBuffer attempt(*buffer);  // shares the slices; Deserialize consumes what it is given
  if (grpc::SerializationTraits<pb::ControlMessage>::Deserialize(&attempt, &r.message).ok()) {
    buffer->Clear();
    return r;
  }
  r.message.Clear();
  r.refused = true;
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer->Dump(&slices).ok()) {
    for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  buffer->Clear();
  std::optional<std::string> command = LengthDelimitedField(bytes, pb::ControlMessage::kCommandFieldNumber);
  if (!command) {
    r.error = "a message from the control plane does not parse as a duvo.sandbox.v1.ControlMessage";
    return r;
  }
  r.refused_id = LengthDelimitedField(*command, pb::SessionCommand::kCommandIdFieldNumber).value_or("");
  const std::string field = NonUtf8Field(pb::SessionCommand::descriptor(), *command, "");
  r.error = field.empty()
                ? "command: does not parse as a duvo.sandbox.v1.SessionCommand; it was not run"
                : absl::StrCat(field, ": not valid UTF-8 (a proto3 string must be); the command was not run");
  return r;
}

// Cancels a stream whose operation overran its deadline. The synchronous API has no deadline per operation
// (the context's covers the whole stream, which lives as long as its session): a control plane that stops
// reading blocks a Write for good behind flow control, one that never answers blocks a Read. TryCancel
// makes the blocked operation, and every later one, return at once.
class StreamWatchdog {
 public:
  StreamWatchdog(grpc::ClientContext* ctx, milliseconds timeout)
      : ctx_(ctx), timeout_(timeout), thread_([this](std::stop_token stop) { Run(stop); }) {}
  ~StreamWatchdog() {
    thread_.request_stop();
    cv_.notify_all();
  }

  // While alive, `what` must end within the timeout.
  class Op {
   public:
    Op(StreamWatchdog* w, const char* what) : w_(w) {
      std::lock_guard lock(w_->mu_);
      id_ = ++w_->next_id_;
      w_->armed_[id_] = {Clock::now() + w_->timeout_, what};
      w_->cv_.notify_all();
    }
    ~Op() {
      std::lock_guard lock(w_->mu_);
      w_->armed_.erase(id_);
    }
    Op(const Op&) = delete;
    Op& operator=(const Op&) = delete;

   private:
    StreamWatchdog* w_;
    uint64_t id_ = 0;
  };

  // The operation that overran, or nullptr.
  const char* fired() {
    std::lock_guard lock(mu_);
    return fired_;
  }

 private:
  void Run(std::stop_token stop) {
    std::unique_lock lock(mu_);
    while (!stop.stop_requested()) {
      if (armed_.empty()) {
        cv_.wait(lock, stop, [&] { return !armed_.empty(); });
        continue;
      }
      auto first = std::min_element(armed_.begin(), armed_.end(),
                                    [](const auto& a, const auto& b) { return a.second.first < b.second.first; });
      const Clock::time_point deadline = first->second.first;
      if (Clock::now() >= deadline) {
        if (fired_ == nullptr) fired_ = first->second.second;
        armed_.clear();
        ctx_->TryCancel();
        continue;
      }
      cv_.wait_until(lock, stop, deadline, [] { return false; });
    }
  }

  grpc::ClientContext* const ctx_;
  const milliseconds timeout_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  uint64_t next_id_ = 0;                                                      // GUARDED_BY(mu_)
  std::map<uint64_t, std::pair<Clock::time_point, const char*>> armed_;     // GUARDED_BY(mu_)
  const char* fired_ = nullptr;                                              // GUARDED_BY(mu_)
  std::jthread thread_;  // last
};

pb::Outcome Failed(const std::string& reason, const std::string& message) {
  pb::Outcome o;
  o.set_status(pb::Outcome::FAILED);
  o.set_reason(reason);
  o.set_message(message);
  return o;
}

}  // namespace

// A lost session's approval events, journaled under its lease (kApprovalKind): in seq order, then, for each
// request with no decision among them, a HumanDecision CANCELED with seq 0 (made after the session's log was
// gone, so it has no seq of its own; worker.proto ReportOutcomeRequest.events).
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

constexpr char kDamagedMessage[] = "the lease's records were lost with a damaged outbox journal";

void FleetAgent::Count(std::string_view event) {
  if (options_.metrics != nullptr) options_.metrics->FleetEvent(event);
}

struct FleetAgent::Lease {
  std::string lease_id;
  std::string session_id;
  pb::SandboxRequest request;
  pb::LeaseRecord record;                    // as journaled
  uint64_t record_id = 0;                    // the outbox's lease record
  std::atomic<int64_t> expires_ns{0};        // steady clock
  std::atomic<uint64_t> acked_seq{0};        // the control plane holds every event up to here
  std::atomic<bool> finished{false};         // the pump is done (the outcome is journaled)
  std::shared_ptr<Session> session;          // set by the pump before it is visible to other threads' use
  std::atomic<bool> has_session{false};

  // The outbox records of its approval events (kApprovalKind). Shared with the session's Approvals observer,
  // which may outlive this lease; `closed` once the outcome is journaled (the events are in it).
  struct ApprovalJournal {
    std::mutex mu;
    bool closed = false;          // GUARDED_BY(mu)
    std::vector<uint64_t> ids;    // GUARDED_BY(mu)
  };
  std::shared_ptr<ApprovalJournal> approval_journal = std::make_shared<ApprovalJournal>();

  std::mutex cmd_mu;
  std::set<std::string> commands_seen;  // GUARDED_BY(cmd_mu)
  struct Upload {
    // The upload's tool call (Session::BeginUpload, at its first chunk) until it ends: its events, and no
    // file left unless it succeeded.
    std::unique_ptr<Session::Upload> call;
    uint64_t next_offset = 0;
    bool done = false;
    // Approvals "upload": asked at the first chunk; the chunks wait in `held` until the decision.
    enum class Gate { kUnasked, kWaiting, kApproved } gate = Gate::kUnasked;
    std::vector<pb::UploadPart> held;
    uint64_t held_bytes = 0;
  };
  std::map<std::string, Upload> uploads;  // GUARDED_BY(cmd_mu)

  // The Attach stream: the streamer (re)connects it while the session runs; the pump stops it once the
  // outcome is journaled, canceling the stream in flight.
  std::mutex stream_mu;
  bool stream_stop = false;                   // GUARDED_BY(stream_mu)
  grpc::ClientContext* stream_ctx = nullptr;  // GUARDED_BY(stream_mu): the stream in flight
  std::atomic<bool> stream_ended{false};      // the streamer is done
  std::atomic<bool> pump_done{false};         // the pump returned (or is about to): joining it is immediate

  void StopStream() {
    std::lock_guard lock(stream_mu);
    stream_stop = true;
    if (stream_ctx != nullptr) stream_ctx->TryCancel();
  }
  bool stream_stopped() {
    std::lock_guard lock(stream_mu);
    return stream_stop;
  }

  std::jthread driver;
  std::jthread streamer;
  std::jthread pump;  // last

  Clock::time_point expires() const { return Clock::time_point(Clock::duration(expires_ns.load())); }
  void set_expires(Clock::time_point t) { expires_ns.store(t.time_since_epoch().count()); }
};

FleetAgent::FleetAgent(Options options) : options_(std::move(options)), fleet_(options_.fleet) {}

absl::StatusOr<std::unique_ptr<FleetAgent>> FleetAgent::Start(Options options) {
  if (options.sessions == nullptr) return absl::InvalidArgumentError("FleetAgent needs a SessionManager");
  std::unique_ptr<FleetAgent> agent(new FleetAgent(std::move(options)));
  FleetAgent& a = *agent;
  OutboxOptions outbox_options;
  outbox_options.on_damage = a.options_.fleet.outbox_salvage ? OutboxDamagePolicy::kSalvage : OutboxDamagePolicy::kRefuse;
  ASSIGN_OR_RETURN(a.outbox_, Outbox::Open(a.options_.outbox_dir, outbox_options));
  // A torn last record (a crash mid-write): a lease record's grant never started a session. Reported below.
  std::optional<std::string> torn_lease;
  if (a.outbox_->dropped_tail_bytes() > 0) {
    const std::optional<OutboxLostRecord>& torn = a.outbox_->torn_record();
    Log(LogLevel::kWarn, "outbox: dropped a torn tail",
        {{"journal", a.outbox_->journal_path()},
         {"bytes", absl::StrCat(a.outbox_->dropped_tail_bytes())},
         {"record", torn ? torn->kind : "unreadable"},
         {"lease_id", torn ? ToValidUtf8(torn->key) : ""}});
    if (torn && torn->kind == kLeaseKind) torn_lease = torn->key;
  }
  if (const std::optional<OutboxDamage>& damage = a.outbox_->damage(); damage) {
    // One line for the operator: what, where, and which leases it hid. A lost "finished" record's outcome was
    // delivered already.
    std::string lost;
    for (const OutboxLostRecord& r : damage->lost) {
      if (r.kind != kLeaseKind && r.kind != kOutcomeKind) continue;
      if (a.damage_hid_.insert(r.key).second) absl::StrAppend(&lost, lost.empty() ? "" : ",", ToValidUtf8(r.key));
    }
    a.damage_unreadable_ = damage->unreadable;
    Log(LogLevel::kError, "outbox: damaged journal salvaged",
        {{"journal", a.outbox_->journal_path()},
         {"offset", absl::StrCat(damage->offset)},
         {"damaged_bytes", absl::StrCat(damage->bytes)},
         {"problem", damage->what},
         {"lost_lease_ids", lost},
         {"more_may_be_lost", damage->unreadable ? "yes: reported outbox_damaged when the control plane names them" : "no"},
         {"set_aside", damage->set_aside}});
  }
  ASSIGN_OR_RETURN(a.channel_, MakeWorkerChannel(a.options_.fleet));
  ASSIGN_OR_RETURN(a.stream_channel_, MakeWorkerChannel(a.options_.fleet, WorkerChannelUse::kStreams));
  a.stub_ = pb::WorkerGateway::NewStub(a.channel_);
  a.token_ = std::make_unique<TokenFile>(a.options_.fleet.token_file);
  if (!a.options_.fleet.tls) {
    Log(LogLevel::kWarn, "fleet: the control plane connection is plaintext (no fleet.tls)",
        {{"control_plane", a.options_.fleet.control_plane}});
  }

  // Recovery: leases journaled by a previous agent that never got an outcome died with it.
  size_t lost = 0, undelivered = 0;
  // A lease served from the warm pool may have two records (a crash between journaling the pooled session and
  // acking the first record): the newest one is reported.
  std::map<std::string, uint64_t> newest;
  // A lease whose outcome is journaled already (a crash between journaling it and acking the lease record)
  // is reported with that outcome only.
  std::set<std::string> journaled;
  std::set<std::string> keys;  // of every pending record
  for (const OutboxRecord& rec : a.outbox_->Pending()) {
    keys.insert(rec.key);
    if (rec.kind == kLeaseKind) newest[rec.key] = std::max(newest[rec.key], rec.id);
    if (rec.kind == kOutcomeKind) journaled.insert(rec.key);
  }
  // Finished leases, newest record per lease; an unreadable one still says the lease finished.
  for (const OutboxRecord& rec : a.outbox_->Pending(kFinishedKind)) {
    pb::FinishedLeaseRecord f;
    if (!f.ParseFromString(rec.payload)) {
      Log(LogLevel::kError, "outbox: an unreadable finished-lease record; a re-grant is answered outbox_damaged",
          {{"lease_id", ToValidUtf8(rec.key)}});
      *f.mutable_report() = LostReport(a.options_.fleet.agent_id, rec.key, "", "outbox_damaged", kDamagedMessage);
      f.set_finished_unix_ms(UnixMs());
    }
    if (auto old = a.finished_.find(rec.key); old != a.finished_.end()) {
      a.finished_order_.erase(old->second.record_id);
      RETURN_IF_ERROR(a.outbox_->Ack(old->second.record_id));
    }
    a.finished_[rec.key] = Finished{rec.id, f.finished_unix_ms(), std::move(*f.mutable_report())};
    a.finished_order_[rec.id] = rec.key;
  }
  for (uint64_t id : a.AgeOutFinishedLocked()) RETURN_IF_ERROR(a.outbox_->Ack(id));
  // An outcome record that does not parse is still the lease's end: reported failed, outbox_damaged.
  for (const OutboxRecord& rec : a.outbox_->Pending(kOutcomeKind)) {
    pb::OutcomeRecord out;
    if (out.ParseFromString(rec.payload)) continue;
    Log(LogLevel::kError, "outbox: an unreadable outcome record; reporting the lease failed, outbox_damaged",
        {{"lease_id", ToValidUtf8(rec.key)}});
    *out.mutable_report() = LostReport(a.options_.fleet.agent_id, rec.key, "", "outbox_damaged", kDamagedMessage);
    RETURN_IF_ERROR(a.outbox_->Append(kOutcomeKind, rec.key, out.SerializeAsString()).status());
    RETURN_IF_ERROR(a.outbox_->Ack(rec.id));
  }
  if (torn_lease && keys.count(*torn_lease) == 0 && a.finished_.count(*torn_lease) == 0) {
    pb::OutcomeRecord out;
    *out.mutable_report() =
        LostReport(a.options_.fleet.agent_id, *torn_lease, "", "agent_restart",
                   "the agent restarted while it journaled the lease, before its session started");
    RETURN_IF_ERROR(a.outbox_->Append(kOutcomeKind, *torn_lease, out.SerializeAsString()).status());
    ++lost;
  }
  const std::vector<OutboxRecord> approvals = a.outbox_->Pending(kApprovalKind);
  for (const OutboxRecord& rec : a.outbox_->Pending()) {
    if (rec.kind != kLeaseKind) continue;
    pb::LeaseRecord lr;
    const bool readable = lr.ParseFromString(rec.payload);
    if (!readable) {
      Log(LogLevel::kError, "outbox: an unreadable lease record; reporting it failed, outbox_damaged",
          {{"lease_id", ToValidUtf8(rec.key)}});
    }
    // NOTE: the lost session's cgroup is gone already: the agent's cgroup ledger removed it at start.
    if (newest[rec.key] != rec.id || journaled.count(rec.key) > 0) {
      RETURN_IF_ERROR(a.outbox_->Ack(rec.id));
      continue;
    }
    pb::OutcomeRecord out;
    pb::ReportOutcomeRequest* report = out.mutable_report();
    report->set_agent_id(a.options_.fleet.agent_id);
    report->set_lease_id(rec.key);
    report->set_session_id(lr.session_id());
    *report->mutable_outcome() =
        readable ? Failed("agent_restart", "the agent restarted while the session ran; its jail ended with the agent")
                 : Failed("outbox_damaged", kDamagedMessage);
    for (pb::Event& e : LostApprovalEvents(approvals, rec.key, lr.session_id())) *report->add_events() = std::move(e);
    RETURN_IF_ERROR(a.outbox_->Append(kOutcomeKind, rec.key, out.SerializeAsString()).status());
    RETURN_IF_ERROR(a.outbox_->Ack(rec.id));
    ++lost;
  }
  // Every lease's approval events are in its outcome record now (journaled before, or just above).
  for (const OutboxRecord& rec : approvals) RETURN_IF_ERROR(a.outbox_->Ack(rec.id));
  for (const OutboxRecord& rec : a.outbox_->Pending()) {
    if (rec.kind != kOutcomeKind || !a.held_.emplace(rec.key, "").second) continue;  // one slot per lease
    a.known_.insert(rec.key);
    a.known_order_.push_back(rec.key);
    a.report_held_.insert(rec.key);
    ++undelivered;
  }
  if (lost > 0 || undelivered > 0) {
    Log(LogLevel::kInfo, "fleet: recovered the outbox",
        {{"lost_sessions", absl::StrCat(lost)}, {"outcomes_to_report", absl::StrCat(undelivered)}});
  }
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

FleetAgent::~FleetAgent() {
  // The metrics server may outlive this agent: its gauges must not call into it any more.
  if (options_.metrics != nullptr) options_.metrics->SetFleetGauges(nullptr, nullptr);
  // Start() failed before the outbox opened (locked, damaged and refused): nothing started, nothing to drain.
  if (outbox_ == nullptr) return;
  if (!drained_) Drain(milliseconds(0), milliseconds(0));
}

FleetSettings FleetAgent::settings() const {
  std::lock_guard lock(mu_);
  return fleet_;
}

bool FleetAgent::SleepFor(milliseconds d, const std::stop_token& stop) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

size_t FleetAgent::undelivered_outcomes() const { return outbox_->pending_count(kOutcomeKind); }

size_t FleetAgent::leases_held() const {
  std::lock_guard lock(mu_);
  return held_.size();
}

void FleetAgent::Reload(const FleetSettings& fleet) {
  std::lock_guard lock(mu_);
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
// Leasing.

void FleetAgent::LeaseLoop(std::stop_token stop) {
  FleetSettings fleet = settings();
  Backoff backoff(fleet.backoff_initial, fleet.backoff_max);
  while (!stop.stop_requested() && !draining_) {
    fleet = settings();
    const uint32_t free = FreeCapacity();
    if (free == 0) {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, stop, milliseconds(100), [&] { return FreeCapacityLocked() > 0; });
      continue;
    }
    pb::LeaseRequest request;
    request.set_agent_id(fleet.agent_id);
    request.mutable_labels()->insert(fleet.labels.begin(), fleet.labels.end());
    for (pb::SessionKind kind : options_.sessions->kinds()) {
      pb::KindCapacity* c = request.add_capacity();
      c->set_kind(kind);
      c->set_free(free);
      if (kind == pb::BROWSER) c->set_warm(std::min(free, options_.sessions->warm_count()));
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
      std::lock_guard lock(lease_ctx_mu_);
      if (draining_) break;
      lease_ctx_ = &ctx;
    }
    {
      std::lock_guard lock(mu_);
      lease_call_open_ = ++lease_calls_started_;
    }
    // Once this call returned and its grants were handled, a held lease it could have carried is reconciled.
    absl::Cleanup call_done = [this] {
      std::lock_guard lock(mu_);
      lease_calls_done_ = std::max(lease_calls_done_, lease_call_open_);
      lease_call_open_ = 0;
    };
    pb::LeaseResponse response;
    const grpc::Status status = stub_->Lease(&ctx, request, &response);
    {
      std::lock_guard lock(lease_ctx_mu_);
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
  std::lock_guard lock(mu_);
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
  std::lock_guard lock(mu_);
  if (held_.emplace(report.lease_id(), "").second || held_[report.lease_id()].empty()) {
    report_held_.insert(report.lease_id());
  }
  ++journaled_;
  cv_.notify_all();
  return true;
}

void FleetAgent::RefuseWhole(const pb::LeaseResponse& response, uint32_t free) {
  Count("refused_storm");
  size_t refused = 0;
  {
    std::lock_guard lock(mu_);
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

void FleetAgent::Accept(const pb::LeaseGrant& grant, bool over_capacity) {
  const std::string& id = grant.lease_id();
  if (id.empty() || id.size() > 256) {
    Log(LogLevel::kError, "fleet: a grant without a usable lease_id; ignored",
        {{"lease_id_bytes", absl::StrCat(id.size())}});
    return;
  }
  std::optional<pb::ReportOutcomeRequest> recorded;
  {
    std::lock_guard lock(mu_);
    auto f = finished_.find(id);
    if (f != finished_.end() && held_.count(id) == 0 && leases_.count(id) == 0) recorded = f->second.report;
  }
  if (recorded) {
    // Finished here before (also before a restart): the control plane hears its outcome again; it runs once.
    Count("duplicate");
    Log(LogLevel::kWarn, "fleet: a finished lease was granted again; reporting its recorded outcome, not running it",
        {{"lease_id", id}, {"status", pb::Outcome::Status_Name(recorded->outcome().status())}});
    JournalReport(*recorded);
    return;
  }
  {
    std::lock_guard lock(mu_);
    refused_.erase(id);  // granted again after a refusal: it never ran, so it may run now
    if (known_.count(id) > 0) {
      Count("duplicate");
      Log(LogLevel::kWarn, "fleet: duplicate lease ignored (it runs once)", {{"lease_id", id}});
      return;
    }
    known_.insert(id);
    known_order_.push_back(id);
    if (known_order_.size() > kKnownLeases) {
      const std::string& oldest = known_order_.front();
      if (leases_.count(oldest) == 0 && held_.count(oldest) == 0) known_.erase(oldest);
      known_order_.pop_front();
    }
  }
  const FleetSettings fleet = settings();
  if (over_capacity) return Reject(id, "the control plane granted more leases than the free capacity asked for");
  if (grant.request().size() > fleet.max_request_bytes) {
    return Reject(id, absl::StrCat("request: ", grant.request().size(), " bytes, over the agent's limit of ",
                                   fleet.max_request_bytes));
  }
  auto lease = std::make_shared<Lease>();
  lease->lease_id = id;
  if (!lease->request.ParseFromString(grant.request())) {
    return Reject(id, "request: not a valid duvo.sandbox.v1.SandboxRequest");
  }
  const pb::SessionKind kind = lease->request.kind();
  if (!pb::SessionKind_IsValid(kind) || kind == pb::SESSION_KIND_UNSPECIFIED) {
    return Reject(id, absl::StrCat("kind: ", static_cast<int>(kind), " is not a session kind this agent knows"));
  }
  const std::vector<pb::SessionKind> kinds = options_.sessions->kinds();
  if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) {
    return Reject(id, absl::StrCat("kind: ", pb::SessionKind_Name(kind), " sessions are not available on this agent"));
  }
  // The free capacity this grant answered was counted before the long poll: local sessions may have taken it.
  if (!options_.sessions->TryReserve()) {
    return Reject(id, "capacity: the agent's slots filled up while the grant was on its way");
  }
  lease->session_id = NewSessionId();
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
    options_.sessions->Unreserve();
    return;
  }
  lease->record_id = *record_id;
  lease->record = std::move(record);
  {
    std::lock_guard lock(mu_);
    held_[id] = lease->session_id;
    leases_[id] = lease;
  }
  Count("leased");
  Log(LogLevel::kInfo, "fleet: leased", {{"lease_id", id}, {"session_id", lease->session_id}});
  lease->pump = std::jthread([this, raw = lease.get()] { RunLease(raw); });
}

// ---------------------------------------------------------------------------------------------------------
// One lease: the session, its stream, its outcome.

void FleetAgent::RunLease(Lease* lease) {
  const pb::SandboxRequest& req = lease->request;
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
  (*create.mutable_labels())["lease_id"] = lease->lease_id;
  absl::StatusOr<pb::Session> created = options_.sessions->CreateWithId(create, lease->session_id, true);
  if (created.ok() && created->id() != lease->session_id) {
    // Served from the warm pool: the session is the pooled browser, with its own id. Journal that id before
    // anything else, so that after a crash the right cgroup is removed (recovery reports a lease once,
    // whichever of its records it finds).
    pb::LeaseRecord record = lease->record;
    record.set_session_id(created->id());
    absl::StatusOr<uint64_t> rejournaled = outbox_->Append(kLeaseKind, lease->lease_id, record.SerializeAsString());
    if (rejournaled.ok()) {
      if (absl::Status s = outbox_->Ack(lease->record_id); !s.ok()) {
        Log(LogLevel::kError, "outbox: cannot ack a lease record", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
      }
      lease->record_id = *rejournaled;
      lease->record = std::move(record);
    } else {
      Log(LogLevel::kError, "outbox: cannot journal the pooled session of a lease",
          {{"lease_id", lease->lease_id}, {"session_id", created->id()}, {"error", rejournaled.status().ToString()}});
    }
    std::lock_guard lock(mu_);
    lease->session_id = created->id();
    held_[lease->lease_id] = lease->session_id;
  }
  absl::StatusOr<std::shared_ptr<Session>> session =
      created.ok() ? options_.sessions->Find(lease->session_id) : absl::StatusOr<std::shared_ptr<Session>>(created.status());
  if (!session.ok()) {
    const absl::StatusCode code = session.status().code();
    const bool rejected = code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kPermissionDenied ||
                          code == absl::StatusCode::kUnimplemented || code == absl::StatusCode::kFailedPrecondition;
    Log(LogLevel::kWarn, "fleet: session did not start",
        {{"lease_id", lease->lease_id}, {"error", session.status().ToString()}});
    {
      // The session never existed: its slot is a reservation again (CreateWithId restored it).
      std::lock_guard lock(mu_);
      held_[lease->lease_id] = "";
    }
    JournalOutcome(lease, Failed(rejected ? "rejected" : "setup_error", std::string(session.status().message())));
    lease->stream_ended = true;
    lease->pump_done = true;
    return;
  }
  lease->session = *session;
  // Before any call can ask (DriveStartCalls below, commands once the stream attaches).
  lease->session->approvals().SetObserver(
      [outbox = outbox_.get(), journal = lease->approval_journal, lease_id = lease->lease_id,
       session_id = lease->session_id](const pb::Event& event) {
        pb::Event e = event;
        e.set_session_id(session_id);
        std::lock_guard lock(journal->mu);
        if (journal->closed) return;
        absl::StatusOr<uint64_t> id = outbox->Append(kApprovalKind, lease_id, e.SerializeAsString());
        if (id.ok()) {
          journal->ids.push_back(*id);
        } else {
          Log(LogLevel::kError, "outbox: cannot journal an approval event",
              {{"lease_id", lease_id}, {"error", id.status().ToString()}});
        }
      });
  lease->has_session = true;
  // A session that came up after the drain canceled the others (it was still starting then) ends too.
  if (canceling_) lease->session->End(pb::Outcome::CANCELED, "drained", "the agent drained before the session finished");
  if (req.calls_size() > 0) lease->driver = std::jthread([this, lease] { DriveStartCalls(lease); });  // joined by this pump

  // The stream on a thread of its own: the outcome below is journaled when the session ends, whatever the
  // stream is doing then (stuck, reconnecting, or gone).
  lease->streamer = std::jthread([this, lease] {
    const FleetSettings fleet = settings();
    Backoff backoff(fleet.backoff_initial, fleet.backoff_max);
    while (!lease->stream_stopped()) {
      std::optional<milliseconds> retry_after;
      if (StreamOnce(lease, &retry_after)) break;
      // The stream broke. Once the session has ended, its remaining events travel with the outcome report.
      if (lease->session->events().closed()) break;
      // Draining: the session is about to end (or be canceled), so look again soon rather than after a backoff.
      const milliseconds delay =
          draining_ ? std::min(backoff.Next(retry_after), milliseconds(200)) : backoff.Next(retry_after);
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, delay, [&] { return lease->session->events().closed() || lease->stream_stopped(); });
    }
    lease->stream_ended = true;
  });
  // Wait for the outcome (it is the last event; the log closes right after).
  std::vector<EventLog::EventPtr> ignored;
  while (!lease->session->events().closed()) {
    lease->session->events().Read(UINT64_MAX - 1, 1, Clock::now() + milliseconds(200), [] { return false; },
                                  &ignored);
  }
  if (lease->driver.joinable()) lease->driver.join();  // it returns once the log is closed
  // A healthy stream delivers the last events within moments, and the report then carries none; past that
  // (or at once when the stream is gone) the report carries what the control plane has not acknowledged.
  const Clock::time_point ack_until = Clock::now() + (draining_ ? milliseconds(200) : kFinalAckWait);
  while (lease->acked_seq < lease->session->events().last_seq() && !lease->stream_ended && Clock::now() < ack_until) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  JournalOutcome(lease, lease->session->Describe().outcome());
  lease->StopStream();
  {
    std::lock_guard lock(mu_);
    cv_.notify_all();  // a streamer waiting to reconnect
  }
  if (lease->streamer.joinable()) lease->streamer.join();
  lease->pump_done = true;
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

bool FleetAgent::StreamOnce(Lease* lease, std::optional<milliseconds>* retry_after) {
  Session& session = *lease->session;
  const FleetSettings fleet = settings();
  grpc::ClientContext ctx;
  if (absl::Status s = PrepareContext(*token_, &ctx, std::nullopt); !s.ok()) {
    Log(LogLevel::kError, "fleet: cannot attach", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
    return false;
  }
  {
    std::lock_guard lock(lease->stream_mu);
    if (lease->stream_stop) return false;
    lease->stream_ctx = &ctx;  // the pump cancels it once the outcome is journaled
  }
  const auto unregister = [lease] {
    std::lock_guard lock(lease->stream_mu);
    lease->stream_ctx = nullptr;
  };
  // Every operation on the stream has a deadline (fleet.stream_op_timeout_ms); the watchdog outlives the
  // stream's last operation (declared before it, destroyed after).
  StreamWatchdog watchdog(&ctx, fleet.stream_op_timeout);
  std::unique_ptr<AttachStream> stream = OpenAttach(stream_channel_.get(), &ctx);
  std::mutex write_mu;
  std::atomic<bool> write_failed{false};
  const auto send = [&](const pb::AgentMessage& m) {
    std::lock_guard lock(write_mu);
    if (write_failed) return false;
    StreamWatchdog::Op op(&watchdog, "write");
    if (!stream->Write(m)) write_failed = true;
    return !write_failed;
  };
  const auto finish = [&] {
    StreamWatchdog::Op op(&watchdog, "finish");
    return stream->Finish();
  };
  {
    pb::AgentMessage hello;
    pb::AttachHello* h = hello.mutable_hello();
    h->set_agent_id(fleet.agent_id);
    h->set_lease_id(lease->lease_id);
    h->set_session_id(lease->session_id);
    h->set_last_seq(session.events().last_seq());
    send(hello);
  }
  ControlRead first;
  bool resumed = false;
  if (!write_failed) {
    grpc::ByteBuffer raw;
    StreamWatchdog::Op op(&watchdog, "read the resume point");
    if (stream->Read(&raw)) {
      first = ParseControl(&raw);
      resumed = !first.refused && first.message.has_resume();
    }
  }
  if (!resumed) {
    ctx.TryCancel();
    const grpc::Status status = finish();
    unregister();
    *retry_after = RetryDelay(status, ctx);
    if (const char* what = watchdog.fired()) {
      Count("attach_timeout");
      Log(LogLevel::kWarn, "fleet: attach stream timed out; reconnecting",
          {{"lease_id", lease->lease_id}, {"operation", what},
           {"timeout_ms", absl::StrCat(fleet.stream_op_timeout.count())}});
    } else {
      Log(LogLevel::kDebug, "fleet: attach failed", {{"lease_id", lease->lease_id}, {"error", GrpcError(status)}});
    }
    return false;
  }
  uint64_t next = first.message.resume().after_seq();
  if (next > session.events().last_seq()) next = session.events().last_seq();  // a confused control plane
  if (next > lease->acked_seq) lease->acked_seq = next;
  session.events().MarkDelivered(lease->acked_seq);

  std::atomic<bool> reader_done{false};
  std::atomic<int64_t> last_read_ns{Clock::now().time_since_epoch().count()};
  std::jthread reader([&] {
    // Not under the watchdog: a control plane with nothing to say sends nothing. The writer below expects
    // acknowledgements while events are unacknowledged, and the stream's end cancels this read.
    grpc::ByteBuffer raw;
    while (stream->Read(&raw)) {
      last_read_ns = Clock::now().time_since_epoch().count();
      const ControlRead read = ParseControl(&raw);
      const pb::ControlMessage& msg = read.message;
      if (read.refused) {
        Count("command_refused");
        Log(LogLevel::kWarn, "fleet: a command from the control plane does not parse; refused",
            {{"lease_id", lease->lease_id}, {"command_id", ToValidUtf8(read.refused_id)}, {"error", read.error}});
        if (!read.refused_id.empty()) {
          pb::AgentMessage m;
          m.mutable_command_error()->set_command_id(ToValidUtf8(read.refused_id));
          m.mutable_command_error()->set_code(static_cast<int>(absl::StatusCode::kInvalidArgument));
          m.mutable_command_error()->set_message(read.error);
          send(m);
        }
      } else if (msg.has_ack_seq()) {
        // An ack past what was sent is a confused control plane: it acks what exists.
        const uint64_t acked = std::min<uint64_t>(msg.ack_seq(), session.events().last_seq());
        uint64_t seen = lease->acked_seq.load();
        while (acked > seen && !lease->acked_seq.compare_exchange_weak(seen, acked)) {
        }
        session.events().MarkDelivered(acked);
      } else if (msg.has_command()) {
        HandleCommand(lease, msg.command(), [&](const pb::AgentMessage& m) { send(m); });
      }
    }
    reader_done = true;
  });

  bool complete = false;
  bool stalled = false;
  std::optional<Clock::time_point> unacked_since;  // events were sent and not yet acknowledged
  std::optional<Clock::time_point> closed_at;
  while (!reader_done && !write_failed && !lease->stream_stopped()) {
    std::vector<EventLog::EventPtr> events;
    const EventLog::ReadResult r = session.events().Read(next, 64, Clock::now() + milliseconds(100),
                                                         [&] { return reader_done.load(); }, &events);
    for (const EventLog::EventPtr& e : events) {
      pb::AgentMessage m;
      *m.mutable_event() = *e;
      if (!send(m)) break;
      next = e->seq();
    }
    // A control plane that takes events must acknowledge them: with some unacknowledged and nothing read for
    // the timeout, the stream is stalled.
    const Clock::time_point now = Clock::now();
    if (lease->acked_seq >= next) {
      unacked_since.reset();
    } else if (!unacked_since) {
      unacked_since = now;
    } else {
      const Clock::time_point last_read{Clock::duration(last_read_ns.load())};
      if (now - std::max(*unacked_since, last_read) > fleet.stream_op_timeout) {
        stalled = true;
        break;
      }
    }
    if (r == EventLog::ReadResult::kClosed && next >= session.events().last_seq()) {
      if (lease->acked_seq >= next) {
        complete = true;
        break;
      }
      if (!closed_at) closed_at = now;
      if (now - *closed_at > kFinalAckWait) break;  // the report carries the rest
      std::this_thread::sleep_for(milliseconds(5));
    }
  }
  if (complete) {
    std::lock_guard lock(write_mu);
    StreamWatchdog::Op op(&watchdog, "half-close");
    stream->WritesDone();
  }
  ctx.TryCancel();
  reader.join();
  const grpc::Status status = finish();
  unregister();
  if (stalled || watchdog.fired() != nullptr) {
    Count("attach_timeout");
    Log(LogLevel::kWarn, "fleet: attach stream timed out; reconnecting",
        {{"lease_id", lease->lease_id},
         {"operation", stalled ? "acknowledge events" : watchdog.fired()},
         {"timeout_ms", absl::StrCat(fleet.stream_op_timeout.count())}});
  } else if (!complete && !session.events().closed() && !lease->stream_stopped()) {
    *retry_after = RetryDelay(status, ctx);
    Count("attach_error");
    Log(LogLevel::kInfo, "fleet: attach stream ended; reconnecting",
        {{"lease_id", lease->lease_id}, {"error", GrpcError(status)}});
  }
  return complete;
}

void FleetAgent::WriteUploadChunkLocked(Lease* lease, const std::string& id, const pb::UploadPart& chunk) {
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

void FleetAgent::FinishUploadLocked(Lease* lease, const std::string& id, const absl::Status& s) {
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

void FleetAgent::OnUploadDecided(Lease* lease, const std::string& id, const pb::HumanDecision& decision) {
  std::lock_guard lock(lease->cmd_mu);
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
  if (command.has_upload()) {
    const pb::UploadPart& chunk = command.upload();
    std::unique_lock lock(lease->cmd_mu);
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
      malloc_trim(0);  // what the chunk took goes back to the system (see below)
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
        lock.unlock();  // the decision may come at once (a session-scoped one) and takes the lock
        session.approvals().Ask(std::move(*ask), [this, lease, id](const pb::HumanDecision& d) {
          OnUploadDecided(lease, id, d);
        });
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
    return;
  }
  {
    std::lock_guard lock(lease->cmd_mu);
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
      Session::ExecControl control;
      control.stdin_data = in.stdin();
      control.stdin_eof = in.stdin_eof();
      control.rows = in.rows();
      control.cols = in.cols();
      control.signal = in.signal();
      if (absl::Status s = session.ControlExec(in.call_id(), control); !s.ok()) fail(s.code(), std::string(s.message()));
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
    std::lock_guard lock(lease->approval_journal->mu);
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
  std::lock_guard lock(mu_);
  ++journaled_;
  cv_.notify_all();
}

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
      std::lock_guard lock(mu_);
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
      std::lock_guard lock(mu_);
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
      std::lock_guard lock(mu_);
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
    std::lock_guard lock(mu_);
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
      std::lock_guard lock(mu_);
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
    std::lock_guard lock(mu_);
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
      std::lock_guard lock(mu_);
      seen = journaled_;
    }
    std::vector<OutboxRecord> pending = outbox_->Pending(kOutcomeKind);
    if (pending.empty()) {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, stop, milliseconds(1000), [&] { return journaled_ != seen; });
      continue;
    }
    for (const OutboxRecord& rec : pending) {
      if (stop.stop_requested()) return;
      pb::OutcomeRecord out;
      if (!out.ParseFromString(rec.payload)) {
        Log(LogLevel::kError, "outbox: an unreadable outcome record; dropping it", {{"lease_id", rec.key}});
        (void)outbox_->Ack(rec.id);
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
        std::lock_guard lock(mu_);
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
      std::lock_guard lock(mu_);
      cv_.notify_all();  // the lease loop may take another
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Drain.

size_t FleetAgent::Drain(milliseconds grace, milliseconds flush) {
  draining_ = true;
  {
    std::lock_guard lock(lease_ctx_mu_);
    if (lease_ctx_ != nullptr) lease_ctx_->TryCancel();
  }
  leaser_.request_stop();
  {
    std::lock_guard lock(mu_);
    cv_.notify_all();
  }
  if (leaser_.joinable()) leaser_.join();
  const auto running = [&] {
    size_t n = 0;
    for (const auto& [id, lease] : leases_) n += lease->finished ? 0 : 1;
    return n;
  };
  {
    std::unique_lock lock(mu_);
    Log(LogLevel::kInfo, "fleet: draining", {{"running", absl::StrCat(running())}, {"grace_ms", absl::StrCat(grace.count())}});
    cv_.wait_for(lock, grace, [&] { return running() == 0; });
  }
  std::vector<std::shared_ptr<Lease>> all;
  {
    std::lock_guard lock(mu_);
    for (const auto& [id, lease] : leases_) all.push_back(lease);
  }
  canceling_ = true;
  for (const auto& lease : all) {
    if (!lease->finished && lease->has_session) {
      lease->session->End(pb::Outcome::CANCELED, "drained", "the agent drained before the session finished");
    }
  }
  {
    std::lock_guard lock(mu_);
    cv_.notify_all();  // pumps waiting to reconnect a stream see their session ended
  }
  // Every pump journals its outcome when its session ends (a canceled jail ends within moments), whatever
  // its stream does; the flush budget bounds the wait.
  const Clock::time_point flush_until = Clock::now() + flush;
  {
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, flush_until, [&] { return running() == 0; });
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
    std::lock_guard lock(mu_);
    leases_.clear();
  }
  all.clear();
  // Deliver what the outbox holds.
  for (;;) {
    const size_t undelivered = undelivered_outcomes();
    if (undelivered == 0 || Clock::now() >= flush_until) {
      heartbeat_.request_stop();
      reporter_.request_stop();
      {
        std::lock_guard lock(mu_);
        cv_.notify_all();
      }
      if (heartbeat_.joinable()) heartbeat_.join();
      if (reporter_.joinable()) reporter_.join();
      drained_ = true;
      Log(LogLevel::kInfo, "fleet: drained", {{"undelivered_outcomes", absl::StrCat(undelivered)}});
      return undelivered;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
}

}  // namespace sbx::agent
