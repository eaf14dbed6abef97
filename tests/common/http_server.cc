#include "tests/common/http_server.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

namespace sbx::testing {

HttpServer::HttpServer(const std::string& ip, Handler handler) : ip_(ip), handler_(std::move(handler)) {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  listen(fd_, 64);
  socklen_t len = sizeof(addr);
  getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { Serve(); });
}

HttpServer::~HttpServer() {
  shutdown(fd_, SHUT_RDWR);  // wakes accept(), which then fails: Serve returns
  thread_.join();
  {
    std::lock_guard lock(mu_);
    for (int c : open_) shutdown(c, SHUT_RDWR);  // wakes a connection still waiting for its request
  }
  for (std::thread& t : connections_) t.join();
  close(fd_);
}

std::string HttpServer::Url(const std::string& path) const {
  return "http://" + ip_ + ":" + std::to_string(port_) + path;
}

std::vector<std::string> HttpServer::requests() {
  std::lock_guard lock(mu_);
  return requests_;
}

// Each connection on its own thread: a browser opens connections it sends nothing on for a while (preconnects),
// and one of those must neither hold up the others nor be answered before its request comes: an answer to an
// empty request would be taken as the answer to whatever the browser sends on it later (a page that "loaded"
// as a 404, on a busy machine).
void HttpServer::Serve() {
  for (;;) {
    const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    {
      std::lock_guard lock(mu_);
      open_.push_back(c);
    }
    connections_.emplace_back([this, c] { ServeConnection(c); });
  }
}

void HttpServer::ServeConnection(int c) {
  timeval tv{30, 0};
  setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string head;
  char buf[4096];
  while (head.find("\r\n\r\n") == std::string::npos) {
    const ssize_t n = read(c, buf, sizeof(buf));
    if (n <= 0) break;
    head.append(buf, static_cast<size_t>(n));
  }
  if (head.find("\r\n\r\n") != std::string::npos) {
    {
      std::lock_guard lock(mu_);
      requests_.push_back(head);
    }
    const std::string response = handler_(head);
    (void)!write(c, response.data(), response.size());
  }  // else no request came: closed unanswered
  std::lock_guard lock(mu_);
  std::erase(open_, c);
  close(c);
}

std::string HttpResponse(const std::string& status, const std::string& type, const std::string& body) {
  return "HTTP/1.0 " + status + "\r\nContent-Type: " + type + "\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string RequestTarget(const std::string& head) {
  const size_t sp1 = head.find(' ');
  if (sp1 == std::string::npos) return "";
  const size_t sp2 = head.find(' ', sp1 + 1);
  return head.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp1 - 1);
}

std::string LoopbackExchange(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return "";
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
    char buf[8192];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

std::string HostIPv4() {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string out;
  for (ifaddrs* i = list; i != nullptr && out.empty(); i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK)) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof(buf));
    out = buf;
  }
  freeifaddrs(list);
  return out;
}

}  // namespace sbx::testing
