// The writing side of the agent's small HTTP/1 endpoints (the daemon's /mcp, sandboxctl's and the daemon's CDP
// endpoint): reason phrases and a blocking send of a whole buffer.
#ifndef SBX_NET_HTTP_RESPONSE_H_
#define SBX_NET_HTTP_RESPONSE_H_

#include <string_view>

namespace sbx::agent::http1 {

// The reason phrase of the statuses these endpoints answer with ("Error" for any other).
const char* ReasonPhrase(int status);

// Sends all of `data` on a socket (no SIGPIPE; EINTR retried); false when the peer is gone or the socket's
// send timeout passed with nothing sent.
bool SendAll(int fd, std::string_view data);

}  // namespace sbx::agent::http1

#endif  // SBX_NET_HTTP_RESPONSE_H_
