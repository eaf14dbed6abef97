// Test helper: a small HTTP server on a loopback (or any local) IPv4 address, for pages and upstreams that
// tests point Chromium, the egress proxy or a client at; and the client side of one exchange on loopback.
#ifndef SBX_TESTS_COMMON_HTTP_SERVER_H_
#define SBX_TESTS_COMMON_HTTP_SERVER_H_

#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sbx::testing {

// One thread accepts connections one at a time on `ip` (port chosen by the kernel), reads each request's head
// (up to the blank line; a client silent for 2 s, such as a browser's speculative connection, gets what it
// sent so far), answers with what `handler` returns for that head, and closes the connection. Every head is
// recorded, in order.
class HttpServer {
 public:
  using Handler = std::function<std::string(const std::string& head)>;  // the whole response
  HttpServer(const std::string& ip, Handler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // "http://IP:PORT" + path.
  std::string Url(const std::string& path) const;
  std::vector<std::string> requests();

 private:
  void Serve();
  void ServeConnection(int c);

  const std::string ip_;
  const Handler handler_;
  int fd_ = -1;
  int port_ = 0;
  std::mutex mu_;
  std::vector<std::string> requests_;  // GUARDED_BY(mu_)
  std::vector<int> open_;              // GUARDED_BY(mu_): connections being served (shut down at the end)
  std::vector<std::thread> connections_;  // touched by Serve only, joined after it returns
  std::thread thread_;                 // last: started once the rest is set
};

// An HTTP/1.0 response that closes its connection: "HTTP/1.0 STATUS", Content-Type `type` (which may carry more
// header lines after a "\r\n"), Content-Length, `body`.
std::string HttpResponse(const std::string& status, const std::string& type, const std::string& body);

// The request target of a head ("GET /a?b=1 HTTP/1.1" -> "/a?b=1"), or "" when it has no such line.
std::string RequestTarget(const std::string& head);

// Sends `request` on a new TCP connection to 127.0.0.1:`port` (TCP_NODELAY) and reads until the server
// closes it; "" when it cannot connect.
std::string LoopbackExchange(int port, const std::string& request);

// A non-loopback IPv4 address of this host, or "" (Chromium sends loopback destinations around any proxy,
// as they are the jail's own).
std::string HostIPv4();

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_HTTP_SERVER_H_
