#include "agent/mcp/mcp_http.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <random>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "net/http1_parser.h"
#include "net/http_response.h"
#include "net/loopback_guard.h"
#include "base/status.h"
#include "base/token_file.h"

namespace sbx::agent::mcp {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The head of an SSE response: the stream's end is the connection's.
constexpr std::string_view kSseHead =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

bool IsTchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}
bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!IsTchar(c)) return false;
  }
  return true;
}
bool HasCtl(std::string_view s) {
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) return true;
  }
  return false;
}
std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string NewSessionId() {
  ABSL_CONST_INIT static absl::Mutex mu(absl::kConstInit);
  static std::random_device rd;
  absl::MutexLock lock(&mu);
  std::string id;
  for (int i = 0; i < 4; ++i) absl::StrAppend(&id, absl::Hex(rd(), absl::kZeroPad8));
  return id;
}

// A whole response with a sized body.
bool Respond(int fd, int status, std::string_view content_type, std::string_view body, bool keep_alive,
             const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  std::string head = absl::StrCat("HTTP/1.1 ", status, " ", http1::ReasonPhrase(status), "\r\n");
  if (!content_type.empty()) absl::StrAppend(&head, "Content-Type: ", ToAbsl(content_type), "\r\n");
  absl::StrAppend(&head, "Content-Length: ", body.size(), "\r\n");
  for (const auto& [k, v] : extra) absl::StrAppend(&head, k, ": ", v, "\r\n");
  absl::StrAppend(&head, keep_alive ? "" : "Connection: close\r\n", "\r\n");
  return http1::SendAll(fd, head) && http1::SendAll(fd, body) && keep_alive;
}

// An HTTP-level error, with a JSON-RPC error body (the SDK shows its message).
bool RespondError(int fd, int status, std::string_view message, bool keep_alive,
                  const std::vector<std::pair<std::string, std::string>>& extra = {}) {
  const int code = status == 404 ? -32001 : status >= 500 ? kInternalError : kInvalidRequest;
  return Respond(fd, status, "application/json", Dump(ErrorResponse(nullptr, code, message)), keep_alive, extra);
}

std::string SseFrame(const std::string& id, std::string_view data) {
  // `data` is one JSON line (Dump escapes newlines), so one data: field carries it.
  return absl::StrCat("id: ", id, "\nevent: message\ndata: ", ToAbsl(data), "\n\n");
}

bool AcceptsType(const HttpRequest& req, std::string_view type) {
  const std::string* accept = req.Header("accept");
  if (accept == nullptr) return true;
  return accept->find(type) != std::string::npos || accept->find("*/*") != std::string::npos;
}

}  // namespace

const std::string* HttpRequest::Header(std::string_view name) const {
  for (const auto& [k, v] : headers) {
    if (k == name) return &v;
  }
  return nullptr;
}

absl::StatusOr<HttpRequest> ParseRequestHead(std::string_view head) {
  if (head.size() < 4 || head.substr(head.size() - 4) != "\r\n\r\n") {
    return absl::InvalidArgumentError("the request head does not end with an empty line");
  }
  std::vector<std::string_view> lines;
  for (size_t start = 0; start < head.size() - 2;) {
    const size_t end = head.find("\r\n", start);
    lines.push_back(head.substr(start, end - start));
    start = end + 2;
  }
  if (lines.empty() || lines[0].empty()) return absl::InvalidArgumentError("no request line");
  const std::string_view line = lines[0];
  if (HasCtl(line)) return absl::InvalidArgumentError("control characters in the request line");
  const size_t sp1 = line.find(' ');
  const size_t sp2 = line.rfind(' ');
  if (sp1 == std::string_view::npos || sp1 == sp2) return absl::InvalidArgumentError("malformed request line");
  HttpRequest req;
  req.method = std::string(line.substr(0, sp1));
  const std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(req.method)) return absl::InvalidArgumentError("malformed method");
  if (target.empty() || target[0] != '/' || target.find(' ') != std::string_view::npos) {
    return absl::InvalidArgumentError("the request target must be a path (origin-form)");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return absl::UnimplementedError(absl::StrCat("unsupported HTTP version ", http1::Printable(version, 20)));
  }
  req.keep_alive = version == "HTTP/1.1";
  req.path = std::string(target.substr(0, target.find('?')));
  if (const size_t q = target.find('?'); q != std::string_view::npos) req.query = std::string(target.substr(q + 1));
  bool has_length = false;
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view h = lines[i];
    if (h.empty()) return absl::InvalidArgumentError("an empty header line");
    if (h[0] == ' ' || h[0] == '\t') return absl::InvalidArgumentError("folded header lines are not accepted");
    const size_t colon = h.find(':');
    if (colon == std::string_view::npos || !IsToken(h.substr(0, colon))) {
      return absl::InvalidArgumentError(absl::StrCat("malformed header line \"", http1::Printable(h, 60), "\""));
    }
    const std::string name = http1::ToLower(h.substr(0, colon));
    const std::string_view value = Trim(h.substr(colon + 1));
    if (HasCtl(value)) return absl::InvalidArgumentError(absl::StrCat("control characters in header ", name));
    if (name == "transfer-encoding") return absl::UnimplementedError("Transfer-Encoding is not accepted; send Content-Length");
    if (name == "content-length") {
      uint64_t n = 0;
      if (has_length || !http1::IsDigits(value) || value.size() > 15 || !absl::SimpleAtoi(ToAbsl(value), &n)) {
        return absl::InvalidArgumentError("bad or repeated Content-Length");
      }
      has_length = true;
      req.content_length = n;
    }
    if (name == "connection") {
      const std::string v = http1::ToLower(value);
      if (v.find("close") != std::string::npos) req.keep_alive = false;
      if (v.find("keep-alive") != std::string::npos) req.keep_alive = true;
    }
    req.headers.emplace_back(name, std::string(value));
  }
  return req;
}

bool OriginAllowed(std::string_view origin, std::string_view host_header) {
  const size_t scheme_end = origin.find("://");
  if (scheme_end == std::string_view::npos) return false;
  const std::string_view scheme = origin.substr(0, scheme_end);
  if (scheme != "http" && scheme != "https") return false;
  std::string_view authority = origin.substr(scheme_end + 3);
  if (authority.empty() || authority.find('/') != std::string_view::npos) return false;
  // Host without the port.
  std::string_view host = authority;
  if (host.front() == '[') {
    const size_t close = host.find(']');
    if (close == std::string_view::npos) return false;
    host = host.substr(0, close + 1);
  } else if (const size_t colon = host.rfind(':'); colon != std::string_view::npos) {
    host = host.substr(0, colon);
  }
  const std::string lower = http1::ToLower(host);
  if (lower == "localhost" || lower == "[::1]" || lower.rfind("127.", 0) == 0) {
    if (lower == "localhost" || lower == "[::1]") return true;
    std::optional<http1::Ip> ip = http1::ParseIp(lower, true, false);
    return ip.has_value();
  }
  return http1::EqualsIgnoreCase(authority, host_header);
}

// --- sessions and streams --------------------------------------------------------------------------------

// One tools/call's SSE stream: its frames (bounded), a writer while the POST connection is up, and a cv for a
// resumed GET that follows it.
struct McpHttpServer::Stream {
  explicit Stream(std::string id) : id(std::move(id)) {}
  const std::string id;
  absl::Mutex mu;
  absl::CondVar cv;
  std::deque<std::pair<uint64_t, std::string>> frames ABSL_GUARDED_BY(mu);  // (seq, SSE frame)
  uint64_t last_seq ABSL_GUARDED_BY(mu) = 0;
  bool done ABSL_GUARDED_BY(mu) = false;
  // The connection written to as frames arrive (-1: none; a follower reads `frames`).
  int writer_fd ABSL_GUARDED_BY(mu) = -1;
  uint64_t followers ABSL_GUARDED_BY(mu) = 0;

  // As condition_variable::wait_for with a predicate: waits up to `timeout` for frames after `cursor` or the
  // stream's end; whether either came.
  bool WaitForNews(uint64_t cursor, std::chrono::milliseconds timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
    while (!HasNews(cursor)) {
      if (cv.WaitWithDeadline(&mu, deadline)) return HasNews(cursor);
    }
    return true;
  }
  bool HasNews(uint64_t cursor) const ABSL_SHARED_LOCKS_REQUIRED(mu) {
    return done || (!frames.empty() && frames.back().first > cursor);
  }

  // Marks the stream done and wakes its follower.
  void End() {
    absl::MutexLock lock(&mu);
    done = true;
    cv.SignalAll();
  }
};

struct McpHttpServer::Session {
  Session(std::string id, McpServer::Options o) : id(std::move(id)), server(std::move(o)) {}
  const std::string id;
  McpServer server;
  absl::Mutex mu;
  absl::CondVar cv;  // the standalone GET stream waits on it for the end
  bool ended ABSL_GUARDED_BY(mu) = false;
  bool has_get_stream ABSL_GUARDED_BY(mu) = false;
  uint64_t next_stream ABSL_GUARDED_BY(mu) = 1;
  size_t busy ABSL_GUARDED_BY(mu) = 0;  // requests running
  Clock::time_point last_used ABSL_GUARDED_BY(mu) = Clock::now();
  std::map<uint64_t, std::shared_ptr<Stream>> streams ABSL_GUARDED_BY(mu);

  // Waits up to `timeout` for the session's end; whether it came.
  bool WaitForEnd(std::chrono::milliseconds timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
    while (!ended) {
      if (cv.WaitWithDeadline(&mu, deadline)) return ended;
    }
    return true;
  }

  // Ends the session: its McpServer shut down (calls canceled, the sandbox session Deleted), its GET stream
  // and every tools/call stream woken to finish.
  void End() {
    server.Shutdown();
    absl::MutexLock lock(&mu);
    ended = true;
    cv.SignalAll();
    for (auto& [n, stream] : streams) stream->End();
  }
};

class McpHttpServer::StreamEmitter final : public Emitter {
 public:
  StreamEmitter(Stream* stream, size_t max_frames) : stream_(stream), max_frames_(max_frames) {}
  void Send(const json& message, uint64_t seq) override { Push(Dump(message), seq); }
  void Push(const std::string& data, uint64_t seq) {
    absl::MutexLock lock(&stream_->mu);
    if (seq <= stream_->last_seq) seq = stream_->last_seq + 1;  // ids stay increasing
    stream_->last_seq = seq;
    std::string frame = SseFrame(absl::StrCat(stream_->id, "-", seq), data);
    if (stream_->writer_fd >= 0 && !http1::SendAll(stream_->writer_fd, frame)) stream_->writer_fd = -1;
    stream_->frames.emplace_back(seq, std::move(frame));
    while (stream_->frames.size() > max_frames_) stream_->frames.pop_front();
    stream_->cv.SignalAll();
  }

 private:
  Stream* stream_;
  const size_t max_frames_;
};

McpHttpServer::McpHttpServer(Options options) : options_(std::move(options)) {}

McpHttpServer::~McpHttpServer() { Stop(); }

size_t McpHttpServer::session_count() const {
  absl::MutexLock lock(&mu_);
  return sessions_.size();
}

void McpHttpServer::Stop() {
  std::map<std::string, std::shared_ptr<Session>> sessions;
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    sessions.swap(sessions_);
  }
  for (auto& [id, s] : sessions) s->End();
}

std::shared_ptr<McpHttpServer::Session> McpHttpServer::NewSession(duvo::sandbox::v1::SessionKind kind) {
  std::vector<std::shared_ptr<Session>> expired;
  std::shared_ptr<Session> session;
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return nullptr;
    // Idle sessions (no request running, none for idle_timeout) make room.
    const Clock::time_point now = Clock::now();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      absl::MutexLock slock(&it->second->mu);
      if (it->second->busy == 0 && now - it->second->last_used > options_.idle_timeout) {
        expired.push_back(it->second);
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
    if (sessions_.size() < options_.max_sessions) {
      McpServer::Options o;
      o.stub = options_.stub;
      o.create = options_.create;
      o.create.set_kind(kind);
      session = std::make_shared<Session>(NewSessionId(), std::move(o));
      sessions_[session->id] = session;
    }
  }
  for (auto& s : expired) s->End();
  return session;
}

void McpHttpServer::EndSession(const std::string& id) {
  std::shared_ptr<Session> s;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return;
    s = it->second;
    sessions_.erase(it);
  }
  s->End();
}

bool McpHttpServer::Authorized(const HttpRequest& req) const {
  const std::string* auth = req.Header("authorization");
  return auth != nullptr && AuthorizationValid(*auth);
}

bool McpHttpServer::AuthorizationValid(const std::string& auth) const {
  if (options_.bearer_token_file.empty()) return false;
  const std::string token = ReadTokenFile(options_.bearer_token_file);
  const std::string expected = "Bearer " + token;
  return !token.empty() && auth.size() == expected.size() &&
         CRYPTO_memcmp(auth.data(), expected.data(), expected.size()) == 0;
}

std::shared_ptr<McpHttpServer::Session> McpHttpServer::SessionOf(int fd, const HttpRequest& req, bool* keep_open) {
  const std::string* id = req.Header("mcp-session-id");
  if (id == nullptr) {
    *keep_open = RespondError(fd, 400, "Bad Request: Mcp-Session-Id header is required", req.keep_alive);
    return nullptr;
  }
  std::shared_ptr<Session> s;
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(*id);
    if (it != sessions_.end()) s = it->second;
  }
  if (!s) {
    *keep_open = RespondError(fd, 404, "Session not found", req.keep_alive);
    return nullptr;
  }
  if (const std::string* v = req.Header("mcp-protocol-version"); v != nullptr && !IsSupportedVersion(*v)) {
    *keep_open = RespondError(fd, 400, absl::StrCat("Bad Request: unsupported MCP-Protocol-Version ",
                                                    http1::Printable(*v, 40)),
                              req.keep_alive);
    return nullptr;
  }
  return s;
}

void McpHttpServer::ServeConnection(int fd) {
  timeval tv{};
  tv.tv_sec = options_.write_timeout.count() / 1000;
  tv.tv_usec = (options_.write_timeout.count() % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  std::string buf;
  for (;;) {
    // The head and the body, within request_timeout of the request's first byte (or of the last response).
    const Clock::time_point deadline = Clock::now() + options_.request_timeout;
    auto fill = [&]() -> int {  // 1: more bytes; 0: closed; -1: timed out
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return -1;
      pollfd p{fd, POLLIN, 0};
      int r = poll(&p, 1, static_cast<int>(left));
      if (r < 0 && errno == EINTR) return 1;
      if (r == 0) return -1;
      char chunk[16384];
      ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      if (n < 0 && errno == EINTR) return 1;
      if (n <= 0) return 0;
      buf.append(chunk, static_cast<size_t>(n));
      return 1;
    };
    size_t head_end;
    while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (buf.size() > options_.max_header_bytes) {
        RespondError(fd, 431, "the request head is too large", false);
        return;
      }
      const int r = fill();
      if (r == 0) return;
      if (r < 0) {
        if (!buf.empty()) RespondError(fd, 408, "the request did not arrive in time", false);
        return;
      }
    }
    if (head_end + 4 > options_.max_header_bytes) {
      RespondError(fd, 431, "the request head is too large", false);
      return;
    }
    absl::StatusOr<HttpRequest> req = ParseRequestHead(std::string_view(buf).substr(0, head_end + 4));
    if (!req.ok()) {
      const int status = req.status().code() == absl::StatusCode::kUnimplemented
                             ? (req.status().message().find("Transfer-Encoding") != std::string_view::npos ? 411 : 505)
                             : 400;
      RespondError(fd, status, std::string(req.status().message()), false);
      return;
    }
    buf.erase(0, head_end + 4);
    if (req->content_length > options_.max_body_bytes) {
      RespondError(fd, 413, absl::StrCat("the body is larger than ", options_.max_body_bytes, " bytes"), false);
      return;
    }
    while (buf.size() < req->content_length) {
      const int r = fill();
      if (r == 0) return;
      if (r < 0) {
        RespondError(fd, 408, "the request body did not arrive in time", false);
        return;
      }
    }
    const std::string body = buf.substr(0, req->content_length);
    buf.erase(0, req->content_length);
    if (!ServeRequest(fd, *req, body)) return;
  }
}

bool McpHttpServer::ServeRequest(int fd, const HttpRequest& req, const std::string& body) {
  // Authentication first: nothing else is looked at, and nothing is created, without the token.
  if (!Authorized(req)) {
    return RespondError(fd, 401, "Unauthorized: missing or wrong bearer token", req.keep_alive,
                        {{"WWW-Authenticate", "Bearer"}});
  }
  if (const std::string* host = req.Header("host"); host != nullptr && !HostAllowedOnConnection(fd, *host)) {
    return RespondError(fd, 403,
                        absl::StrCat("Forbidden: Host ", http1::Printable(*host, 80),
                                     " over loopback must be localhost or an IP address (DNS rebinding)"),
                        req.keep_alive);
  }
  if (const std::string* origin = req.Header("origin"); origin != nullptr) {
    const std::string* host = req.Header("host");
    if (!OriginAllowed(*origin, host ? *host : "")) {
      return RespondError(fd, 403, absl::StrCat("Forbidden: origin ", http1::Printable(*origin, 80), " is not allowed"),
                          req.keep_alive);
    }
  }
  if (req.path != "/mcp") return RespondError(fd, 404, "Not Found: the MCP endpoint is /mcp", req.keep_alive);
  if (req.method == "POST") return Post(fd, req, body);
  if (req.method == "GET") return Get(fd, req);
  if (req.method == "DELETE") return Delete(fd, req);
  return RespondError(fd, 405, "Method Not Allowed", req.keep_alive, {{"Allow", "GET, POST, DELETE"}});
}

bool McpHttpServer::Post(int fd, const HttpRequest& req, const std::string& body) {
  const std::string* ctype = req.Header("content-type");
  if (ctype == nullptr || http1::ToLower(*ctype).rfind("application/json", 0) != 0) {
    return RespondError(fd, 415, "Unsupported Media Type: send application/json", req.keep_alive);
  }
  if (!AcceptsType(req, "application/json") || !AcceptsType(req, "text/event-stream")) {
    return RespondError(fd, 406, "Not Acceptable: accept both application/json and text/event-stream", req.keep_alive);
  }
  json message = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (message.is_discarded()) {
    return Respond(fd, 400, "application/json",
                   Dump(ErrorResponse(nullptr, kParseError, "parse error: the body is not valid JSON")), req.keep_alive);
  }
  const bool is_initialize = message.is_object() && message.value("method", json()) == "initialize";
  bool keep_open = false;
  std::shared_ptr<Session> session = PostSession(fd, req, is_initialize, &keep_open);
  if (!session) return keep_open;
  {
    absl::MutexLock lock(&session->mu);
    ++session->busy;
    session->last_used = Clock::now();
  }
  struct Idle {
    Session* s;
    ~Idle() {
      absl::MutexLock lock(&s->mu);
      --s->busy;
      s->last_used = Clock::now();
    }
  } idle{session.get()};

  // Only notifications and responses: accepted, nothing to answer.
  auto is_request = [](const json& m) { return m.is_object() && m.contains("method") && m.contains("id"); };
  bool any_request = is_request(message);
  if (message.is_array()) {
    for (const json& m : message) any_request = any_request || is_request(m);
  }
  if (!any_request && (message.is_object() || (message.is_array() && !message.empty()))) {
    std::optional<json> r = session->server.HandleText(body, nullptr);
    if (r && !message.is_array()) {
      // An invalid message (no jsonrpc, bad method): the error says why.
      return Respond(fd, 400, "application/json", Dump(*r), req.keep_alive);
    }
    return Respond(fd, 202, "", "", req.keep_alive);
  }

  const bool is_call = message.is_object() && message.value("method", json()) == "tools/call";
  if (!is_call) {
    std::optional<json> r = session->server.HandleText(body, nullptr);
    if (is_initialize && (!r || r->contains("error"))) EndSession(session->id);
    std::vector<std::pair<std::string, std::string>> extra;
    if (is_initialize && r && !r->contains("error")) extra.emplace_back("Mcp-Session-Id", session->id);
    if (!r) return Respond(fd, 202, "", "", req.keep_alive, extra);
    return Respond(fd, 200, "application/json", Dump(*r), req.keep_alive, extra);
  }
  return PostCall(fd, session.get(), message);
}

std::shared_ptr<McpHttpServer::Session> McpHttpServer::PostSession(int fd, const HttpRequest& req, bool is_initialize,
                                                                   bool* keep_open) {
  if (!is_initialize) return SessionOf(fd, req, keep_open);
  duvo::sandbox::v1::SessionKind kind = duvo::sandbox::v1::FILE;
  if (req.query == "kind=browser") {
    kind = duvo::sandbox::v1::BROWSER;
  } else if (req.query == "kind=desktop") {
    kind = duvo::sandbox::v1::DESKTOP;
  } else if (!req.query.empty() && req.query != "kind=file") {
    *keep_open = RespondError(fd, 400, "Bad Request: the query may only be kind=file, kind=browser or kind=desktop",
                              req.keep_alive);
    return nullptr;
  }
  std::shared_ptr<Session> session = NewSession(kind);
  if (!session) {
    *keep_open = RespondError(fd, 503, "Service Unavailable: the agent holds as many MCP sessions as it can",
                              req.keep_alive, {{"Retry-After", "5"}});
  }
  return session;
}

bool McpHttpServer::PostCall(int fd, Session* session, const json& message) {
  // tools/call: an SSE stream of its progress, then its response. Resumable with Last-Event-ID.
  std::shared_ptr<Stream> stream = NewStream(session);
  {
    absl::MutexLock lock(&stream->mu);
    // The priming event: an id before any data, so a client cut off before the first message can resume,
    // and how long to wait before it does (SSE's retry, SEP-1699).
    const std::string prime = absl::StrCat("id: ", stream->id, "-0\nretry: 1000\ndata: \n\n");
    if (http1::SendAll(fd, kSseHead) && http1::SendAll(fd, prime)) stream->writer_fd = fd;
  }
  StreamEmitter emitter(stream.get(), options_.replay_events);
  std::optional<json> r = session->server.Handle(message, &emitter);
  if (r) emitter.Push(Dump(*r), emitter.result_seq);
  {
    absl::MutexLock lock(&stream->mu);
    stream->done = true;
    stream->writer_fd = -1;
    stream->cv.SignalAll();
  }
  return false;  // the stream's end is the connection's end
}

std::shared_ptr<McpHttpServer::Stream> McpHttpServer::NewStream(Session* session) {
  absl::MutexLock lock(&session->mu);
  auto stream = std::make_shared<Stream>(absl::StrCat(session->next_stream++));
  session->streams[std::stoull(stream->id)] = stream;
  while (session->streams.size() > options_.streams_per_session) {
    auto oldest = session->streams.begin();
    absl::MutexLock slock(&oldest->second->mu);
    if (!oldest->second->done) break;
    session->streams.erase(oldest);
  }
  return stream;
}

void McpHttpServer::Follow(int fd, Stream* stream, uint64_t after_seq) {
  stream->mu.Lock();
  stream->writer_fd = -1;  // this connection takes over: the cut-off one gets nothing more
  ++stream->followers;
  uint64_t cursor = after_seq;
  for (;;) {
    std::vector<std::string> out;
    for (const auto& [seq, frame] : stream->frames) {
      if (seq > cursor) {
        out.push_back(frame);
        cursor = seq;
      }
    }
    if (!out.empty()) {
      stream->mu.Unlock();
      for (const std::string& f : out) {
        if (!http1::SendAll(fd, f)) {
          stream->mu.Lock();
          --stream->followers;
          stream->mu.Unlock();
          return;
        }
      }
      stream->mu.Lock();
      continue;
    }
    if (stream->done) break;
    // A keep-alive comment now and then, which also finds a client that left.
    if (!stream->WaitForNews(cursor, options_.keepalive_interval)) {
      stream->mu.Unlock();
      const bool alive = http1::SendAll(fd, ":\n\n");
      stream->mu.Lock();
      if (!alive) break;
    }
  }
  --stream->followers;
  stream->mu.Unlock();
}

bool McpHttpServer::Get(int fd, const HttpRequest& req) {
  if (!AcceptsType(req, "text/event-stream")) {
    return RespondError(fd, 406, "Not Acceptable: GET /mcp is an event stream", req.keep_alive);
  }
  bool keep_open = false;
  std::shared_ptr<Session> session = SessionOf(fd, req, &keep_open);
  if (!session) return keep_open;
  if (const std::string* last = req.Header("last-event-id"); last != nullptr) {
    // "<stream>-<seq>": the rest of that stream.
    const size_t dash = last->find('-');
    uint64_t stream_no = 0, seq = 0;
    std::shared_ptr<Stream> stream;
    if (dash != std::string::npos && absl::SimpleAtoi(last->substr(0, dash), &stream_no) &&
        absl::SimpleAtoi(last->substr(dash + 1), &seq)) {
      absl::MutexLock lock(&session->mu);
      auto it = session->streams.find(stream_no);
      if (it != session->streams.end()) stream = it->second;
    }
    if (!stream) {
      return RespondError(fd, 400, absl::StrCat("Bad Request: Last-Event-ID ", http1::Printable(*last, 40),
                                                " names no stream this session holds"),
                          req.keep_alive);
    }
    {
      absl::MutexLock lock(&session->mu);
      ++session->busy;
    }
    if (http1::SendAll(fd, kSseHead)) Follow(fd, stream.get(), seq);
    absl::MutexLock lock(&session->mu);
    --session->busy;
    session->last_used = Clock::now();
    return false;
  }
  {
    absl::MutexLock lock(&session->mu);
    if (session->has_get_stream) {
      return RespondError(fd, 409, "Conflict: this session's GET stream is already open", req.keep_alive);
    }
    session->has_get_stream = true;
  }
  // The stream for server-initiated messages: this server sends none, so it carries keep-alives until the
  // session ends or the client leaves.
  if (http1::SendAll(fd, kSseHead)) {
    session->mu.Lock();
    while (!session->ended) {
      if (session->WaitForEnd(options_.keepalive_interval)) break;
      session->mu.Unlock();
      const bool alive = http1::SendAll(fd, ":\n\n");
      session->mu.Lock();
      if (!alive) break;
    }
    session->mu.Unlock();
  }
  absl::MutexLock lock(&session->mu);
  session->has_get_stream = false;
  return false;
}

bool McpHttpServer::Delete(int fd, const HttpRequest& req) {
  bool keep_open = false;
  std::shared_ptr<Session> session = SessionOf(fd, req, &keep_open);
  if (!session) return keep_open;
  EndSession(session->id);
  return Respond(fd, 200, "", "", req.keep_alive);
}

}  // namespace sbx::agent::mcp
