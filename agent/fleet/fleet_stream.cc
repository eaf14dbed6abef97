// FleetAgent's side of the control plane's Attach stream (one per lease, reconnected while its session runs):
// the hello and resume point, the session's events out, acknowledgements and commands in, and a deadline on
// every operation (StreamWatchdog).
#include <algorithm>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_method.h>
#include <grpcpp/support/byte_buffer.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/fleet_agent.h"
#include "agent/fleet/fleet_internal.h"
#include "agent/obs/log.h"
#include "agent/session/jail_text.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace sbx::agent {

namespace {

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
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  }

  // While alive, `what` must end within the timeout.
  class Op {
   public:
    Op(StreamWatchdog* w, const char* what) : w_(w) {
      absl::MutexLock lock(&w_->mu_);
      id_ = ++w_->next_id_;
      w_->armed_[id_] = {Clock::now() + w_->timeout_, what};
      w_->cv_.SignalAll();
    }
    ~Op() {
      absl::MutexLock lock(&w_->mu_);
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
    absl::MutexLock lock(&mu_);
    return fired_;
  }

 private:
  void Run(const std::stop_token& stop) {
    absl::MutexLock lock(&mu_);
    // NOTE: the destructor requests the stop and then signals with mu_ held, so a wait cannot miss it.
    while (!stop.stop_requested()) {
      if (armed_.empty()) {
        cv_.Wait(&mu_);
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
      cv_.WaitWithTimeout(&mu_, absl::FromChrono(deadline - Clock::now()));
    }
  }

  grpc::ClientContext* const ctx_;
  const milliseconds timeout_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<uint64_t, std::pair<Clock::time_point, const char*>> armed_ ABSL_GUARDED_BY(mu_);
  const char* fired_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::jthread thread_;  // last
};

}  // namespace

// One Attach call: its context, registered with the lease so that the pump can cancel it; the watchdog that
// gives every operation a deadline (fleet.stream_op_timeout_ms; declared before the stream, so it outlives
// the stream's last operation); and the stream, whose writes (events, and the reader's command answers) are
// serialized.
struct FleetAgent::Attach {
  Attach(Lease* lease, milliseconds op_timeout) : lease(lease), watchdog(&ctx, op_timeout) {}

  // Registers the context with the lease; false when the lease's stream was stopped already.
  bool Register() {
    absl::MutexLock lock(&lease->stream_mu);
    if (lease->stream_stop) return false;
    lease->stream_ctx = &ctx;  // the pump cancels it once the outcome is journaled
    return true;
  }
  void Unregister() {
    absl::MutexLock lock(&lease->stream_mu);
    lease->stream_ctx = nullptr;
  }
  bool Send(const pb::AgentMessage& m) {
    {
      absl::MutexLock lock(&write_mu);
      if (write_failed) return false;
      StreamWatchdog::Op op(&watchdog, "write");
      if (stream->Write(m)) return true;
      write_failed = true;
    }
    lease->NotifyProgress();
    return false;
  }
  void WritesDone() {
    absl::MutexLock lock(&write_mu);
    StreamWatchdog::Op op(&watchdog, "half-close");
    stream->WritesDone();
  }
  grpc::Status Finish() {
    StreamWatchdog::Op op(&watchdog, "finish");
    return stream->Finish();
  }

  Lease* const lease;
  grpc::ClientContext ctx;
  StreamWatchdog watchdog;
  std::unique_ptr<AttachStream> stream;
  absl::Mutex write_mu;
  std::atomic<bool> write_failed{false};
  std::atomic<bool> reader_done{false};
  std::atomic<int64_t> last_read_ns{0};
};

// The streamer: the lease's stream, reconnected with backoff while its session runs.
void FleetAgent::StreamLoop(Lease* lease) {
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
    absl::MutexLock lock(&mu_);
    WaitLocked(Clock::now() + delay, [&] { return lease->session->events().closed() || lease->stream_stopped(); });
  }
  lease->stream_ended = true;
  lease->NotifyProgress();
}

bool FleetAgent::StreamOnce(Lease* lease, std::optional<milliseconds>* retry_after) {
  Session& session = *lease->session;
  const FleetSettings fleet = settings();
  Attach call(lease, fleet.stream_op_timeout);
  if (absl::Status s = PrepareContext(*token_, &call.ctx, std::nullopt); !s.ok()) {
    Log(LogLevel::kError, "fleet: cannot attach", {{"lease_id", lease->lease_id}, {"error", s.ToString()}});
    return false;
  }
  if (!call.Register()) return false;
  call.stream = OpenAttach(stream_channel_.get(), &call.ctx);
  std::optional<uint64_t> resumed = Resume(&call, fleet, retry_after);
  if (!resumed) return false;
  uint64_t next = *resumed;
  if (next > session.events().last_seq()) next = session.events().last_seq();  // a confused control plane
  lease->Ack(next);
  session.events().MarkDelivered(lease->acked_seq);

  call.last_read_ns = Clock::now().time_since_epoch().count();
  std::jthread reader([&] { ReadControl(&call); });
  const AttachEnd end = SendEvents(&call, next, fleet.stream_op_timeout);
  const bool complete = end == AttachEnd::kComplete;
  if (complete) call.WritesDone();
  call.ctx.TryCancel();
  reader.join();
  const grpc::Status status = call.Finish();
  call.Unregister();
  if (end == AttachEnd::kStalled || call.watchdog.fired() != nullptr) {
    Count("attach_timeout");
    Log(LogLevel::kWarn, "fleet: attach stream timed out; reconnecting",
        {{"lease_id", lease->lease_id},
         {"operation", end == AttachEnd::kStalled ? "acknowledge events" : call.watchdog.fired()},
         {"timeout_ms", absl::StrCat(fleet.stream_op_timeout.count())}});
  } else if (!complete && !session.events().closed() && !lease->stream_stopped()) {
    *retry_after = RetryDelay(status, call.ctx);
    Count("attach_error");
    Log(LogLevel::kInfo, "fleet: attach stream ended; reconnecting",
        {{"lease_id", lease->lease_id}, {"error", GrpcError(status)}});
  }
  return complete;
}

std::optional<uint64_t> FleetAgent::Resume(Attach* call, const FleetSettings& fleet,
                                           std::optional<milliseconds>* retry_after) {
  Lease* lease = call->lease;
  {
    pb::AgentMessage hello;
    pb::AttachHello* h = hello.mutable_hello();
    h->set_agent_id(fleet.agent_id);
    h->set_lease_id(lease->lease_id);
    h->set_session_id(lease->session_id);
    h->set_last_seq(lease->session->events().last_seq());
    call->Send(hello);
  }
  ControlRead first;
  bool resumed = false;
  if (!call->write_failed) {
    grpc::ByteBuffer raw;
    StreamWatchdog::Op op(&call->watchdog, "read the resume point");
    if (call->stream->Read(&raw)) {
      first = ParseControl(&raw);
      resumed = !first.refused && first.message.has_resume();
    }
  }
  if (resumed) return first.message.resume().after_seq();
  call->ctx.TryCancel();
  const grpc::Status status = call->Finish();
  call->Unregister();
  *retry_after = RetryDelay(status, call->ctx);
  if (const char* what = call->watchdog.fired()) {
    Count("attach_timeout");
    Log(LogLevel::kWarn, "fleet: attach stream timed out; reconnecting",
        {{"lease_id", lease->lease_id}, {"operation", what},
         {"timeout_ms", absl::StrCat(fleet.stream_op_timeout.count())}});
  } else {
    Log(LogLevel::kDebug, "fleet: attach failed", {{"lease_id", lease->lease_id}, {"error", GrpcError(status)}});
  }
  return std::nullopt;
}

void FleetAgent::ReadControl(Attach* call) {
  Lease* lease = call->lease;
  Session& session = *lease->session;
  const auto send = [call](const pb::AgentMessage& m) { call->Send(m); };
  // Not under the watchdog: a control plane with nothing to say sends nothing. The writer (SendEvents)
  // expects acknowledgements while events are unacknowledged, and the stream's end cancels this read.
  grpc::ByteBuffer raw;
  while (call->stream->Read(&raw)) {
    call->last_read_ns = Clock::now().time_since_epoch().count();
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
      lease->Ack(acked);
      session.events().MarkDelivered(acked);
    } else if (msg.has_command()) {
      HandleCommand(lease, msg.command(), send);
    }
  }
  call->reader_done = true;
  lease->NotifyProgress();
}

FleetAgent::AttachEnd FleetAgent::SendEvents(Attach* call, uint64_t next, milliseconds op_timeout) {
  Lease* lease = call->lease;
  Session& session = *lease->session;
  std::optional<Clock::time_point> unacked_since;  // events were sent and not yet acknowledged
  std::optional<Clock::time_point> closed_at;
  while (!call->reader_done && !call->write_failed && !lease->stream_stopped()) {
    std::vector<EventLog::EventPtr> events;
    const EventLog::ReadResult r = session.events().Read(next, 64, Clock::now() + milliseconds(100),
                                                         [&] { return call->reader_done.load(); }, &events);
    for (const EventLog::EventPtr& e : events) {
      pb::AgentMessage m;
      *m.mutable_event() = *e;
      if (!call->Send(m)) break;
      next = e->seq();
    }
    // A control plane that takes events must acknowledge them: with some unacknowledged and nothing read for
    // the timeout, the stream is stalled.
    const Clock::time_point now = Clock::now();
    std::optional<Clock::time_point> stall_at;
    if (lease->acked_seq >= next) {
      unacked_since.reset();
    } else {
      if (!unacked_since) unacked_since = now;
      const Clock::time_point last_read{Clock::duration(call->last_read_ns.load())};
      stall_at = std::max(*unacked_since, last_read) + op_timeout;
      if (now > *stall_at) return AttachEnd::kStalled;
    }
    if (r == EventLog::ReadResult::kClosed && next >= session.events().last_seq()) {
      if (lease->acked_seq >= next) return AttachEnd::kComplete;
      if (!closed_at) closed_at = now;
      if (now - *closed_at > kFinalAckWait) break;  // the report carries the rest
      // Wait for the acknowledgement itself (or the stream's end), at most until a check above is due.
      const Clock::time_point until = std::min(*closed_at + kFinalAckWait, stall_at.value_or(Clock::time_point::max()));
      lease->WaitProgress(until + milliseconds(1), [&] {
        return lease->acked_seq >= next || call->reader_done || call->write_failed || lease->stream_stopped();
      });
    }
  }
  return AttachEnd::kBroken;
}

}  // namespace sbx::agent
