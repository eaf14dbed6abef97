#include "net/listen.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace sbx::cli {

int ListenTcp(const std::string& listen, int backlog, const char* example, int* exit_code) {
  const size_t colon = listen.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  const std::string port = colon == std::string::npos ? "" : listen.substr(colon + 1);
  const bool port_ok = !port.empty() && port.size() <= 5 && port.find_first_not_of("0123456789") == std::string::npos &&
                       std::stoi(port) <= 65535;
  if (colon == std::string::npos || !port_ok ||
      inet_pton(AF_INET, listen.substr(0, colon).c_str(), &addr.sin_addr) != 1) {
    fprintf(stderr, "sandboxctl: --listen '%s': expected IPV4:PORT (port 0..65535), e.g. %s\n", listen.c_str(),
            example);
    *exit_code = 2;
    return -1;
  }
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(port)));
  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  if (lfd >= 0) setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (lfd < 0 || bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(lfd, backlog) != 0) {
    fprintf(stderr, "sandboxctl: cannot listen on %s: %s\n", listen.c_str(), strerror(errno));
    if (lfd >= 0) close(lfd);
    *exit_code = 1;
    return -1;
  }
  socklen_t len = sizeof(addr);
  getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  printf("listening on %s:%d\n", listen.substr(0, colon).c_str(), ntohs(addr.sin_port));
  fflush(stdout);
  return lfd;
}

}  // namespace sbx::cli
