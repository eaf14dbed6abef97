// McpServer: one MCP session's JSON-RPC core (Model Context Protocol 2025-06-18; 2025-03-26 and 2024-11-05
// clients negotiate down), independent of the transport. It serves the tools of mcp_tools.h by calling the
// Sandboxes gRPC API through a stub, so every check of that API (auth, policy, budgets) applies: sandboxctl
// mcp (stdio) talks to the daemon's socket; the daemon's /mcp endpoint talks to itself in process.
//
// One McpServer is bound to at most one sandbox session, created lazily by the first tools/call (so a client
// that only lists tools costs nothing) and Deleted by Shutdown. Handle is thread-safe: a transport may run
// several tools/call at once, and a notifications/cancelled for one of them arrives while it runs.
#ifndef SBX_AGENT_MCP_MCP_SERVER_H_
#define SBX_AGENT_MCP_MCP_SERVER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::agent::mcp {

// The protocol versions this server speaks, newest first.
inline constexpr const char* kProtocolVersions[] = {"2025-06-18", "2025-03-26", "2024-11-05"};
inline constexpr const char* kLatestProtocolVersion = "2025-06-18";
bool IsSupportedVersion(std::string_view version);

// JSON-RPC error codes.
inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternalError = -32603;

// Serializes a message on one line. Text from a sandbox may be any bytes: invalid UTF-8 becomes U+FFFD.
std::string Dump(const nlohmann::json& message);
nlohmann::json ErrorResponse(const nlohmann::json& id, int code, std::string_view message);

// Where messages about the request being handled go before its response (progress notifications).
class Emitter {
 public:
  virtual ~Emitter() = default;
  // `seq` is the sandbox event that caused it (its seq in the session's event log).
  virtual void Send(const nlohmann::json& message, uint64_t seq) = 0;
  // Set by Handle: the seq of the event that finished a tools/call (0 for other requests).
  uint64_t result_seq = 0;
};

class McpServer {
 public:
  struct Options {
    duvo::sandbox::v1::Sandboxes::StubInterface* stub = nullptr;  // not owned; outlives the server
    // The session the first tools/call creates: its kind (which tools are listed) and policy.
    duvo::sandbox::v1::CreateRequest create;
    // Adds metadata (the bearer token) to every RPC; may be empty.
    std::function<void(grpc::ClientContext*)> decorate;
    // How long a call held by a human approval gate is waited for before the result says so.
    std::chrono::milliseconds approval_wait{30000};
  };
  explicit McpServer(Options options);
  ~McpServer();  // Shutdown()
  McpServer(const McpServer&) = delete;
  McpServer& operator=(const McpServer&) = delete;

  // Handles one message text (a stdio line, a POST body): a JSON-RPC request, notification or response, or a
  // batch of them where the negotiated version allows batches (2024-11-05, 2025-03-26). Returns what to send
  // back: a response, an array of responses, or nothing (notifications, a canceled request).
  std::optional<nlohmann::json> HandleText(std::string_view text, Emitter* emitter);
  // Handles one parsed message (not a batch).
  std::optional<nlohmann::json> Handle(const nlohmann::json& message, Emitter* emitter);

  // Cancels running calls and Deletes the sandbox session. Idempotent.
  void Shutdown();

  // The version agreed at initialize ("" before).
  std::string protocol_version() const;
  // The sandbox session's id ("" until the first tools/call creates it).
  std::string session_id() const;

 private:
  struct InFlight;
  struct CallEvents;
  using CallStream = grpc::ClientReaderWriterInterface<duvo::sandbox::v1::CallRequest, duvo::sandbox::v1::Event>;
  nlohmann::json Initialize(const nlohmann::json& id, const nlohmann::json& params);
  std::optional<nlohmann::json> CallTool(const nlohmann::json& id, const nlohmann::json& params, Emitter* emitter);
  // tools/call's steps: the first message (and a cancel that came before the stream), the events up to the
  // call's end (with progress notifications), the stream's end, and the tool result the events make.
  static void StartCall(InFlight& flight, grpc::ClientContext* ctx, CallStream* stream, const std::string& session,
                        const duvo::sandbox::v1::ToolCall& call);
  CallEvents ReadCallEvents(CallStream& stream, grpc::ClientContext* ctx, const nlohmann::json& progress_token,
                            Emitter* emitter) const;
  static grpc::Status EndCall(InFlight& flight, grpc::ClientContext* ctx, CallStream* stream,
                              const CallEvents& events, bool* canceled);
  nlohmann::json CallResult(const std::string& session, const CallEvents& events, const grpc::Status& status);
  static nlohmann::json ToolResultJson(const duvo::sandbox::v1::ToolResult& result, const CallEvents& events,
                                       bool structured);
  static nlohmann::json ExecResultJson(const duvo::sandbox::v1::ExecResult& exec, const CallEvents& events,
                                       bool structured);
  void Cancel(const nlohmann::json& params);
  // The sandbox session, created on first use.
  absl::StatusOr<std::string> EnsureSession();
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  const Options options_;
  // NOTE: lock order: session_mu_ before mu_.
  absl::Mutex session_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // held while the session is created, so concurrent first calls make one
  mutable absl::Mutex mu_;
  std::string version_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Running tools/call requests by their JSON-RPC id (dumped), for notifications/cancelled.
  std::map<std::string, std::shared_ptr<InFlight>> in_flight_ ABSL_GUARDED_BY(mu_);
  std::string session_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_MCP_SERVER_H_
