// The MCP Streamable HTTP transport (spec 2025-06-18, "Transports"), served by the daemon under /mcp on its
// TCP listener (mcp_listener.h hands it the HTTP/1.1 connections; HTTP/2 ones go to gRPC).
//
//   POST /mcp    one JSON-RPC message (or a batch, where the negotiated version has them). initialize makes
//                an MCP session and answers with its Mcp-Session-Id; a tools/call is answered as an SSE
//                stream (text/event-stream) carrying its progress notifications, then its response; other
//                requests as application/json; notifications and responses alone get 202.
//   GET /mcp     an SSE stream: with Last-Event-ID, the rest of a tools/call stream that was cut off (events
//                replayed from a bounded buffer, then live); without, the session's stream for server
//                messages (this server sends none: it carries keep-alive comments until the session ends).
//   DELETE /mcp  ends the session: its sandbox session is Deleted.
//
// Every request needs "Authorization: Bearer <token>" (the agent's bearer_token_file): 401 otherwise, before
// anything else happens. A browser's Origin must be a loopback origin or the Host it sent (DNS rebinding):
// 403. Unknown Mcp-Session-Id: 404; missing after initialize: 400; an MCP-Protocol-Version we do not speak:
// 400. Event ids are "<stream>-<seq>", seq being the sandbox event (its seq in the session's event log)
// that the message came from, so a resumed stream continues at the next output of the call.
//
// The session kind is the endpoint's query at initialize: /mcp (file), /mcp?kind=browser, /mcp?kind=desktop.
// Each MCP session binds one McpServer (mcp_server.h), hence at most one sandbox session, created by its
// first tools/call. Bounds: the head (max_header_bytes) and body (max_body_bytes), the time both may take to
// arrive (request_timeout, against slowloris), MCP sessions (max_sessions; idle ones past idle_timeout are
// ended to make room), SSE replay events per stream, and streams per session.
#ifndef SBX_AGENT_MCP_MCP_HTTP_H_
#define SBX_AGENT_MCP_MCP_HTTP_H_

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/mcp/mcp_server.h"
#include "base/unique_fd.h"

namespace sbx::agent::mcp {

// One HTTP/1.1 request head, parsed (origin-form target; header names lowercased).
struct HttpRequest {
  std::string method;
  std::string path;   // without the query
  std::string query;  // after '?', as sent
  std::vector<std::pair<std::string, std::string>> headers;
  bool keep_alive = true;
  uint64_t content_length = 0;
  // The first value of header `name` (lowercase), or nullptr.
  const std::string* Header(std::string_view name) const;
};

// Parses a request head (through the blank line). Strict: HTTP/1.0 or 1.1 only, token methods, no folded
// lines, no control characters, one Content-Length at most, and Transfer-Encoding refused (this endpoint takes
// a sized body). The error names what is wrong.
absl::StatusOr<HttpRequest> ParseRequestHead(std::string_view head);

// Whether an Origin header's value may call this endpoint: a loopback origin (localhost, 127.0.0.0/8, [::1])
// or the same host as the request's Host header.
bool OriginAllowed(std::string_view origin, std::string_view host_header);

class McpHttpServer {
 public:
  struct Options {
    duvo::sandbox::v1::Sandboxes::StubInterface* stub = nullptr;  // not owned: the in-process channel's
    std::string bearer_token_file;                                // re-read on every request
    size_t max_sessions = 16;
    size_t max_header_bytes = 16 << 10;
    size_t max_body_bytes = 4 << 20;
    std::chrono::milliseconds request_timeout{10000};  // a request's head and body must arrive within this
    std::chrono::milliseconds write_timeout{10000};    // a client that reads nothing for this long is dropped
    std::chrono::milliseconds idle_timeout{std::chrono::minutes(30)};
    std::chrono::milliseconds keepalive_interval{15000};  // SSE comment lines on idle streams
    size_t replay_events = 4096;   // per SSE stream
    size_t streams_per_session = 64;
    // The session a first tools/call creates.
    duvo::sandbox::v1::CreateRequest create;
  };
  explicit McpHttpServer(Options options);
  ~McpHttpServer();  // Stop()

  // Serves one HTTP/1.1 connection (not owned) until it closes, a timeout, or Stop. Called on a thread the
  // listener owns.
  void ServeConnection(int fd);
  // Ends every MCP session (their calls canceled, their sandbox sessions Deleted) and wakes every stream
  // waiting for events. Connections still open see errors; the listener closes them.
  void Stop();

  size_t session_count() const;

  // Whether an Authorization header's value ("" if none) carries the bearer token (the listener's /cdp/ path
  // checks the same), and the in-process stub its requests go through.
  bool AuthorizationValid(const std::string& authorization) const;
  duvo::sandbox::v1::Sandboxes::StubInterface* stub() const { return options_.stub; }

 private:
  struct Stream;
  struct Session;
  class StreamEmitter;
  struct Response;

  // One request on an open connection; false: close the connection.
  bool ServeRequest(int fd, const HttpRequest& req, const std::string& body);
  bool Post(int fd, const HttpRequest& req, const std::string& body);
  // Post's steps: the MCP session (a new one for initialize, of the query's kind), and a tools/call answered
  // as an SSE stream (NewStream: numbered, the oldest finished ones dropped past streams_per_session).
  std::shared_ptr<Session> PostSession(int fd, const HttpRequest& req, bool is_initialize, bool* keep_open);
  bool PostCall(int fd, Session* session, const nlohmann::json& message);
  std::shared_ptr<Stream> NewStream(Session* session);
  bool Get(int fd, const HttpRequest& req);
  bool Delete(int fd, const HttpRequest& req);
  bool Authorized(const HttpRequest& req) const;
  // The session a request names: nullptr after an error response was sent (400 missing, 404 unknown).
  std::shared_ptr<Session> SessionOf(int fd, const HttpRequest& req, bool* keep_open);
  std::shared_ptr<Session> NewSession(duvo::sandbox::v1::SessionKind kind);
  void EndSession(const std::string& id);
  // Sends the rest of `stream` after `after_seq`, live, until it is done. Returns when done or the client left.
  void Follow(int fd, Stream* stream, uint64_t after_seq);

  const Options options_;
  mutable absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_MCP_HTTP_H_
