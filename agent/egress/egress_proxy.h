// EgressProxy: the governed-egress HTTP proxy behind network mode `egress` (DESIGN.md, "Network"). A jail
// reaches the outside only through it: HTTP CONNECT tunnels and plain (absolute-form) HTTP requests, to the
// destinations its allow rules name. The proxy resolves names itself, checks every resolved address (no DNS
// rebinding into loopback, private or link-local ranges unless a CIDR rule names them; never the host's own
// addresses or the operator's deny networks unless a CIDR rule names them), refuses a CONNECT
// relayed inside a tunnel, holds destinations on its ask list for a human's approval, and reports each
// decision as an audit event naming the rule that decided and the tool call to blame.
//
// Wiring (the caller's job): create a TCP listening socket *inside* the jail's network namespace
// (127.0.0.1:3128 there, from an agent thread that setns()'d into it) and hand it to Start(). The proxy's
// own connections to destinations are made from the network namespace of the thread that calls Start()
// (its threads inherit it), so call Start() from a thread in the agent's (host) namespace. In the jail set
// HTTP_PROXY / HTTPS_PROXY / http_proxy / https_proxy to http://127.0.0.1:3128.
//
// Rules (ParseEgressRule):
//   example.com         that host name exactly, any port (case-insensitive; one trailing dot ignored)
//   *.example.com       every name below example.com (a.example.com, a.b.example.com), not example.com itself
//   *                   any host name or address (special addresses still need a CIDR rule, see below)
//   10.0.0.0/8          addresses in that IPv4 or IPv6 network ("2001:db8::/32"); an address alone is a /32
//                       or /128 ("127.0.0.1", "::1", "[::1]")
//   <any of these>:443  only that port; an IPv6 address or network with a port is bracketed: "[::1]:8080",
//                       "[fd00::/8]:443". Without a port a rule allows every port.
//   *:443               any host, port 443 only
//
// Decision for destination host:port (host a name or an IP literal):
//   1. A name is resolved only when a name rule (exact, *.suffix or *) allows host:port, or some CIDR rule
//      allows the port (a CIDR rule can only be checked against addresses). Otherwise it is denied without
//      a DNS query, so a jail cannot leak data through lookups of names nobody allowed. NOTE: with a CIDR rule
//      for the port, any name is resolved.
//   2. Every resolved address A (an IP literal is its own only address; IPv4-mapped IPv6 counts as IPv4) must
//      be allowed: by the name rule of step 1, or by a CIDR rule containing A whose port matches.
//   3. Every A in a special range must also be named by a CIDR rule that contains A, matches the port and
//      lies wholly inside that special range ("127.0.0.3/32", "10.0.0.0/8"; not "0.0.0.0/0"). Special:
//      loopback 127/8 ::1, private 10/8 172.16/12 192.168/16 fc00::/7, link-local 169.254/16 (cloud
//      metadata 169.254.169.254) fe80::/10, "this network" 0/8, unspecified ::, CGNAT 100.64/10, IETF
//      192.0.0/24, benchmarking 198.18/15, multicast 224/4 ff00::/8, reserved 240/4 (and broadcast), site-local
//      fec0::/10, discard 100::/64, IPv4-compatible ::/96, and the NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
//      forms of the IPv4 ranges. A domain rule never allows a name that resolves into them (DNS rebinding).
//   4. Every A that is the host's own address must be named by a CIDR rule that contains A, matches the port
//      and lies wholly inside one of the host's own networks: 127.0.0.0/8, ::1, 0.0.0.0 and :: (all reach
//      the host), and each address of a local interface (a /32 or /128, so only a rule naming exactly that
//      address allows it) with, for IPv4, its subnet's network and broadcast addresses. The proxy reads them
//      with getifaddrs in its own network namespace (the host's) at most kHostAddressesMaxAge before each
//      decision, since addresses change. So neither "*:PORT", nor a domain resolving to the host, nor a wide
//      CIDR rule ("0.0.0.0/0", "10.0.0.0/8") reaches a service the host binds to 0.0.0.0 (the agent's own
//      health and metrics ports among them). If the addresses cannot be read, everything is refused.
//   5. Likewise every A inside an operator's deny network (AgentConfig.egress_deny_cidrs, EgressPolicy's
//      `deny`) must be named by a CIDR rule that contains A, matches the port and lies wholly inside it.
//   6. One failing address denies the destination (no partial answers). The proxy connects only to the
//      addresses it checked, in the resolver's order, and never resolves again.
//
// Protocol:
//   - CONNECT host:port HTTP/1.x: on success "HTTP/1.1 200 Connection established", then bytes are relayed
//     both ways with backpressure (at most 64 KiB buffered per direction) and half-closes passed on, until
//     both sides have closed, either side fails, or nothing moves for idle_timeout. Bytes the client sent
//     after the CONNECT request (before the 200) are kept and relayed.
//   - Nested CONNECT: until the first client bytes in a tunnel are known not to start (after any CR, LF, SP
//     or HT) with "CONNECT " (any case), nothing is forwarded. If they do, the tunnel is closed (with a 403
//     when no upstream byte reached the client yet) and audited as egress_nested_connect. NOTE: only the
//     first request in a tunnel is inspected; TLS tunnels (the usual case) are decided at the first byte.
//   - Plain HTTP: "METHOD http://host[:port]/path HTTP/1.x" (any method; port default 80). The request goes
//     upstream with an origin-form request line ("METHOD /path HTTP/1.x"), Host set from the URI, hop-by-hop
//     headers dropped (Connection and the headers it lists, Proxy-Connection, Keep-Alive, Proxy-Authorization,
//     Proxy-Authenticate, TE, Trailer, Upgrade) and "Connection: close" added. The body is framed by
//     Content-Length or chunked Transfer-Encoding and relayed as is; anything the client sends after it is
//     dropped. The response is relayed unparsed until the server closes. NOTE: one request per client
//     connection (no keep-alive): the connection closes after the response, which HTTP/1.1 clients handle.
//     "https://" URIs, origin-form and "*" targets are refused (clients use CONNECT for TLS).
//   - Strict parsing (the peer is hostile): CRLF line ends, no obs-fold, no whitespace before a header colon,
//     a Content-Length of digits only and consistent, not both Content-Length and Transfer-Encoding, host names
//     of [A-Za-z0-9_-] labels, no userinfo, no numeric names that are not canonical IP literals ("127.1").
//
// Ask rules (EgressProxyOptions.ask; same syntax): a destination that the allow rules refuse but the allow
// and ask rules together let through (steps 1-6 with both) is held for a human. The proxy keeps the client
// connection (nothing forwarded, no upstream connection, no timer: the human's deadline is the hook's) and
// calls the `ask_hook` with the destination, the ask rule, the call id and a summary ("CONNECT host:port", or
// "host:port" and the request line for plain HTTP). Its answer, from any thread, resumes the connection:
// approved: connected to the addresses already checked (never resolved again); rejected or timed out: 403
// naming the reason. Connections to the same destination (and rule) that arrive while one is held wait on
// the same question, and its answer applies to all of them: a browser opens several at once, a person
// should not be asked six times. At most max_pending_asks questions are open; past that a destination to ask
// about is refused (403 egress_denied). A client that closes (or half-closes: it is taken as gone) while
// held is dropped; when it was the last one waiting on its question, the question is withdrawn (ask_cancel)
// and its answer, if it comes, is ignored. A request's "default ASK"
// is the caller's to express as ask rules (the session adds the host's rules to the ask list), so that
// nothing outside them is ever asked about.
//
// Ceiling (EgressProxyOptions.ceiling): a session whose rules come from its request also has every
// destination checked against the host policy's rules (steps 1-6 again): the host's refusal refuses it,
// and a destination the host only asks about is asked about though a request rule allows it. So no request
// rule reaches what the host's rules do not, whatever the special-range and CIDR subtleties (the syntactic
// EgressRule::Covers check at Create is for a clear error, this one is the guarantee).
//
// Answers and audit events (EgressAudit.action; destination "host:port" when known; call_id from
// current_call_id() at the time of the event; rule: the rule that decided, see EgressPolicy::Verdict::rule):
//   -   egress_allowed         allow rules let it through (audited once per destination and tool call; more
//                              connections to it during the same call are not: a page loads dozens. At
//                              most kMaxAllowedAuditKeys such pairs are remembered; past that, allowed
//                              decisions are only counted in stats)
//   -   egress_asked           held for a human (request_id: the hook's id); once per question, not per
//                              connection waiting on it. Not audited when the hook answered at once (a
//                              session-scoped decision made earlier).
//   -   egress_approved        the human approved: the connections waiting connect
//   403 egress_rejected        the human (or the session ending) rejected it; the body names the action and
//                              the reason ("egress_rejected: ...")
//   403 egress_timed_out       nobody decided before the hook's deadline ("egress_timed_out: ...")
//   403 egress_denied          a rule decision said no (detail: why; "..., the host's own address ..." for
//                              step 4, "..., in egress_deny_cidrs ..." for step 5)
//   403 egress_nested_connect  a CONNECT inside a tunnel (or the tunnel is closed, see above)
//   400 egress_bad_request     malformed request, or a target that is not an absolute http:// URI (or
//                              authority for CONNECT), or a malformed chunked body (then just closed);
//   431                        headers over max_header_bytes; 408 headers not complete in header_timeout;
//   501                        a Transfer-Encoding other than chunked; 505 an HTTP version other than 1.0/1.1
//   502 egress_failed          the name did not resolve, or no checked address accepted a connection
//   504 egress_failed          resolving and connecting took longer than connect_timeout
//   503 egress_overloaded      max_connections are open; the extra connection gets a 503 and is closed.
//                              Audited once per overload episode (not per refused connection).
// Idle timeouts and peer resets are not audited. Every error answer carries "Connection: close" and a
// one-line text body naming the destination and the reason; the proxy then closes the connection (after
// reading and discarding what the client still sends, for at most a second, so the answer is not lost to
// a TCP reset).
//
// Threads: one epoll event loop thread owns every connection; a fixed pool of resolver threads runs
// `resolve` (getaddrinfo blocks). Nothing is detached; the destructor joins all of them.
#ifndef SBX_AGENT_EGRESS_EGRESS_PROXY_H_
#define SBX_AGENT_EGRESS_EGRESS_PROXY_H_

#include <sys/socket.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace sbx::agent {

// An IPv4 or IPv6 network: `address` (4 bytes used for IPv4) with host bits zero, and a prefix length.
struct IpNetwork {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> address{};
  int prefix_len = 0;

  // True when `family`/`bytes` (4 or 16 bytes) is inside this network.
  bool Contains(int other_family, const uint8_t* bytes) const;
  // True when every address of `other` is in this network.
  bool Covers(const IpNetwork& other) const;
  std::string ToString() const;  // "10.0.0.0/8", "fd00::/8"
};

// One allow rule. Build with ParseEgressRule.
struct EgressRule {
  enum class Kind {
    kAnyHost,     // "*"
    kDomain,      // "example.com": that name only
    kSubdomains,  // "*.example.com": names ending in ".example.com"
    kNetwork,     // "10.0.0.0/8", "127.0.0.1"
  };
  Kind kind = Kind::kAnyHost;
  std::string domain;            // kDomain, kSubdomains: lowercase, no trailing dot, no "*."
  IpNetwork network;             // kNetwork
  std::optional<uint16_t> port;  // nullopt: every port
  std::string text;              // as written, for messages

  // True when every destination `other` matches is matched by this rule too, by syntax (a request rule
  // under a host rule): a name under the same name, "*.suffix" (strictly below) or "*"; "*.sub" under
  // "*.suffix" (sub equal to or below suffix) or "*"; "*" under "*" only; a network under a network that
  // contains it (never under "*": a CIDR rule is what opens special ranges). Ports: a rule with a port under
  // one with the same port or none; a rule without a port only under one without.
  bool Covers(const EgressRule& other) const;
};

// Parses one rule (syntax in the file comment; surrounding whitespace ignored). Errors are InvalidArgument
// naming the rule text and what is wrong with it.
absl::StatusOr<EgressRule> ParseEgressRule(std::string_view text);

// Parses each of `texts`; the first error is returned.
absl::StatusOr<std::vector<EgressRule>> ParseEgressRules(const std::vector<std::string>& texts);

// Parses an IPv4 or IPv6 network ("10.0.0.0/8", "fd00::/8"; an address alone is a /32 or /128) without a
// port, e.g. an AgentConfig.egress_deny_cidrs entry. InvalidArgument names the text and the problem.
absl::StatusOr<IpNetwork> ParseIpNetwork(std::string_view text);

// The host's own networks in the calling thread's network namespace (step 4 of the file comment):
// 127.0.0.0/8, ::1/128, 0.0.0.0/32, ::/128, every local interface address as a /32 or /128, and for each
// IPv4 interface address with a prefix shorter than /31 its subnet's network and broadcast addresses.
absl::StatusOr<std::vector<IpNetwork>> ReadHostNetworks();

// How old the proxy's copy of ReadHostNetworks may be when it decides.
inline constexpr std::chrono::milliseconds kHostAddressesMaxAge{250};

// The rule decision (steps 1-6 of the file comment), separate from the proxy so it can be tested and reused.
// Immutable and thread-safe.
class EgressPolicy {
 public:
  // `deny`: networks refused unless a CIDR rule inside them names the address (step 5). `ask`: rules that
  // make a destination the allow rules refuse one to ask a human about (see "Ask rules").
  explicit EgressPolicy(std::vector<EgressRule> allow, std::vector<IpNetwork> deny = {},
                        std::vector<EgressRule> ask = {});

  // Outcome of a check: allowed, to ask about, or denied with a one-line reason naming the host, port or
  // address.
  struct Verdict {
    bool allowed = false;
    bool ask = false;  // not allowed, but an ask rule lets it through once a human approves
    std::string reason;
    // The rule that decided, as written: the allow (or, with `ask`, the ask) rule that matched the name, or
    // else the CIDR rule that matched the first address. Denied: "default deny" when no rule matched, else
    // what refused it ("special range 10.0.0.0/8", "host address", "egress_deny_cidrs 10.0.0.0/8").
    std::string rule;
  };

  // Step 1: whether `host` (normalized: lowercase, no trailing dot; not an IP literal) may be resolved for
  // `port` (by the allow and ask rules).
  Verdict MayResolve(std::string_view host, uint16_t port) const;
  // Steps 2-6 for `host` (a normalized name, or an IP literal's text when `host_is_address`) and the
  // addresses it resolved to (ports ignored). `host_networks` are the host's own (ReadHostNetworks; the
  // proxy passes them, a pure test may pass any). An empty `addresses` is denied. The ask rules are consulted
  // only when the allow rules refuse.
  Verdict Check(std::string_view host, bool host_is_address, uint16_t port,
                const std::vector<sockaddr_storage>& addresses,
                const std::vector<IpNetwork>& host_networks = {}) const;

 private:
  // Steps 2-6 with `rules` only.
  Verdict CheckWith(const std::vector<EgressRule>& rules, std::string_view host, bool host_is_address, uint16_t port,
                    const std::vector<sockaddr_storage>& addresses, const std::vector<IpNetwork>& host_networks) const;
  std::vector<EgressRule> allow_;
  std::vector<IpNetwork> deny_;
  std::vector<EgressRule> ask_;
  std::vector<EgressRule> all_;  // allow_ then ask_
};

// One refused or failed request, for the session's audit events (session.proto Audit).
struct EgressAudit {
  std::string destination;  // "host:port" ("[v6]:port"), or empty when the request named none
  std::string action;       // egress_allowed, egress_denied, egress_asked, egress_approved, egress_rejected,
                            // egress_timed_out, egress_nested_connect, egress_bad_request, egress_failed,
                            // egress_overloaded
  std::string detail;       // why, one line
  std::string call_id;      // current_call_id() when it happened (for an answer: when it was asked); may be empty
  std::string rule;         // the rule that decided (Verdict::rule); empty when no rule was involved
  std::string request_id;   // asked / approved / rejected / timed out: the ask hook's request id
};

// What the ask hook is asked.
struct EgressAsk {
  std::string destination;  // "host:port"
  std::string rule;         // the ask rule, as written
  std::string call_id;      // current_call_id() when the connection was held; may be empty
  std::string summary;      // for a person: "CONNECT host:port", or "host:port: GET http://host/path HTTP/1.1"
};

// The hook's answer.
struct EgressAnswer {
  enum class Decision { kApproved, kRejected, kTimedOut };
  Decision decision = Decision::kRejected;
  std::string reason;  // rejected / timed out: why, for the 403 body and the audit detail
};
using EgressAnswerFn = std::function<void(EgressAnswer)>;

// The host policy's rules a request's rules must stay inside (see "Ceiling").
struct EgressCeiling {
  std::vector<EgressRule> allow;
  std::vector<EgressRule> ask;
};

// Distinct (destination, call id) pairs whose egress_allowed audit the proxy remembers (see the audit list).
inline constexpr size_t kMaxAllowedAuditKeys = 4096;

struct EgressProxyOptions {
  std::vector<EgressRule> allow;
  // Destinations held for a human (see "Ask rules"); needs `ask_hook`, else they are refused.
  std::vector<EgressRule> ask;
  // The host's rules over request rules (see "Ceiling"); unset: `allow` and `ask` are the host's own.
  std::optional<EgressCeiling> ceiling;
  // Asks a human about a held destination; returns the request's id (for the audit events) and calls
  // `done` exactly once, from any thread (also before it returns, for a decision made earlier), even after
  // the proxy is gone (then it is ignored). Runs on the event loop thread: must not block.
  std::function<std::string(const EgressAsk&, EgressAnswerFn done)> ask_hook;
  // Optional: called with a question's request id when every connection waiting on it has gone (the client
  // closed), so the human is not left deciding for nobody (Approvals::Cancel). Runs on the event loop
  // thread; the question's answer, if it still comes, is ignored.
  std::function<void(const std::string& request_id)> ask_cancel;
  // Questions open at once at most (see "Ask rules").
  size_t max_pending_asks = 32;
  // The operator's off-limits networks (AgentConfig.egress_deny_cidrs; step 5).
  std::vector<IpNetwork> deny;
  // Resolves a host name (never an IP literal) to addresses; ports in the result are ignored. Runs on the
  // resolver threads, up to `resolver_threads` calls at once. Default: getaddrinfo (AF_UNSPEC) in the
  // namespace of the thread that called Start. An error or an empty result answers 502.
  std::function<absl::StatusOr<std::vector<sockaddr_storage>>(const std::string& host)> resolve;
  // Called on the event loop thread for each audit event; must not block for long, nor destroy the proxy.
  std::function<void(const EgressAudit&)> audit;
  // The tool call to blame, asked on the event loop thread when an audit event is made. May be empty.
  std::function<std::string()> current_call_id;

  // Open client connections at most; more are answered 503 and closed.
  size_t max_connections = 256;
  // Resolver threads (each blocked lookup holds one).
  size_t resolver_threads = 4;
  // From the end of the request header to an established upstream connection (resolve + connect): 504 after.
  std::chrono::milliseconds connect_timeout{10000};
  // A tunnel or relayed response in which no byte moves either way for this long is closed.
  std::chrono::milliseconds idle_timeout{300000};
  // From accept to a complete request header (slowloris): 408 after.
  std::chrono::milliseconds header_timeout{30000};
  // A request header (request line, headers, blank line) larger than this: 431.
  size_t max_header_bytes = 64 << 10;

  // Tests only; leave unset. Maps an address that passed the decision to the one actually connected to, so
  // a test's fake resolver can hand out public (TEST-NET) addresses while its servers listen on loopback.
  // The decision itself is unchanged.
  std::function<sockaddr_storage(const sockaddr_storage&)> connect_address_for_testing;
};

// The proxy: accepts on the listening socket it is given until destroyed. Owns the socket, every client and
// upstream connection, and its threads.
class EgressProxy {
 public:
  // Starts serving `listen_fd` (a listening TCP socket; made non-blocking). InvalidArgument when it is not
  // one or an option is out of range; errors from epoll/eventfd otherwise.
  static absl::StatusOr<std::unique_ptr<EgressProxy>> Start(UniqueFd listen_fd, EgressProxyOptions options);
  // Stops accepting, closes every connection, joins every thread. NOTE: waits for resolver calls in
  // progress (getaddrinfo cannot be interrupted; its own timeouts bound it).
  ~EgressProxy();
  EgressProxy(const EgressProxy&) = delete;
  EgressProxy& operator=(const EgressProxy&) = delete;

  struct Stats {
    uint64_t allowed = 0;       // requests let through to a connected upstream
    uint64_t denied = 0;        // egress_denied + egress_nested_connect
    uint64_t failed = 0;        // egress_failed (502/504)
    uint64_t bad_requests = 0;  // egress_bad_request
    uint64_t overloaded = 0;    // connections refused past max_connections
    uint64_t asked = 0;         // questions put to the ask hook
    uint64_t approved = 0;      // connections let through by an approval
    uint64_t rejected = 0;      // connections refused by a rejection or a timeout (also in `denied`)
    uint64_t bytes_up = 0;      // bytes written to upstreams (request headers included)
    uint64_t bytes_down = 0;    // bytes from upstreams written to clients (the proxy's own answers excluded)
    uint64_t active = 0;        // client connections open now
  };
  // A snapshot; callable from any thread.
  Stats stats() const;

  class Impl;

 private:
  explicit EgressProxy(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_EGRESS_EGRESS_PROXY_H_
