// The daemon's TCP listener, shared by gRPC and MCP: it owns the listening socket, reads each connection's
// first bytes, and hands HTTP/2 connections (the client preface "PRI * HTTP/2.0") to the gRPC server
// (grpc::AddInsecureChannelFromFd; the Sandboxes service still checks their bearer token) and HTTP/1.1 ones
// to the MCP endpoint (mcp_http.h). One port, one token, no new config field.
//
// Bounds: HTTP/1.1 connections at once (max_connections; one more is closed at once), and the time a client
// may take to send its first bytes (sniff_timeout) before it is dropped.
#ifndef SBX_AGENT_DAEMON_MCP_LISTENER_H_
#define SBX_AGENT_DAEMON_MCP_LISTENER_H_

#include <chrono>
#include <list>
#include <memory>

#include <set>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/mcp/mcp_http.h"
#include "base/unique_fd.h"

namespace sbx::agent::mcp {

class TcpListener {
 public:
  struct Options {
    size_t max_connections = 64;
    std::chrono::milliseconds sniff_timeout{10000};
  };
  // Binds and listens on "host:port" ("127.0.0.1:0", "[::1]:7443", "0.0.0.0:7443"); *port gets the port.
  static absl::StatusOr<std::unique_ptr<TcpListener>> Listen(const std::string& address, Options options, int* port);
  ~TcpListener();  // Stop()

  // Starts accepting: HTTP/2 to `grpc`, HTTP/1.1 to `http`. Both outlive this listener's Stop.
  void Start(grpc::Server* grpc, McpHttpServer* http);
  // Stops accepting, ends `http`'s sessions, closes every HTTP/1.1 connection and joins their threads.
  void Stop();

 private:
  struct Conn {
    int fd = -1;
    std::jthread thread;
    bool done = false;
  };
  TcpListener(UniqueFd fd, Options options) : listen_fd_(std::move(fd)), options_(options) {}
  void AcceptLoop(std::stop_token stop);
  void Serve(Conn* conn, UniqueFd fd);

  UniqueFd listen_fd_;
  const Options options_;
  grpc::Server* grpc_ = nullptr;
  McpHttpServer* http_ = nullptr;
  absl::Mutex mu_;
  std::list<Conn> conns_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::jthread accept_thread_;
};

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_DAEMON_MCP_LISTENER_H_
