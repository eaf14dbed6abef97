// DNS rebinding guards for the HTTP endpoints a developer runs on loopback: the daemon's TCP port (/mcp,
// /cdp) and `sandboxctl browser SESSION cdp --listen`. A web page whose name an attacker re-points at
// 127.0.0.1 talks to them from the user's own browser, with the page's name in Host; Chromium's DevTools server
// refuses such requests, and so do we.
#ifndef SBX_NET_LOOPBACK_GUARD_H_
#define SBX_NET_LOOPBACK_GUARD_H_

#include <string_view>

namespace sbx::agent {

// Whether a Host header value names the machine by a literal: "localhost", an IPv4 address, or an IPv6
// address in brackets, each with an optional port.
bool HostHeaderIsLiteral(std::string_view host);

// Whether the connection's local address is a loopback one (127.0.0.0/8, ::1, or ::ffff:127.0.0.0/104).
bool ConnectedViaLoopback(int fd);

// The rule both endpoints apply: over a loopback connection the Host header, when sent, must be a literal.
// Elsewhere (a DaemonSet's port behind the platform's proxy) Host is whatever name the operator uses.
bool HostAllowedOnConnection(int fd, std::string_view host);

}  // namespace sbx::agent

#endif  // SBX_NET_LOOPBACK_GUARD_H_
