// The egress rules and their decision (egress_proxy.h, "Rules" and "Decision"): ParseEgressRule and
// EgressPolicy. The address helpers they use are in ip_util.h.
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/egress/egress_proxy.h"
#include "agent/egress/ip_util.h"
#include "base/status.h"
#include "net/http1_parser.h"

namespace sbx::agent {

using egress_internal::FirstSpecialRange;
using egress_internal::Ip;
using egress_internal::IpFromSockaddr;
using egress_internal::MakeNetwork;
using egress_internal::MaxPrefix;
using egress_internal::SpecialRange;
using egress_internal::SpecialRanges;
using http1::HostPort;
using http1::IpToString;
using http1::IsDigits;
using http1::NormalizeName;
using http1::ParseIp;
using http1::ParsePort;
using http1::Printable;

namespace {

// An InvalidArgument naming the rule as written and what is wrong with it.
absl::Status RuleError(std::string_view text, std::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("egress rule \"", Printable(text), "\": ", ToAbsl(problem)));
}

std::string_view TrimSpace(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

// A rule's text split at its port: "host", "host:port", "[v6]", "[v6]:port", or IPv6 without brackets.
struct RuleParts {
  std::string_view host;
  std::optional<std::string_view> port;
  bool bracketed = false;
};

// Splits `s` (trimmed, not empty) into host and port; `text` is the rule as written, for errors.
absl::StatusOr<RuleParts> SplitHostPort(std::string_view s, std::string_view text) {
  RuleParts parts;
  if (s[0] == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) return RuleError(text, "unclosed '['");
    parts.bracketed = true;
    parts.host = s.substr(1, close - 1);
    const std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return RuleError(text, "unexpected text after ']'");
      parts.port = rest.substr(1);
    }
  } else if (std::count(s.begin(), s.end(), ':') >= 2) {
    parts.host = s;  // IPv6 without a port
  } else if (const size_t colon = s.find(':'); colon != std::string_view::npos) {
    parts.host = s.substr(0, colon);
    parts.port = s.substr(colon + 1);
  } else {
    parts.host = s;
  }
  return parts;
}

// Whether `host` is written as an address or network (a CIDR rule) rather than a name.
bool IsNetworkHost(std::string_view host, bool bracketed) {
  return host.find('/') != std::string_view::npos || ParseIp(host, /*allow_v4=*/!bracketed).has_value();
}

// Fills `rule` (kNetwork) from `host`: an address, or an address and a prefix length after '/'.
absl::Status ParseNetworkRule(std::string_view text, std::string_view host, bool bracketed, EgressRule* rule) {
  const bool has_slash = host.find('/') != std::string_view::npos;
  std::string_view address_text = host;
  int prefix = -1;
  std::string_view len;
  if (has_slash) {
    const size_t slash = host.find('/');
    address_text = host.substr(0, slash);
    len = host.substr(slash + 1);
  }
  std::optional<Ip> ip = ParseIp(address_text, /*allow_v4=*/!bracketed);
  if (!ip) return RuleError(text, absl::StrCat("\"", Printable(address_text), "\" is not an IP address"));
  if (has_slash) {
    if (!IsDigits(len) || len.size() > 3)
      return RuleError(text, absl::StrCat("prefix length \"", Printable(len), "\" is not a number"));
    prefix = std::stoi(std::string(len));
  }
  // An IPv4-mapped network ("::ffff:10.0.0.0/104") is taken as the IPv4 network it maps.
  const bool mapped = ip->family == AF_INET && address_text.find(':') != std::string_view::npos;
  if (mapped && prefix >= 0) {
    if (prefix < 96) return RuleError(text, "an IPv4-mapped network needs a prefix of at least 96");
    prefix -= 96;
  }
  if (prefix < 0) prefix = MaxPrefix(ip->family);
  if (prefix > MaxPrefix(ip->family)) {
    return RuleError(text, absl::StrCat("prefix length ", prefix, " is longer than ", MaxPrefix(ip->family)));
  }
  IpNetwork network = MakeNetwork(*ip, prefix);
  if (network.address != ip->bytes) {
    return RuleError(text, absl::StrCat("address has bits set past the /", prefix, " prefix (did you mean ",
                                        network.ToString(), "?)"));
  }
  rule->kind = EgressRule::Kind::kNetwork;
  rule->network = network;
  return absl::OkStatus();
}

// Fills `rule` (kDomain or kSubdomains) from a host name, "*." for the names below it.
absl::Status ParseNameRule(std::string_view text, std::string_view host, EgressRule* rule) {
  std::string_view name = host;
  rule->kind = EgressRule::Kind::kDomain;
  if (name.size() >= 2 && name.substr(0, 2) == "*.") {
    rule->kind = EgressRule::Kind::kSubdomains;
    name.remove_prefix(2);
  }
  if (name.find('*') != std::string_view::npos) {
    return RuleError(text, "'*' is allowed only as the whole host or as a leading \"*.\" label");
  }
  absl::StatusOr<std::string> normalized = NormalizeName(name);
  if (!normalized.ok()) return RuleError(text, std::string(normalized.status().message()));
  rule->domain = *std::move(normalized);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EgressRule> ParseEgressRule(std::string_view text) {
  const std::string_view s = TrimSpace(text);
  if (s.empty()) return RuleError(text, "empty rule");
  EgressRule rule;
  rule.text = std::string(s);
  ASSIGN_OR_RETURN(const RuleParts parts, SplitHostPort(s, text));
  if (parts.port) {
    std::optional<uint16_t> p = ParsePort(*parts.port);
    if (!p) return RuleError(text, absl::StrCat("port \"", Printable(*parts.port), "\" is not a number from 1 to 65535"));
    rule.port = p;
  }
  if (parts.host.empty()) return RuleError(text, "no host");
  if (parts.host == "*") {
    if (parts.bracketed) return RuleError(text, "'[...]' must hold an IPv6 address or network");
    rule.kind = EgressRule::Kind::kAnyHost;
    return rule;
  }
  if (IsNetworkHost(parts.host, parts.bracketed)) {
    RETURN_IF_ERROR(ParseNetworkRule(text, parts.host, parts.bracketed, &rule));
    return rule;
  }
  if (parts.bracketed) return RuleError(text, "'[...]' must hold an IPv6 address or network");
  RETURN_IF_ERROR(ParseNameRule(text, parts.host, &rule));
  return rule;
}

absl::StatusOr<std::vector<EgressRule>> ParseEgressRules(const std::vector<std::string>& texts) {
  std::vector<EgressRule> rules;
  for (const std::string& text : texts) {
    ASSIGN_OR_RETURN(EgressRule rule, ParseEgressRule(text));
    rules.push_back(std::move(rule));
  }
  return rules;
}

absl::StatusOr<IpNetwork> ParseIpNetwork(std::string_view text) {
  absl::StatusOr<EgressRule> rule = ParseEgressRule(text);
  if (!rule.ok() || rule->kind != EgressRule::Kind::kNetwork || rule->port) {
    return absl::InvalidArgumentError(absl::StrCat("\"", Printable(text),
                                                   "\" is not an IP network (\"10.0.0.0/8\", \"fd00::/8\", "
                                                   "\"192.0.2.1\"; no port)"));
  }
  return rule->network;
}

EgressPolicy::EgressPolicy(std::vector<EgressRule> allow, std::vector<IpNetwork> deny, std::vector<EgressRule> ask)
    : allow_(std::move(allow)), deny_(std::move(deny)), ask_(std::move(ask)) {
  all_ = allow_;
  all_.insert(all_.end(), ask_.begin(), ask_.end());
}

namespace {
bool PortMatches(const EgressRule& r, uint16_t port) { return !r.port || *r.port == port; }

// The first name rule (exact, *.suffix or *) in `rules` matching host:port, or nullptr.
const EgressRule* NameRule(const std::vector<EgressRule>& rules, std::string_view host, bool host_is_address,
                           uint16_t port) {
  for (const EgressRule& r : rules) {
    if (!PortMatches(r, port)) continue;
    switch (r.kind) {
      case EgressRule::Kind::kAnyHost:
        return &r;
      case EgressRule::Kind::kDomain:
        if (!host_is_address && host == r.domain) return &r;
        break;
      case EgressRule::Kind::kSubdomains:
        if (!host_is_address && host.size() > r.domain.size() + 1 && host.ends_with(r.domain) &&
            host[host.size() - r.domain.size() - 1] == '.') {
          return &r;
        }
        break;
      case EgressRule::Kind::kNetwork:
        break;
    }
  }
  return nullptr;
}

// The first CIDR rule in `rules` matching `port` and containing the address, or nullptr.
const EgressRule* NetworkRule(const std::vector<EgressRule>& rules, const Ip& ip, uint16_t port) {
  for (const EgressRule& r : rules) {
    if (r.kind == EgressRule::Kind::kNetwork && PortMatches(r, port) && r.network.Contains(ip.family, ip.data())) {
      return &r;
    }
  }
  return nullptr;
}

// Whether a CIDR rule in `rules` matching `port` contains the address and lies wholly inside one of `ranges`
// that contains it.
bool NamedInside(const std::vector<EgressRule>& rules, int family, const uint8_t* bytes, uint16_t port,
                 const std::vector<IpNetwork>& ranges) {
  for (const EgressRule& r : rules) {
    if (r.kind != EgressRule::Kind::kNetwork || !PortMatches(r, port) || !r.network.Contains(family, bytes)) continue;
    for (const IpNetwork& range : ranges) {
      if (range.Contains(family, bytes) && range.Covers(r.network)) return true;
    }
  }
  return false;
}
}  // namespace

bool EgressRule::Covers(const EgressRule& other) const {
  if (port && other.port != port) return false;  // a port rule covers only rules with that same port
  switch (kind) {
    case Kind::kAnyHost:
      return other.kind != Kind::kNetwork;
    case Kind::kDomain:
      return other.kind == Kind::kDomain && other.domain == domain;
    case Kind::kSubdomains: {
      if (other.kind != Kind::kDomain && other.kind != Kind::kSubdomains) return false;
      const std::string& d = other.domain;
      if (other.kind == Kind::kSubdomains && d == domain) return true;  // *.x under *.x
      return d.size() > domain.size() + 1 && d.ends_with(domain) && d[d.size() - domain.size() - 1] == '.';
    }
    case Kind::kNetwork:
      return other.kind == Kind::kNetwork && network.Covers(other.network);
  }
  return false;
}

EgressPolicy::Verdict EgressPolicy::MayResolve(std::string_view host, uint16_t port) const {
  if (NameRule(all_, host, false, port) != nullptr) return {true, false, "", ""};
  for (const EgressRule& r : all_) {
    if (r.kind == EgressRule::Kind::kNetwork && PortMatches(r, port)) return {true, false, "", ""};
  }
  return {false, false, absl::StrCat("no allow rule matches ", HostPort(host, port)), "default deny"};
}

EgressPolicy::Verdict EgressPolicy::Check(std::string_view host, bool host_is_address, uint16_t port,
                                          const std::vector<sockaddr_storage>& addresses,
                                          const std::vector<IpNetwork>& host_networks) const {
  Verdict v = CheckWith(allow_, host, host_is_address, port, addresses, host_networks);
  if (v.allowed || ask_.empty()) return v;
  Verdict with_ask = CheckWith(all_, host, host_is_address, port, addresses, host_networks);
  if (!with_ask.allowed) {
    // Refused with the ask rules too: say why in their terms (a special range is the reason, not a missing
    // allow rule), unless no rule matched at all.
    return with_ask.rule == "default deny" ? v : with_ask;
  }
  // Allowed only with an ask rule: name the ask rule that matched (the name, else the first address that an
  // allow rule does not already cover).
  with_ask.allowed = false;
  with_ask.ask = true;
  with_ask.reason = absl::StrCat(HostPort(host, port), " needs a human's approval");
  if (const EgressRule* r = NameRule(ask_, host, host_is_address, port)) {
    with_ask.rule = r->text;
  } else {
    for (const sockaddr_storage& ss : addresses) {
      const Ip ip = *IpFromSockaddr(ss);
      if (NetworkRule(allow_, ip, port) != nullptr) continue;
      if (const EgressRule* n = NetworkRule(ask_, ip, port)) {
        with_ask.rule = n->text;
        break;
      }
    }
  }
  return with_ask;
}

EgressPolicy::Verdict EgressPolicy::CheckWith(const std::vector<EgressRule>& rules, std::string_view host,
                                              bool host_is_address, uint16_t port,
                                              const std::vector<sockaddr_storage>& addresses,
                                              const std::vector<IpNetwork>& host_networks) const {
  const std::string dest = HostPort(host, port);
  if (addresses.empty()) return {false, false, absl::StrCat(ToAbsl(host), " has no address"), "default deny"};
  const EgressRule* name_rule = NameRule(rules, host, host_is_address, port);
  std::string rule = name_rule != nullptr ? name_rule->text : "";
  for (const sockaddr_storage& ss : addresses) {
    const std::optional<Ip> ip = IpFromSockaddr(ss);
    if (!ip) {
      return {false, false, absl::StrCat(ToAbsl(host), " resolves to an address that is not IPv4 or IPv6"),
              "default deny"};
    }
    const std::string subject =
        host_is_address ? IpToString(*ip) : absl::StrCat(ToAbsl(host), " resolves to ", IpToString(*ip));
    const EgressRule* network_rule = NetworkRule(rules, *ip, port);
    if (name_rule == nullptr && network_rule == nullptr) {
      if (host_is_address) return {false, false, absl::StrCat("no allow rule matches ", dest), "default deny"};
      return {false, false, absl::StrCat(subject, ", which no allow rule matches on port ", port), "default deny"};
    }
    if (rule.empty()) rule = network_rule->text;
    const SpecialRange* special = FirstSpecialRange(*ip);
    if (special == nullptr) continue;
    bool named = false;
    for (const EgressRule& r : rules) {
      if (r.kind != EgressRule::Kind::kNetwork || !PortMatches(r, port) ||
          !r.network.Contains(ip->family, ip->data())) {
        continue;
      }
      for (const SpecialRange& range : SpecialRanges()) {
        if (range.network.Contains(ip->family, ip->data()) && range.network.Covers(r.network)) named = true;
      }
    }
    if (!named) {
      return {false, false,
              absl::StrCat(subject, ", ", special->what, " (", special->network.ToString(),
                           "), which only a CIDR rule inside that range can allow"),
              absl::StrCat("special range ", special->network.ToString())};
    }
  }
  // Steps 4 and 5, after the special ranges so their (more specific) reasons come first.
  for (const sockaddr_storage& ss : addresses) {
    const Ip ip = *IpFromSockaddr(ss);
    const std::string subject =
        host_is_address ? IpToString(ip) : absl::StrCat(ToAbsl(host), " resolves to ", IpToString(ip));
    const bool own = std::any_of(host_networks.begin(), host_networks.end(),
                                 [&](const IpNetwork& n) { return n.Contains(ip.family, ip.data()); });
    if (own && !NamedInside(rules, ip.family, ip.data(), port, host_networks)) {
      return {false, false,
              absl::StrCat(subject, ", the host's own address, which only a CIDR rule naming that address"
                                    " can allow (e.g. \"", IpToString(ip), "\")"),
              "host address"};
    }
    for (const IpNetwork& d : deny_) {
      if (d.Contains(ip.family, ip.data()) && !NamedInside(rules, ip.family, ip.data(), port, deny_)) {
        return {false, false,
                absl::StrCat(subject, ", in egress_deny_cidrs (", d.ToString(),
                             "), which only a CIDR rule inside that network can allow"),
                absl::StrCat("egress_deny_cidrs ", d.ToString())};
      }
    }
  }
  return {true, false, "", rule};
}

}  // namespace sbx::agent
