// sandboxctl's local endpoints (the CDP endpoint, the VNC relay): one listening socket from "IPV4:PORT".
#ifndef SBX_NET_LISTEN_H_
#define SBX_NET_LISTEN_H_

#include <string>

namespace sbx::cli {

// Listens on `listen` ("IPV4:PORT", port 0 picks one) and prints "listening on IPV4:PORT" to stdout. On bad
// input or a failed bind, prints why to stderr (naming `example`, e.g. "127.0.0.1:9222") and returns -1 with
// *exit_code set (2: malformed, 1: cannot listen).
int ListenTcp(const std::string& listen, int backlog, const char* example, int* exit_code);

}  // namespace sbx::cli

#endif  // SBX_NET_LISTEN_H_
