#include "agent/mcp/mcp_server.h"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "agent/mcp/mcp_tools.h"
#include "agent/mcp/status_code_name.h"

namespace sbx::agent::mcp {
namespace {

namespace pb = ::duvo::sandbox::v1;
using json = nlohmann::json;

constexpr size_t kMaxStreamInResult = 256 * 1024;  // per stream, in an exec result
constexpr size_t kMaxImageBytes = 16 << 20;

const char* CodeName(int code) { return StatusCodeName(code, "ERROR"); }

json TextResult(std::string text, bool is_error) {
  json r = {{"content", json::array({{{"type", "text"}, {"text", std::move(text)}}})}};
  if (is_error) r["isError"] = true;
  return r;
}

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

const char* TypeName(pb::FileInfo::Type t) {
  switch (t) {
    case pb::FileInfo::REGULAR: return "file";
    case pb::FileInfo::DIRECTORY: return "dir";
    case pb::FileInfo::SYMLINK: return "link";
    default: return "other";
  }
}

bool IsValidId(const json& id) { return id.is_string() || id.is_number_integer(); }

json Result(const json& id, json result) {
  return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}

// The request's progress token (params._meta.progressToken), or null when it has none or an invalid one.
json ProgressTokenOf(const json& params) {
  json progress_token;
  if (params.contains("_meta") && params["_meta"].is_object()) progress_token = params["_meta"].value("progressToken", json());
  if (!progress_token.is_null() && !IsValidId(progress_token)) progress_token = json();
  return progress_token;
}

// Cancels the call's context after `wait`, unless stopped first.
std::jthread ApprovalWatchdog(grpc::ClientContext* ctx, std::chrono::milliseconds wait) {
  return std::jthread([ctx, wait](std::stop_token stop) {
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait_for(lock, stop, wait, [] { return false; });
    if (!stop.stop_requested()) ctx->TryCancel();
  });
}

void StopWatchdog(std::jthread& watchdog) {
  if (!watchdog.joinable()) return;
  watchdog.request_stop();
  watchdog.join();
  watchdog = std::jthread();
}

json DataResultJson(const std::string& data) {
  if (ValidUtf8(data)) return TextResult(data, false);
  return TextResult(absl::StrCat("(binary, ", data.size(), " bytes, base64)\n", absl::Base64Escape(data)), false);
}

json ListingResultJson(const pb::FileListing& listing) {
  std::string text;
  for (const pb::FileInfo& f : listing.entries()) {
    absl::StrAppend(&text, TypeName(f.type()), "\t", f.size(), "\t", f.name(),
                    f.type() == pb::FileInfo::SYMLINK ? absl::StrCat(" -> ", f.symlink_target()) : "", "\n");
  }
  if (text.empty()) text = "(empty directory)\n";
  return TextResult(std::move(text), false);
}

json BrowserResultJson(const pb::BrowserResult& b, const std::string& image) {
  if (!b.image_path().empty()) {
    if (image.size() != b.image_bytes()) {
      return TextResult(absl::StrCat("the screenshot (", b.image_bytes(), " bytes) did not arrive whole"), true);
    }
    json content = json::array();
    content.push_back({{"type", "image"}, {"data", absl::Base64Escape(image)}, {"mimeType", "image/png"}});
    content.push_back({{"type", "text"},
                       {"text", absl::StrCat("screenshot ", b.image_width(), "x", b.image_height(), " PNG")}});
    return json{{"content", content}};
  }
  std::string text = !b.json().empty() ? b.json() : b.content();
  if (b.truncated()) absl::StrAppend(&text, "\n(truncated)");
  for (const std::string& d : b.downloads()) absl::StrAppend(&text, "\ndownloaded: ", d);
  if (text.empty()) text = "done";
  return TextResult(std::move(text), false);
}

// As Anthropic's tool_result for computer use: the text (cursor_position) and the image, each when given.
json ComputerResultJson(const pb::ComputerResult& c) {
  json content = json::array();
  if (!c.text().empty()) content.push_back({{"type", "text"}, {"text", c.text()}});
  if (!c.image_base64().empty()) {
    content.push_back({{"type", "image"},
                       {"data", c.image_base64()},
                       {"mimeType", c.media_type().empty() ? "image/png" : c.media_type()}});
  }
  if (content.empty()) content.push_back({{"type", "text"}, {"text", "done"}});
  return json{{"content", content}};
}

}  // namespace

bool IsSupportedVersion(std::string_view version) {
  for (const char* v : kProtocolVersions) {
    if (version == v) return true;
  }
  return false;
}

std::string Dump(const json& message) { return message.dump(-1, ' ', false, json::error_handler_t::replace); }

json ErrorResponse(const json& id, int code, std::string_view message) {
  return {{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", std::string(message)}}}};
}

// A running tools/call: what notifications/cancelled needs to stop it.
struct McpServer::InFlight {
  explicit InFlight(bool exec) : exec(exec) {}
  const bool exec;
  absl::Mutex mu;
  grpc::ClientContext* ctx ABSL_GUARDED_BY(mu) = nullptr;  // set once the stream exists
  grpc::ClientReaderWriterInterface<pb::CallRequest, pb::Event>* stream ABSL_GUARDED_BY(mu) = nullptr;
  bool canceled ABSL_GUARDED_BY(mu) = false;
  bool writes_done ABSL_GUARDED_BY(mu) = false;

  // Stops the call: an exec gets SIGKILL through the Call stream (the command dies, the call finishes);
  // anything else has its stream canceled.
  void StopLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (stream == nullptr) return;
    if (exec && !writes_done) {
      pb::CallRequest kill;
      kill.set_signal(9);
      if (stream->Write(kill)) return;
    }
    ctx->TryCancel();
  }
};

// What a tools/call's event stream brought, up to the event that ended it.
struct McpServer::CallEvents {
  std::string out, err;  // the first kMaxStreamInResult bytes of each stream
  uint64_t out_bytes = 0, err_bytes = 0, streamed = 0;
  std::string image;  // a screenshot's bytes, from its file events
  std::string image_path;
  std::optional<pb::HumanRequest> waiting;  // a human request not yet decided
  std::optional<pb::ToolCallFinished> finished;
  std::optional<pb::Outcome> outcome;  // the session ended instead
};

McpServer::McpServer(Options options) : options_(std::move(options)) {}

McpServer::~McpServer() { Shutdown(); }

std::string McpServer::protocol_version() const {
  absl::MutexLock lock(&mu_);
  return version_;
}

std::string McpServer::session_id() const {
  absl::MutexLock lock(&mu_);
  return session_id_;
}

std::unique_ptr<grpc::ClientContext> McpServer::NewContext() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (options_.decorate) options_.decorate(ctx.get());
  return ctx;
}

std::optional<json> McpServer::HandleText(std::string_view text, Emitter* emitter) {
  json message = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) return ErrorResponse(nullptr, kParseError, "parse error: the message is not valid JSON");
  if (!message.is_array()) return Handle(message, emitter);
  // Batches: JSON-RPC 2.0 has them, MCP 2025-03-26 kept them, 2025-06-18 removed them.
  const std::string version = protocol_version();
  if (version.empty() || version == kLatestProtocolVersion) {
    return ErrorResponse(nullptr, kInvalidRequest,
                         version.empty() ? "batches are not accepted before initialize"
                                         : "batches are not part of protocol version 2025-06-18");
  }
  if (message.empty()) return ErrorResponse(nullptr, kInvalidRequest, "an empty batch");
  json responses = json::array();
  for (const json& m : message) {
    if (m.is_object() && m.value("method", "") == "initialize") {
      responses.push_back(ErrorResponse(m.value("id", json()), kInvalidRequest, "initialize cannot be in a batch"));
      continue;
    }
    std::optional<json> r = Handle(m, emitter);
    if (r) responses.push_back(std::move(*r));
  }
  if (responses.empty()) return std::nullopt;
  return responses;
}

std::optional<json> McpServer::Handle(const json& message, Emitter* emitter) {
  if (!message.is_object() || message.value("jsonrpc", "") != "2.0") {
    return ErrorResponse(nullptr, kInvalidRequest, "invalid request: expected a JSON-RPC 2.0 object");
  }
  const bool has_id = message.contains("id");
  if (!message.contains("method")) {
    // A response to a request of ours: this server sends none, so there is nothing to match.
    if (has_id && (message.contains("result") || message.contains("error"))) return std::nullopt;
    return ErrorResponse(message.value("id", json()), kInvalidRequest, "invalid request: no method");
  }
  if (!message["method"].is_string()) {
    return ErrorResponse(has_id ? message["id"] : json(), kInvalidRequest, "invalid request: method is not a string");
  }
  const std::string method = message["method"].get<std::string>();
  const json params = message.value("params", json::object());
  if (!params.is_object()) {
    return has_id ? std::optional<json>(ErrorResponse(message["id"], kInvalidParams, "params must be an object"))
                  : std::nullopt;
  }
  if (!has_id) {
    // Notifications: never answered.
    if (method == "notifications/cancelled") Cancel(params);
    return std::nullopt;
  }
  const json id = message["id"];
  if (!IsValidId(id)) return ErrorResponse(nullptr, kInvalidRequest, "invalid request: id must be a string or integer");
  if (method == "initialize") return Initialize(id, params);
  if (method == "ping") return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", json::object()}};
  if (protocol_version().empty()) {
    return ErrorResponse(id, kInvalidRequest, absl::StrCat(method, ": the session is not initialized"));
  }
  if (method == "tools/list") {
    return json{{"jsonrpc", "2.0"}, {"id", id}, {"result", {{"tools", ToolList(options_.create.kind())}}}};
  }
  if (method == "tools/call") return CallTool(id, params, emitter);
  return ErrorResponse(id, kMethodNotFound, absl::StrCat("method not found: ", method));
}

json McpServer::Initialize(const json& id, const json& params) {
  const json requested = params.value("protocolVersion", json());
  if (!requested.is_string()) return ErrorResponse(id, kInvalidParams, "initialize: protocolVersion is required");
  // A version we speak is echoed; otherwise we offer our latest and the client decides (spec: lifecycle).
  const std::string version =
      IsSupportedVersion(requested.get<std::string>()) ? requested.get<std::string>() : kLatestProtocolVersion;
  {
    absl::MutexLock lock(&mu_);
    version_ = version;
  }
  const char* kind = options_.create.kind() == pb::BROWSER   ? "browser"
                     : options_.create.kind() == pb::DESKTOP ? "desktop"
                                                             : "file";
  return json{{"jsonrpc", "2.0"},
              {"id", id},
              {"result",
               {{"protocolVersion", version},
                {"capabilities", {{"tools", {{"listChanged", false}}}}},
                {"serverInfo", {{"name", "sandbox-agent"}, {"version", "1.0.0"}}},
                {"instructions",
                 absl::StrCat("Tools run inside one isolated Linux sandbox (a ", kind,
                              " session) that lives as long as this MCP session; files written by one call are "
                              "there for the next. The sandbox is created on the first tool call.")}}}};
}

absl::StatusOr<std::string> McpServer::EnsureSession() {
  absl::MutexLock create_lock(&session_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return absl::FailedPreconditionError("the MCP session is closing");
    if (!session_id_.empty()) return session_id_;
  }
  auto ctx = NewContext();
  pb::Session session;
  grpc::Status status = options_.stub->Create(ctx.get(), options_.create, &session);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("creating the sandbox session: ", CodeName(status.error_code()), ": ",
                                     status.error_message()));
  }
  absl::MutexLock lock(&mu_);
  session_id_ = session.id();
  return session_id_;
}

void McpServer::Cancel(const json& params) {
  const json request_id = params.value("requestId", json());
  if (!IsValidId(request_id)) return;
  std::shared_ptr<InFlight> f;
  {
    absl::MutexLock lock(&mu_);
    auto it = in_flight_.find(request_id.dump());
    if (it == in_flight_.end()) return;  // finished already, or never ours: ignored (spec)
    f = it->second;
  }
  absl::MutexLock lock(&f->mu);
  f->canceled = true;
  f->StopLocked();
}

std::optional<json> McpServer::CallTool(const json& id, const json& params, Emitter* emitter) {
  const json name_json = params.value("name", json());
  if (!name_json.is_string()) return ErrorResponse(id, kInvalidParams, "tools/call: params.name must be a string");
  const std::string name = name_json.get<std::string>();
  if (!HasTool(options_.create.kind(), name)) return ErrorResponse(id, kInvalidParams, absl::StrCat("Unknown tool: ", name));
  const json arguments = params.value("arguments", json::object());

  absl::StatusOr<pb::ToolCall> call = BuildToolCall(name, arguments);
  if (!call.ok()) return Result(id, TextResult(std::string(call.status().message()), true));
  const json progress_token = ProgressTokenOf(params);

  auto flight = std::make_shared<InFlight>(call->has_exec());
  const std::string key = id.dump();
  {
    absl::MutexLock lock(&mu_);
    if (in_flight_.count(key)) return ErrorResponse(id, kInvalidRequest, "a request with this id is still running");
    in_flight_[key] = flight;
  }
  struct Unregister {
    McpServer* self;
    std::string key;
    ~Unregister() {
      absl::MutexLock lock(&self->mu_);
      self->in_flight_.erase(key);
    }
  } unregister{this, key};

  absl::StatusOr<std::string> session = EnsureSession();
  if (!session.ok()) return Result(id, TextResult(std::string(session.status().message()), true));

  auto ctx = NewContext();
  std::unique_ptr<grpc::ClientReaderWriterInterface<pb::CallRequest, pb::Event>> stream =
      options_.stub->Call(ctx.get());
  StartCall(*flight, ctx.get(), stream.get(), *session, *call);
  const CallEvents events = ReadCallEvents(*stream, ctx.get(), progress_token, emitter);
  bool canceled = false;
  const grpc::Status status = EndCall(*flight, ctx.get(), stream.get(), events, &canceled);
  // The request was canceled: per the spec it gets no response.
  if (canceled) return std::nullopt;
  return Result(id, CallResult(*session, events, status));
}

void McpServer::StartCall(InFlight& flight, grpc::ClientContext* ctx,
                          CallStream* stream,
                          const std::string& session, const pb::ToolCall& call) {
  pb::CallRequest first;
  first.set_session_id(session);
  *first.mutable_call() = call;
  absl::MutexLock lock(&flight.mu);
  const bool written = stream->Write(first);
  flight.ctx = ctx;
  flight.stream = stream;
  if (!written) {
    flight.writes_done = true;
  } else if (flight.canceled) {
    flight.StopLocked();  // notifications/cancelled came before the stream existed
  }
}

McpServer::CallEvents McpServer::ReadCallEvents(CallStream& stream,
                                                grpc::ClientContext* ctx, const json& progress_token,
                                                Emitter* emitter) const {
  CallEvents got;
  std::jthread watchdog;  // set while the call waits for a human decision
  auto progress = [&](const std::string& message, uint64_t seq) {
    if (progress_token.is_null() || emitter == nullptr) return;
    emitter->Send({{"jsonrpc", "2.0"},
                   {"method", "notifications/progress"},
                   {"params", {{"progressToken", progress_token}, {"progress", got.streamed}, {"message", message}}}},
                  seq);
  };
  pb::Event event;
  while (stream.Read(&event)) {
    if (event.has_output()) {
      const pb::Output& o = event.output();
      std::string& buf = o.stream() == pb::STDERR ? got.err : got.out;
      (o.stream() == pb::STDERR ? got.err_bytes : got.out_bytes) += o.data().size() + o.dropped_bytes();
      if (buf.size() < kMaxStreamInResult) buf.append(o.data().substr(0, kMaxStreamInResult - buf.size()));
      got.streamed += o.data().size() + o.dropped_bytes();
      if (!o.data().empty()) {
        progress(o.stream() == pb::STDERR ? absl::StrCat("[stderr] ", o.data()) : o.data(), event.seq());
      }
    } else if (event.has_file()) {
      const pb::FileChunk& f = event.file();
      if (got.image_path.empty() || got.image_path == f.path()) {
        got.image_path = f.path();
        if (got.image.size() + f.data().size() <= kMaxImageBytes) got.image.append(f.data());
      }
    } else if (event.has_human_request()) {
      got.waiting = event.human_request();
      progress(absl::StrCat("awaiting approval: ", got.waiting->question()), event.seq());
      // The call waits for a person. Past approval_wait this request gives up its stream (the call itself
      // goes on waiting in the session; its events stay in the session's log).
      if (!watchdog.joinable()) watchdog = ApprovalWatchdog(ctx, options_.approval_wait);
    } else if (event.has_human_decision()) {
      got.waiting.reset();
      StopWatchdog(watchdog);
    } else if (event.has_tool_call_finished() || event.has_outcome()) {
      if (event.has_tool_call_finished()) {
        got.finished = event.tool_call_finished();
      } else {
        got.outcome = event.outcome();
      }
      if (emitter != nullptr) emitter->result_seq = event.seq();
      break;
    }
  }
  StopWatchdog(watchdog);
  return got;
}

grpc::Status McpServer::EndCall(InFlight& flight, grpc::ClientContext* ctx,
                                CallStream* stream,
                                const CallEvents& events, bool* canceled) {
  {
    absl::MutexLock lock(&flight.mu);
    *canceled = flight.canceled;
    if (!events.finished && !events.outcome) ctx->TryCancel();
    if (!flight.writes_done) {
      flight.writes_done = true;
      stream->WritesDone();
    }
  }
  grpc::Status status = stream->Finish();
  {
    // The stream and its context end with the call; a late notifications/cancelled must not reach them.
    absl::MutexLock lock(&flight.mu);
    flight.stream = nullptr;
    flight.ctx = nullptr;
  }
  return status;
}

json McpServer::CallResult(const std::string& session, const CallEvents& events, const grpc::Status& status) {
  if (!events.finished && events.waiting) {
    return TextResult(absl::StrCat("awaiting approval: ", events.waiting->question(), " (request ",
                                   events.waiting->request_id(), "; approve with sandboxctl approve ", session, " ",
                                   events.waiting->request_id(), ")"),
                      true);
  }
  if (events.outcome) {
    {
      absl::MutexLock lock(&mu_);
      if (session_id_ == session) session_id_.clear();  // the next call starts a new session
    }
    return TextResult(absl::StrCat("the sandbox session ended (", events.outcome->reason(), ") ",
                                   events.outcome->message(), "; the next call starts a new one"),
                      true);
  }
  if (!events.finished) {
    if (status.error_code() == grpc::NOT_FOUND) {
      absl::MutexLock lock(&mu_);
      if (session_id_ == session) session_id_.clear();
    }
    return TextResult(absl::StrCat("the call failed: ", CodeName(status.error_code()), ": ", status.error_message()),
                      true);
  }
  if (events.finished->has_error()) {
    return TextResult(
        absl::StrCat(CodeName(events.finished->error().code()), ": ", events.finished->error().message()), true);
  }
  return ToolResultJson(events.finished->result(), events, protocol_version() == kLatestProtocolVersion);
}

json McpServer::ToolResultJson(const pb::ToolResult& r, const CallEvents& events, bool structured) {
  switch (r.result_case()) {
    case pb::ToolResult::kExec: return ExecResultJson(r.exec(), events, structured);
    case pb::ToolResult::kData: return DataResultJson(r.data());
    case pb::ToolResult::kListing: return ListingResultJson(r.listing());
    case pb::ToolResult::kDone: return TextResult("done", false);
    case pb::ToolResult::kBrowser: return BrowserResultJson(r.browser(), events.image);
    case pb::ToolResult::kComputer: return ComputerResultJson(r.computer());
    default: return TextResult("done", false);
  }
}

json McpServer::ExecResultJson(const pb::ExecResult& e, const CallEvents& events, bool structured) {
  const std::string& out = events.out;
  const std::string& err = events.err;
  std::string head;
  if (e.timed_out()) absl::StrAppend(&head, "timed out; ");
  if (e.has_exit_code()) absl::StrAppend(&head, "exit code ", e.exit_code());
  if (e.has_signal()) absl::StrAppend(&head, "killed by signal ", e.signal());
  std::string text = head;
  absl::StrAppend(&text, "\n--- stdout", events.out_bytes > out.size() ? absl::StrCat(" (first ", out.size(), " of ", events.out_bytes, " bytes)") : "",
                  " ---\n", out, "\n--- stderr", events.err_bytes > err.size() ? absl::StrCat(" (first ", err.size(), " of ", events.err_bytes, " bytes)") : "",
                  " ---\n", err);
  json result = TextResult(std::move(text), false);
  if (structured) {
    json s = {{"stdout", out}, {"stderr", err}, {"timed_out", e.timed_out()},
              {"stdout_bytes", events.out_bytes}, {"stderr_bytes", events.err_bytes}};
    s["exit_code"] = e.has_exit_code() ? json(e.exit_code()) : json();
    s["signal"] = e.has_signal() ? json(e.signal()) : json();
    result["structuredContent"] = s;
  }
  return result;
}

void McpServer::Shutdown() {
  std::vector<std::shared_ptr<InFlight>> running;
  std::string session;
  {
    absl::MutexLock lock(&mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (auto& [k, f] : in_flight_) running.push_back(f);
  }
  for (auto& f : running) {
    absl::MutexLock lock(&f->mu);
    f->canceled = true;
    f->StopLocked();
  }
  {
    // A Create under way finishes first, so its session is deleted too.
    absl::MutexLock create_lock(&session_mu_);
    absl::MutexLock lock(&mu_);
    session = std::move(session_id_);
    session_id_.clear();
  }
  if (session.empty()) return;
  auto ctx = NewContext();
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  pb::DeleteRequest req;
  req.set_session_id(session);
  pb::DeleteResponse resp;
  (void)options_.stub->Delete(ctx.get(), req, &resp);
}

}  // namespace sbx::agent::mcp
