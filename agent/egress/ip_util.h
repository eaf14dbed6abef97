// Address helpers of the egress proxy and its rules: sockaddr <-> http1::Ip, prefix arithmetic, the special
// address ranges (egress_proxy.h, step 3) and the default resolver. Internal to agent/egress; the public
// pieces (IpNetwork, ReadHostNetworks) are declared in egress_proxy.h.
#ifndef SBX_AGENT_EGRESS_IP_UTIL_H_
#define SBX_AGENT_EGRESS_IP_UTIL_H_

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "agent/egress/egress_proxy.h"
#include "net/http1_parser.h"

namespace sbx::agent::egress_internal {

using http1::Ip;

// The address of an AF_INET or AF_INET6 sockaddr (IPv4-mapped IPv6 as IPv4); nullopt for other families.
std::optional<Ip> IpFromSockaddr(const sockaddr_storage& ss);
// A sockaddr for `ip` and `port`.
sockaddr_storage SockaddrFromIp(const Ip& ip, uint16_t port);
// The length connect(2) wants for `ss`.
socklen_t SockaddrLen(const sockaddr_storage& ss);
// Whether the first `bits` bits of `a` and `b` are equal.
bool PrefixEqual(const uint8_t* a, const uint8_t* b, int bits);
// 32 for AF_INET, 128 for AF_INET6.
int MaxPrefix(int family);
// The network of `prefix` bits around `ip` (host bits cleared).
IpNetwork MakeNetwork(const Ip& ip, int prefix);

// A range only a CIDR rule inside it can open (egress_proxy.h, step 3).
struct SpecialRange {
  IpNetwork network;
  std::string what;  // "a private address"
};
// Every special range, most specific first, so the first match names the address best.
const std::vector<SpecialRange>& SpecialRanges();
// The first special range containing `ip`, or nullptr.
const SpecialRange* FirstSpecialRange(const Ip& ip);

// The default EgressProxyOptions::resolve: getaddrinfo (AF_UNSPEC, SOCK_STREAM).
absl::StatusOr<std::vector<sockaddr_storage>> GetAddrInfo(const std::string& host);

}  // namespace sbx::agent::egress_internal

#endif  // SBX_AGENT_EGRESS_IP_UTIL_H_
