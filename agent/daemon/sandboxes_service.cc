#include "agent/daemon/sandboxes_service.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "absl/functional/function_ref.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/daemon/grpc_status.h"
#include "agent/daemon/stream_relays.h"
#include "agent/obs/log.h"
#include "base/sha256.h"
#include "base/status.h"
#include "base/token_file.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

constexpr auto kForever = std::chrono::hours(24 * 365);

std::string NewRequestId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("r-%016x", rng());
}

std::string NewCallId() {
  static std::atomic<uint64_t> next{1};
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("c-%x-%08x", next++, static_cast<uint32_t>(rng()));
}

const char* ToolName(const pb::ToolCall& call) {
  switch (call.tool_case()) {
    case pb::ToolCall::kExec: return "exec";
    case pb::ToolCall::kWriteFile: return "write_file";
    case pb::ToolCall::kReadFile: return "read_file";
    case pb::ToolCall::kListFiles: return "list_files";
    case pb::ToolCall::kStat: return "stat";
    case pb::ToolCall::kRemove: return "remove";
    case pb::ToolCall::kMkdir: return "mkdir";
    case pb::ToolCall::kDesktop: return "desktop";
    case pb::ToolCall::kBrowser: return "browser";
    case pb::ToolCall::kComputer: return "computer";
    case pb::ToolCall::TOOL_NOT_SET: break;
  }
  return "none";
}

// A Call's control-message reader says here when the client's side of the stream has ended.
struct CallControl {
  absl::Mutex mu;
  absl::CondVar cv;
  bool ended ABSL_GUARDED_BY(mu) = false;
};

// Finds the session, checks `precondition` (first, so its error wins), and refuses one that has ended.
absl::StatusOr<std::shared_ptr<Session>> FindLiveSession(
    SessionManager& sessions, const std::string& session_id,
    absl::FunctionRef<absl::Status(Session&)> precondition = [](Session&) { return absl::OkStatus(); }) {
  absl::StatusOr<std::shared_ptr<Session>> found = sessions.Find(session_id);
  if (!found.ok()) return found.status();
  std::shared_ptr<Session> session = *found;
  absl::Status s = precondition(*session);
  if (!s.ok()) return s;
  if (session->ended() || session->init() == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("session ", session->id(), " has ended"));
  }
  return session;
}

// Call: streams the events of `call_id` (and the session's outcome) after `after` until the call finishes,
// the session ends or the client goes. Returns the call's result code for the metrics.
std::string StreamCallEvents(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::Event, pb::CallRequest>* stream,
                             Session& session, const std::string& call_id, uint64_t after, Metrics* metrics) {
  bool finished = false;
  std::string result_code = "OK";
  while (!finished) {
    std::vector<EventLog::EventPtr> events;
    EventLog::ReadResult r = session.events().Read(after, 256, Clock::now() + kForever,
                                                   [ctx] { return ctx->IsCancelled(); }, &events);
    if (r == EventLog::ReadResult::kStopped) break;
    for (const EventLog::EventPtr& ptr : events) {
      const pb::Event& e = *ptr;
      after = e.seq();
      const bool mine = CallIdOf(e) == call_id;
      // A run of events the log gave up (its budget) may hold this call's: the stream says so.
      const bool dropped_run = e.has_dropped() && e.dropped().first_seq() != 0;
      if (!mine && !e.has_outcome() && !dropped_run) continue;
      if (e.has_output() && metrics) metrics->BytesStreamed(e.output().data().size());
      if (!stream->Write(e)) {
        finished = true;
        break;
      }
      // This call's own stream carried it: its file payload is released, its output may go first under the
      // log's byte budget. (Not a watermark: other calls' events before it were not carried here.)
      session.events().MarkSent(e.seq());
      if (e.has_tool_call_finished() && mine) {
        finished = true;
        if (e.tool_call_finished().has_error()) {
          result_code = absl::StatusCodeToString(static_cast<absl::StatusCode>(e.tool_call_finished().error().code()));
        }
        break;
      }
      if (e.has_outcome()) {
        finished = true;
        result_code = "SESSION_ENDED";
        break;
      }
    }
    if (r == EventLog::ReadResult::kClosed) break;
  }
  return result_code;
}

}  // namespace

SandboxesService::SandboxesService(Options options) : options_(std::move(options)) {}

absl::Status SandboxesService::Begin(grpc::ServerContext* ctx, std::string* request_id) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("x-request-id");
  if (it != md.end() && it->second.size() > 0 && it->second.size() <= 128) {
    *request_id = std::string(it->second.data(), it->second.size());
  } else {
    *request_id = NewRequestId();
  }
  ctx->AddInitialMetadata("x-request-id", *request_id);
  const std::string peer = ctx->peer();
  // "fd:N": a TCP connection the daemon's listener accepted and handed to gRPC (agent/mcp/mcp_listener.h).
  const bool tcp = peer.rfind("ipv4:", 0) == 0 || peer.rfind("ipv6:", 0) == 0 || peer.rfind("fd:", 0) == 0;
  if (tcp) {
    if (options_.bearer_token_file.empty()) {
      return absl::UnauthenticatedError("TCP clients need a bearer token, and this agent has none configured");
    }
    const std::string token = ReadTokenFile(options_.bearer_token_file);
    auto auth = md.find("authorization");
    const std::string expected = "Bearer " + token;
    if (token.empty() || auth == md.end() || auth->second.size() != expected.size() ||
        CRYPTO_memcmp(auth->second.data(), expected.data(), expected.size()) != 0) {
      return absl::UnauthenticatedError("authorization: missing or wrong bearer token");
    }
  }
  return absl::OkStatus();
}

grpc::Status SandboxesService::Finish(std::string_view method, const absl::Status& status,
                                      const std::string& request_id) {
  if (!status.ok() && status.code() != absl::StatusCode::kNotFound &&
      status.code() != absl::StatusCode::kInvalidArgument) {
    const std::string code = absl::StatusCodeToString(status.code());
    const std::string_view error(status.message().data(), status.message().size());
    Log(LogLevel::kWarn, "request failed",
        {{"method", method}, {"request_id", request_id}, {"code", code}, {"error", error}});
  }
  return ToGrpcStatus(status, request_id);
}

grpc::Status SandboxesService::Create(grpc::ServerContext* ctx, const pb::CreateRequest* request,
                                      pb::Session* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) {
    absl::StatusOr<pb::Session> session = options_.sessions->Create(*request);
    if (session.ok()) {
      *response = *session;
      Log(LogLevel::kInfo, "session created", {{"session_id", session->id()}, {"request_id", rid}});
    }
    s = session.status();
  }
  return Finish("Create", s, rid);
}

grpc::Status SandboxesService::Get(grpc::ServerContext* ctx, const pb::GetRequest* request, pb::Session* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) {
    absl::StatusOr<std::shared_ptr<Session>> session = options_.sessions->Find(request->session_id());
    if (session.ok()) *response = (*session)->Describe();
    s = session.status();
  }
  return Finish("Get", s, rid);
}

grpc::Status SandboxesService::List(grpc::ServerContext* ctx, const pb::ListRequest* request,
                                    pb::ListResponse* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) {
    std::map<std::string, std::string> selector(request->label_selector().begin(), request->label_selector().end());
    for (pb::Session& session : options_.sessions->List(selector)) *response->add_sessions() = std::move(session);
  }
  return Finish("List", s, rid);
}

grpc::Status SandboxesService::Call(grpc::ServerContext* ctx,
                                    grpc::ServerReaderWriter<pb::Event, pb::CallRequest>* stream) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Call", s, rid);
  pb::CallRequest first;
  if (!stream->Read(&first)) {
    return Finish("Call", absl::InvalidArgumentError("call: the stream ended before the first message"), rid);
  }
  absl::StatusOr<std::shared_ptr<Session>> found = options_.sessions->Find(first.session_id());
  if (!found.ok()) return Finish("Call", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  const std::string tool = ToolName(first.call());

  // With an idempotency key, a repeated call (same key, same body) replays the first call's events.
  absl::StatusOr<std::pair<std::string, uint64_t>> started =
      session->StartCallOnce(first.idempotency_key(), NewCallId(), first.call());
  if (!started.ok()) {
    if (options_.metrics) options_.metrics->ToolCall(tool, absl::StatusCodeToString(started.status().code()));
    return Finish("Call", started.status(), rid);
  }
  const std::string call_id = started->first;
  const uint64_t started_seq = started->second;
  Log(LogLevel::kInfo, "tool call", {{"session_id", session->id()}, {"request_id", rid}, {"call_id", call_id},
                                     {"tool", tool}});

  // Control messages (stdin, window size, signals) arrive on another thread while this one streams.
  std::atomic<bool> done{false};
  CallControl control_state;
  std::jthread control([&] {
    pb::CallRequest msg;
    while (!done && stream->Read(&msg)) {
      (void)session->ControlExec(call_id, Session::ExecControl::Of(msg));
    }
    absl::MutexLock lock(&control_state.mu);
    control_state.ended = true;
    control_state.cv.SignalAll();
  });

  // The caller is attached while it streams: its call's output waits for it instead of being dropped
  // (EventLog::AttachReader).
  session->events().AttachReader(call_id);
  const std::string result_code = StreamCallEvents(ctx, stream, *session, call_id, started_seq - 1, options_.metrics);
  session->events().DetachReader(call_id);
  if (options_.metrics) options_.metrics->ToolCall(tool, result_code);
  done = true;
  // The client half-closes once it has seen the end; one that does not is cut off after a grace period so
  // this handler (and the reader thread blocked in Read) can finish.
  {
    absl::MutexLock lock(&control_state.mu);
    // NOTE: a cv, not a sleep loop: a fast call (a desktop action, a file tool) ends before the client's
    // half-close has been read, and polling every 10 ms added those 10 ms to every such call.
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (!control_state.ended && !control_state.cv.WaitWithDeadline(&control_state.mu, deadline)) {
    }
    if (!control_state.ended) ctx->TryCancel();
  }
  control.join();
  return Finish("Call", absl::OkStatus(), rid);
}

grpc::Status SandboxesService::Upload(grpc::ServerContext* ctx, grpc::ServerReader<pb::UploadChunk>* reader,
                                      pb::UploadResponse* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Upload", s, rid);
  pb::UploadChunk chunk;
  if (!reader->Read(&chunk)) {
    return Finish("Upload", absl::InvalidArgumentError("upload: the stream ended before the first chunk"), rid);
  }
  absl::StatusOr<std::shared_ptr<Session>> found = options_.sessions->Find(chunk.session_id());
  if (!found.ok()) return Finish("Upload", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  // The upload is a tool call (Session::BeginUpload): its events, its idempotency key; the transfer removes
  // its file unless it finishes with a matching sha256 (agent/session/file_transfer.h).
  absl::StatusOr<std::unique_ptr<Session::Upload>> upload =
      session->BeginUpload(chunk.idempotency_key(), NewCallId(), chunk.path(), chunk.mode());
  if (!upload.ok()) return Finish("Upload", upload.status(), rid);
  Session::Upload& up = **upload;
  if (!up.replayed()) {
    // A gated upload waits for its approval before a byte is written (the client's chunks wait in flow control).
    s = session->AwaitTransferApproval("upload", chunk.path(), "", [ctx] { return ctx->IsCancelled(); }, up.call_id());
    if (!s.ok()) {
      up.Fail(s);
      return Finish("Upload", s, rid);
    }
  }
  for (;;) {
    s = up.Write(up.size(), chunk.data());  // a replayed upload writes nothing
    if (!s.ok()) return Finish("Upload", s, rid);
    if (chunk.last()) break;
    if (!reader->Read(&chunk)) {
      s = absl::InvalidArgumentError("upload: the stream ended without a last chunk; the partial file was removed");
      up.Fail(s);
      return Finish("Upload", s, rid);
    }
  }
  absl::StatusOr<FileTransfer::Result> stored = up.Finish(chunk.sha256());
  if (!stored.ok()) return Finish("Upload", stored.status(), rid);
  response->set_size(stored->size);
  response->set_sha256(stored->sha256);
  response->set_call_id(up.call_id());
  if (options_.metrics) options_.metrics->ToolCall("upload", "OK");
  return Finish("Upload", absl::OkStatus(), rid);
}

grpc::Status SandboxesService::Download(grpc::ServerContext* ctx, const pb::DownloadRequest* request,
                                        grpc::ServerWriter<pb::DownloadChunk>* writer) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Download", s, rid);
  absl::StatusOr<std::shared_ptr<Session>> found = FindLiveSession(*options_.sessions, request->session_id());
  if (!found.ok()) return Finish("Download", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  absl::StatusOr<sandbox::FileInfo> info = session->init()->Stat(request->path());
  if (!info.ok()) return Finish("Download", info.status(), rid);
  if (info->type != sandbox::FileInfo::Type::kFile) {
    return Finish("Download", absl::InvalidArgumentError(absl::StrCat("path: ", request->path(), " is not a regular file")), rid);
  }
  // A gated download waits for its approval before the first chunk.
  s = session->AwaitTransferApproval("download", request->path(), absl::StrCat(info->size, " bytes"),
                                     [ctx] { return ctx->IsCancelled(); });
  if (!s.ok()) return Finish("Download", s, rid);
  Sha256 hash;
  uint64_t offset = 0;
  for (;;) {
    if (ctx->IsCancelled()) return Finish("Download", absl::CancelledError("the client went away"), rid);
    session->Touch();
    absl::StatusOr<std::string> data =
        session->init()->ReadFile(request->path(), offset, sandbox::InitClient::kMaxChunkBytes);
    if (!data.ok()) return Finish("Download", data.status(), rid);
    hash.Update(*data);
    pb::DownloadChunk chunk;
    chunk.set_offset(offset);
    offset += data->size();
    const bool last = data->size() < sandbox::InitClient::kMaxChunkBytes;
    chunk.set_data(std::move(*data));
    if (last) {
      chunk.set_last(true);
      chunk.set_sha256(Sha256::Hex(hash.Final()));
      chunk.set_size(offset);
    }
    if (options_.metrics) options_.metrics->BytesStreamed(chunk.data().size());
    if (!writer->Write(chunk)) return Finish("Download", absl::CancelledError("the client went away"), rid);
    if (last) break;
  }
  if (options_.metrics) options_.metrics->ToolCall("download", "OK");
  return Finish("Download", absl::OkStatus(), rid);
}

grpc::Status SandboxesService::Events(grpc::ServerContext* ctx, const pb::EventsRequest* request,
                                      grpc::ServerWriter<pb::Event>* writer) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Events", s, rid);
  absl::StatusOr<std::shared_ptr<Session>> found = options_.sessions->Find(request->session_id());
  if (!found.ok()) return Finish("Events", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  uint64_t after = request->after_seq();
  if (request->ack_seq() > session->events().last_seq()) {
    return Finish("Events",
                  absl::OutOfRangeError(absl::StrCat("ack_seq: ", request->ack_seq(), " is past the newest event (",
                                                     session->events().last_seq(), ")")),
                  rid);
  }
  // The client holds everything up to ack_seq: their payloads may go (agent/event_log.h).
  if (request->ack_seq() > 0) session->events().MarkDelivered(request->ack_seq());
  if (after > session->events().last_seq()) {
    return Finish("Events",
                  absl::OutOfRangeError(absl::StrCat("after_seq: ", after, " is past the newest event (",
                                                     session->events().last_seq(), ")")),
                  rid);
  }
  for (;;) {
    std::vector<EventLog::EventPtr> events;
    const auto deadline = request->follow() ? Clock::now() + kForever : Clock::now();
    EventLog::ReadResult r =
        session->events().Read(after, 256, deadline, [ctx] { return ctx->IsCancelled(); }, &events);
    for (const EventLog::EventPtr& e : events) {
      if (!writer->Write(*e)) return Finish("Events", absl::CancelledError("the client went away"), rid);
      after = e->seq();
    }
    if (r != EventLog::ReadResult::kEvents) break;
  }
  return Finish("Events", absl::OkStatus(), rid);
}

grpc::Status SandboxesService::Cancel(grpc::ServerContext* ctx, const pb::CancelRequest* request,
                                      pb::Session* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) {
    absl::StatusOr<pb::Session> session = options_.sessions->Cancel(request->session_id());
    if (session.ok()) *response = *session;
    s = session.status();
  }
  return Finish("Cancel", s, rid);
}

grpc::Status SandboxesService::Delete(grpc::ServerContext* ctx, const pb::DeleteRequest* request,
                                      pb::DeleteResponse* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) s = options_.sessions->Delete(request->session_id());
  return Finish("Delete", s, rid);
}

grpc::Status SandboxesService::RespondHumanRequest(grpc::ServerContext* ctx,
                                                   const pb::RespondHumanRequestRequest* request,
                                                   pb::HumanDecision* response) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (s.ok()) {
    absl::StatusOr<std::shared_ptr<Session>> session = options_.sessions->Find(request->session_id());
    s = session.status();
    if (session.ok()) {
      absl::StatusOr<pb::HumanDecision> decided = (*session)->approvals().Respond(
          request->request_id(), request->decision(), request->scope(), request->note(), request->text(),
          request->idempotency_key(), "local");
      s = decided.status();
      if (decided.ok()) {
        *response = *decided;
        Log(LogLevel::kInfo, "human request decided",
            {{"session_id", request->session_id()}, {"request_id", rid}, {"human_request", request->request_id()},
             {"decision", pb::HumanDecision::Decision_Name(decided->decision())}});
      }
    }
  }
  return Finish("RespondHumanRequest", s, rid);
}

grpc::Status SandboxesService::Vnc(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::VncData, pb::VncData>* stream) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Vnc", s, rid);
  pb::VncData first;
  if (!stream->Read(&first)) return Finish("Vnc", absl::InvalidArgumentError("vnc: no first message"), rid);
  absl::StatusOr<std::shared_ptr<Session>> found =
      FindLiveSession(*options_.sessions, first.session_id(), [](Session& session) {
        if (session.vnc_allowed()) return absl::OkStatus();
        return absl::FailedPreconditionError(
            absl::StrCat("vnc: session ", session.id(), " was not created as a desktop with desktop.vnc"));
      });
  if (!found.ok()) return Finish("Vnc", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  auto relay = std::make_shared<VncRelay>();
  absl::StatusOr<uint64_t> call = StartVnc(*session, relay);
  if (!call.ok()) return Finish("Vnc", Annotate(call.status(), "vnc: starting x11vnc"), rid);
  Log(LogLevel::kInfo, "vnc viewer attached", {{"session_id", session->id()}, {"request_id", rid}});
  sandbox::InitClient* init = session->init();
  // The viewer's bytes go to x11vnc's stdin from this thread; its answers are written by the handler below.
  std::jthread reader([&, init, id = *call] {
    if (!first.data().empty()) (void)init->WriteStdin(id, first.data(), false);
    pb::VncData in;
    while (stream->Read(&in)) {
      session->Touch();
      if (!init->WriteStdin(id, in.data(), false).ok()) break;
    }
    (void)init->WriteStdin(id, "", true);
    (void)init->Signal(id, SIGTERM);
    absl::MutexLock lock(&relay->mu);
    relay->ended = true;
    relay->cv.SignalAll();
  });
  PumpVnc(ctx, stream, *relay);
  (void)init->Signal(*call, SIGKILL);
  ctx->TryCancel();  // ends the reader's Read
  reader.join();
  Log(LogLevel::kInfo, "vnc viewer detached", {{"session_id", session->id()}, {"request_id", rid}});
  bool overflow;
  {
    absl::MutexLock lock(&relay->mu);
    overflow = relay->overflow;
  }
  if (overflow) {
    return Finish("Vnc", absl::ResourceExhaustedError(absl::StrCat("vnc: the viewer fell ", kMaxVncBacklogBytes >> 20,
                                                                   " MiB behind the display")), rid);
  }
  return Finish("Vnc", absl::OkStatus(), rid);
}

grpc::Status SandboxesService::Cdp(grpc::ServerContext* ctx,
                                   grpc::ServerReaderWriter<pb::CdpFrame, pb::CdpFrame>* stream) {
  std::string rid;
  absl::Status s = Begin(ctx, &rid);
  if (!s.ok()) return Finish("Cdp", s, rid);
  pb::CdpFrame first;
  if (!stream->Read(&first)) return Finish("Cdp", absl::InvalidArgumentError("cdp: no first message"), rid);
  absl::StatusOr<std::shared_ptr<Session>> found =
      FindLiveSession(*options_.sessions, first.session_id(), [](Session& session) {
        if (session.kind() == pb::BROWSER) return absl::OkStatus();
        return absl::FailedPreconditionError(
            absl::StrCat("cdp: session ", session.id(), " is not a browser session"));
      });
  if (!found.ok()) return Finish("Cdp", found.status(), rid);
  std::shared_ptr<Session> session = *found;
  sandbox::InitClient* init = session->init();
  std::shared_ptr<CdpRelay> relay;
  absl::StatusOr<uint64_t> call = OpenCdp(ctx, init, &relay);
  if (!call.ok()) return Finish("Cdp", call.status(), rid);
  // An empty first message: the stream is open (the endpoint answers its WebSocket upgrade only then, so a
  // refused token or session is an HTTP error there, not a dead WebSocket).
  stream->Write(pb::CdpFrame());
  Log(LogLevel::kInfo, "cdp client attached", {{"session_id", session->id()}, {"request_id", rid}});
  std::jthread reader([&, init, id = *call] { RelayCdpClient(stream, first, *session, init, id, *relay); });
  const bool write_failed = PumpCdp(ctx, stream, *relay);
  ctx->TryCancel();  // ends the reader's Read
  reader.join();
  Log(LogLevel::kInfo, "cdp client detached", {{"session_id", session->id()}, {"request_id", rid}});
  absl::Status end;
  {
    absl::MutexLock lock(&relay->mu);
    end = relay->end;
  }
  return Finish("Cdp", write_failed ? absl::OkStatus() : end, rid);
}

}  // namespace sbx::agent
