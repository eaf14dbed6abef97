#include "agent/egress/ip_util.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent {
namespace egress_internal {

using http1::IpToString;
using http1::ParseIp;

std::optional<Ip> IpFromSockaddr(const sockaddr_storage& ss) {
  Ip ip;
  if (ss.ss_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(ss);
    ip.family = AF_INET;
    std::memcpy(ip.bytes.data(), &sin.sin_addr, 4);
    return ip;
  }
  if (ss.ss_family == AF_INET6) {
    const auto& sin6 = reinterpret_cast<const sockaddr_in6&>(ss);
    if (IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) {
      ip.family = AF_INET;
      std::memcpy(ip.bytes.data(), sin6.sin6_addr.s6_addr + 12, 4);
    } else {
      ip.family = AF_INET6;
      std::memcpy(ip.bytes.data(), sin6.sin6_addr.s6_addr, 16);
    }
    return ip;
  }
  return std::nullopt;
}

sockaddr_storage SockaddrFromIp(const Ip& ip, uint16_t port) {
  sockaddr_storage ss{};
  if (ip.family == AF_INET) {
    auto& sin = reinterpret_cast<sockaddr_in&>(ss);
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    std::memcpy(&sin.sin_addr, ip.data(), 4);
  } else {
    auto& sin6 = reinterpret_cast<sockaddr_in6&>(ss);
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    std::memcpy(&sin6.sin6_addr, ip.data(), 16);
  }
  return ss;
}

socklen_t SockaddrLen(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

bool PrefixEqual(const uint8_t* a, const uint8_t* b, int bits) {
  const int whole = bits / 8;
  if (std::memcmp(a, b, whole) != 0) return false;
  const int rest = bits % 8;
  if (rest == 0) return true;
  const uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

int MaxPrefix(int family) { return family == AF_INET ? 32 : 128; }

// ---- special address ranges

IpNetwork MakeNetwork(const Ip& ip, int prefix) {
  IpNetwork n;
  n.family = ip.family;
  n.prefix_len = prefix;
  const int whole = prefix / 8;
  for (int i = 0; i < 16; ++i) {
    if (i < whole) {
      n.address[i] = ip.bytes[i];
    } else if (i == whole && prefix % 8 != 0) {
      n.address[i] = static_cast<uint8_t>(ip.bytes[i] & (0xff << (8 - prefix % 8)));
    }
  }
  if (ip.family == AF_INET) std::fill(n.address.begin() + 4, n.address.end(), 0);
  return n;
}

const std::vector<SpecialRange>& SpecialRanges() {
  static const std::vector<SpecialRange>* const kRanges = [] {
    struct Entry {
      const char* net;
      int prefix;
      const char* what;
    };
    // IPv4 first, then IPv6: the NAT64 and 6to4 forms below follow every IPv4 range.
    static constexpr Entry kRanges[] = {
        {"169.254.169.254", 32, "the cloud metadata address"},
        {"0.0.0.0", 8, "a 'this network' address"},
        {"10.0.0.0", 8, "a private address"},
        {"100.64.0.0", 10, "a carrier-grade NAT address"},
        {"127.0.0.0", 8, "a loopback address"},
        {"169.254.0.0", 16, "a link-local address"},
        {"172.16.0.0", 12, "a private address"},
        {"192.0.0.0", 24, "an IETF protocol address"},
        {"192.168.0.0", 16, "a private address"},
        {"198.18.0.0", 15, "a benchmarking address"},
        {"224.0.0.0", 4, "a multicast address"},
        {"240.0.0.0", 4, "a reserved address"},
        {"::", 128, "the unspecified address"},
        {"::1", 128, "a loopback address"},
        {"::", 96, "an IPv4-compatible address"},
        {"100::", 64, "a discard address"},
        {"fc00::", 7, "a unique local (private) address"},
        {"fe80::", 10, "a link-local address"},
        {"fec0::", 10, "a site-local address"},
        {"ff00::", 8, "a multicast address"},
    };
    auto* ranges = new std::vector<SpecialRange>;
    for (const Entry& e : kRanges) ranges->push_back({MakeNetwork(*ParseIp(e.net), e.prefix), e.what});
    // The NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) forms of each IPv4 range.
    const Ip nat64 = *ParseIp("64:ff9b::");
    const Ip six_to_four = *ParseIp("2002::");
    for (const Entry& e : kRanges) {
      const Ip v4 = *ParseIp(e.net);
      if (v4.family != AF_INET) continue;
      Ip a = nat64;
      std::memcpy(a.bytes.data() + 12, v4.data(), 4);
      ranges->push_back({MakeNetwork(a, 96 + e.prefix), absl::StrCat("the NAT64 form of ", e.what)});
      Ip b = six_to_four;
      std::memcpy(b.bytes.data() + 2, v4.data(), 4);
      ranges->push_back({MakeNetwork(b, 16 + e.prefix), absl::StrCat("the 6to4 form of ", e.what)});
    }
    return ranges;
  }();
  return *kRanges;
}

const SpecialRange* FirstSpecialRange(const Ip& ip) {
  for (const SpecialRange& r : SpecialRanges()) {
    if (r.network.Contains(ip.family, ip.data())) return &r;
  }
  return nullptr;
}


absl::StatusOr<std::vector<sockaddr_storage>> GetAddrInfo(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc == EAI_SYSTEM) return ErrnoToStatus(errno, absl::StrCat("resolving ", host));
  if (rc != 0) return absl::UnavailableError(absl::StrCat("resolving ", host, ": ", gai_strerror(rc)));
  std::vector<sockaddr_storage> out;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    out.push_back(ss);
  }
  freeaddrinfo(res);
  return out;
}

}  // namespace egress_internal

using egress_internal::Ip;
using egress_internal::IpFromSockaddr;
using egress_internal::MakeNetwork;
using egress_internal::MaxPrefix;
using egress_internal::PrefixEqual;
using http1::IpToString;
using http1::ParseIp;

bool IpNetwork::Contains(int other_family, const uint8_t* bytes) const {
  return other_family == family && PrefixEqual(address.data(), bytes, prefix_len);
}

bool IpNetwork::Covers(const IpNetwork& other) const {
  return other.family == family && other.prefix_len >= prefix_len && Contains(other.family, other.address.data());
}

std::string IpNetwork::ToString() const {
  Ip ip;
  ip.family = family;
  ip.bytes = address;
  return absl::StrCat(IpToString(ip), "/", prefix_len);
}

absl::StatusOr<std::vector<IpNetwork>> ReadHostNetworks() {
  std::vector<IpNetwork> out = {MakeNetwork(*ParseIp("127.0.0.0"), 8), MakeNetwork(*ParseIp("::1"), 128),
                                MakeNetwork(*ParseIp("0.0.0.0"), 32), MakeNetwork(*ParseIp("::"), 128)};
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return ErrnoToStatus(errno, "getifaddrs");
  for (const ifaddrs* ifa = list; ifa != nullptr; ifa = ifa->ifa_next) {
    if (ifa->ifa_addr == nullptr) continue;
    const int family = ifa->ifa_addr->sa_family;
    if (family != AF_INET && family != AF_INET6) continue;
    sockaddr_storage ss{};
    std::memcpy(&ss, ifa->ifa_addr, family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
    const std::optional<Ip> ip = IpFromSockaddr(ss);
    if (!ip) continue;
    out.push_back(MakeNetwork(*ip, MaxPrefix(ip->family)));
    if (ip->family != AF_INET || ifa->ifa_netmask == nullptr) continue;
    // The subnet's network and broadcast addresses reach the host too (as far as TCP gets to them at all).
    uint32_t mask = 0, addr = 0;
    std::memcpy(&mask, &reinterpret_cast<const sockaddr_in*>(ifa->ifa_netmask)->sin_addr, 4);
    std::memcpy(&addr, ip->data(), 4);
    mask = ntohl(mask);
    addr = ntohl(addr);
    if (mask == 0xffffffffu || mask == 0xfffffffeu) continue;  // /32 and /31 have neither
    for (const uint32_t edge : {addr & mask, addr | ~mask}) {
      Ip e;
      e.family = AF_INET;
      const uint32_t be = htonl(edge);
      std::memcpy(e.bytes.data(), &be, 4);
      out.push_back(MakeNetwork(e, 32));
    }
  }
  freeifaddrs(list);
  return out;
}

}  // namespace sbx::agent
