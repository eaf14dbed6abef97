#include "agent/daemon/mcp_listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <grpcpp/server_posix.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "agent/cli/cdp_endpoint.h"
#include "agent/cli/cdp_serve.h"

namespace sbx::agent::mcp {

absl::StatusOr<std::unique_ptr<TcpListener>> TcpListener::Listen(const std::string& address, Options options,
                                                                 int* port) {
  std::string host, service;
  if (!address.empty() && address[0] == '[') {
    const size_t close = address.find("]:");
    if (close == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("tcp_address ", address, ": expected [HOST]:PORT"));
    host = address.substr(1, close - 1);
    service = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("tcp_address ", address, ": expected HOST:PORT"));
    host = address.substr(0, colon);
    service = address.substr(colon + 1);
  }
  int port_number = 0;
  if (!absl::SimpleAtoi(service, &port_number) || port_number < 0 || port_number > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("tcp_address ", address, ": bad port"));
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tcp_address ", address, ": ", gai_strerror(rc)));
  }
  std::string last_error = "no address";
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd) continue;
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd.get(), 128) < 0) {
      last_error = strerror(errno);
      continue;
    }
    sockaddr_storage bound{};
    socklen_t len = sizeof(bound);
    getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
    *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    freeaddrinfo(res);
    return std::unique_ptr<TcpListener>(new TcpListener(std::move(fd), options));
  }
  freeaddrinfo(res);
  return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", last_error));
}

TcpListener::~TcpListener() { Stop(); }

namespace {

// Whether an HTTP/1.1 request line starts "METHOD /cdp/": the first 16 bytes (the shortest request line and
// its blank line) are enough to tell, and are only peeked. A client sending fewer goes to the MCP side.
bool IsCdpRequest(int fd) {
  char head[16];
  ssize_t n;
  do {
    n = recv(fd, head, sizeof(head), MSG_PEEK | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  if (n != static_cast<ssize_t>(sizeof(head))) return false;
  const std::string_view line(head, sizeof(head));
  const size_t sp = line.find(' ');
  return sp != std::string_view::npos && line.substr(sp + 1).rfind("/cdp/", 0) == 0;
}

}  // namespace

void TcpListener::Start(grpc::Server* grpc, McpHttpServer* http) {
  grpc_ = grpc;
  http_ = http;
  accept_thread_ = std::jthread([this](std::stop_token stop) { AcceptLoop(stop); });
}

void TcpListener::AcceptLoop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    pollfd p{listen_fd_.get(), POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    UniqueFd fd(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fd) continue;
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    conns_.remove_if([](const Conn& c) { return c.done; });  // joins finished threads
    if (conns_.size() >= options_.max_connections) continue;  // closed: over the bound
    Conn& c = conns_.emplace_back();
    c.fd = fd.get();
    c.thread = std::jthread([this, conn = &c, owned = std::move(fd)]() mutable { Serve(conn, std::move(owned)); });
  }
}

void TcpListener::Serve(Conn* conn, UniqueFd fd) {
  // The first three bytes tell the protocol: "PRI" starts HTTP/2's preface (gRPC); an MCP request starts
  // with its method. A client that sends nothing within sniff_timeout is dropped.
  timeval tv{};
  tv.tv_sec = options_.sniff_timeout.count() / 1000;
  tv.tv_usec = (options_.sniff_timeout.count() % 1000) * 1000;
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char first[3];
  ssize_t n;
  do {
    n = recv(fd.get(), first, sizeof(first), MSG_PEEK | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  if (n == 3) {
    // Still under sniff_timeout: the request line's start, for /cdp/.
    const bool cdp_request = memcmp(first, "PRI", 3) != 0 && IsCdpRequest(fd.get());
    timeval zero{};
    setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof(zero));
    if (memcmp(first, "PRI", 3) == 0) {
      int one = 1;
      setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      // gRPC's endpoint reads until EAGAIN: a blocking socket would park its poller in recvmsg once the
      // client paused (a bidi stream waiting for our answer then never got it).
      const int flags = fcntl(fd.get(), F_GETFL);
      if (flags >= 0 && fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) == 0) {
        grpc::AddInsecureChannelFromFd(grpc_, fd.Release());  // gRPC owns it from here
      }  // else closed below: the client sees the connection drop
    } else if (cdp_request) {
      // A session's browser over CDP (cdp_endpoint.h): /cdp/SESSION/json/version and its WebSocket, under the
      // MCP side's bearer token, checked before anything else. Each stream is a Cdp RPC on the in-process
      // channel carrying the client's own Authorization, so the RPC's checks apply as to any gRPC client.
      cdp::CdpEndpointOptions o;
      o.session_path_prefix = "/cdp";
      o.authorize = [http = http_](const std::string& authorization) { return http->AuthorizationValid(authorization); };
      o.open = cdp::GrpcCdpOpener(http_->stub(), [](const cdp::CdpOpenRequest& request) {
        auto ctx = std::make_unique<grpc::ClientContext>();
        ctx->AddMetadata("authorization", request.authorization);
        return ctx;
      });
      // It closes what it is given: a duplicate, so this fd is still closed under mu_ below (and Stop's
      // shutdown of it still wakes the endpoint's reads).
      if (UniqueFd dup(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0)); dup) cdp::ServeCdpConnection(dup.Release(), o);
    } else {
      http_->ServeConnection(fd.get());
    }
  }
  absl::MutexLock lock(&mu_);
  conn->fd = -1;
  fd.Reset();  // closed under mu_, so Stop never shuts down a number already reused
  conn->done = true;
}

void TcpListener::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  if (accept_thread_.joinable()) {
    accept_thread_.request_stop();
    accept_thread_.join();
  }
  listen_fd_.Reset();
  if (http_ != nullptr) http_->Stop();  // cancels calls, wakes streams
  std::list<Conn> conns;
  {
    absl::MutexLock lock(&mu_);
    for (Conn& c : conns_) {
      if (c.fd >= 0) shutdown(c.fd, SHUT_RDWR);  // wakes a thread blocked on its connection
    }
    conns.swap(conns_);
  }
  conns.clear();  // joins
}

}  // namespace sbx::agent::mcp
