#include "net/http1_parser.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent::http1 {

// ---------------------------------------------------------------------------------------------------------
// Hosts and text

// Parses a canonical IPv4 (dotted quad) or IPv6 literal; IPv4-mapped IPv6 becomes IPv4.
std::optional<Ip> ParseIp(std::string_view text, bool allow_v4, bool allow_v6) {
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  const std::string s(text);
  Ip ip;
  if (allow_v4 && inet_pton(AF_INET, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = AF_INET;
    return ip;
  }
  in6_addr a6;
  if (allow_v6 && inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_V4MAPPED(&a6)) {
      ip.family = AF_INET;
      std::memcpy(ip.bytes.data(), a6.s6_addr + 12, 4);
    } else {
      ip.family = AF_INET6;
      std::memcpy(ip.bytes.data(), a6.s6_addr, 16);
    }
    return ip;
  }
  return std::nullopt;
}

std::string IpToString(const Ip& ip) {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(ip.family, ip.data(), buf, sizeof(buf));
  return buf;
}

// "host:port", with an IPv6 literal in brackets.
std::string HostPort(std::string_view host, uint16_t port) {
  if (host.find(':') != std::string_view::npos) return absl::StrCat("[", ToAbsl(host), "]:", port);
  return absl::StrCat(ToAbsl(host), ":", port);
}

// Text from a peer or a rule, made safe for a one-line message: printable ASCII, the rest \xNN, truncated.
std::string Printable(std::string_view text, size_t max) {
  std::string out;
  for (size_t i = 0; i < text.size() && out.size() < max; ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (out.size() >= max) out += "...";
  return out;
}

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (Lower(a[i]) != Lower(b[i])) return false;
  }
  return true;
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

bool IsDigits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// A port: 1 to 65535, decimal digits only.
std::optional<uint16_t> ParsePort(std::string_view s) {
  if (!IsDigits(s) || s.size() > 5) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) v = v * 10 + static_cast<uint32_t>(c - '0');
  if (v == 0 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

// A host name: lowercased, one trailing dot removed; labels of [a-z0-9_-], 1 to 63 characters, 253 in all.
// A name whose last label is numeric (or hex, "0x7f") is refused: resolvers read "127.1" or "0x7f000001"
// as addresses, so it would dodge the name rules.
absl::StatusOr<std::string> NormalizeName(std::string_view text) {
  std::string name = ToLower(text);
  if (!name.empty() && name.back() == '.') name.pop_back();
  if (name.empty()) return absl::InvalidArgumentError("empty host name");
  if (name.size() > 253) return absl::InvalidArgumentError("host name longer than 253 characters");
  size_t start = 0;
  std::string_view last;
  while (true) {
    const size_t dot = name.find('.', start);
    const std::string_view label =
        std::string_view(name).substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (label.empty())
      return absl::InvalidArgumentError(absl::StrCat("host name \"", Printable(text), "\" has an empty label"));
    if (label.size() > 63) {
      return absl::InvalidArgumentError(
          absl::StrCat("host name \"", Printable(text), "\" has a label longer than 63 characters"));
    }
    for (char c : label) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
        return absl::InvalidArgumentError(
            absl::StrCat("host name \"", Printable(text), "\" contains '", Printable(std::string_view(&c, 1)), "'"));
      }
    }
    last = label;
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  const bool hex =
      last.size() > 2 && last[0] == '0' && last[1] == 'x' &&
      std::all_of(last.begin() + 2, last.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
  if (IsDigits(last) || hex) {
    return absl::InvalidArgumentError(
        absl::StrCat("host \"", Printable(text), "\" looks numeric but is not a canonical IP address"));
  }
  return name;
}

// ---------------------------------------------------------------------------------------------------------
// HTTP parsing

namespace {

bool IsTchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsToken(std::string_view s) { return !s.empty() && std::all_of(s.begin(), s.end(), IsTchar); }

bool HasCtl(std::string_view s, bool allow_tab) {
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && !(allow_tab && c == '\t')) || c == 0x7f) return true;
  }
  return false;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Parses "host[:port]" / "[v6][:port]". `default_port` 0: the port is required.
std::optional<HttpError> ParseAuthority(std::string_view text, uint16_t default_port, Request* req) {
  std::string_view host, port;
  bool has_port = false;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos) return HttpError{400, "unclosed '[' in the authority"};
    host = text.substr(1, close - 1);
    const std::string_view rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return HttpError{400, "unexpected text after ']' in the authority"};
      port = rest.substr(1);
      has_port = true;
    }
    std::optional<Ip> ip = ParseIp(host, /*allow_v4=*/false);
    if (!ip) return HttpError{400, absl::StrCat("\"", Printable(host), "\" is not an IPv6 address")};
    req->address = ip;
  } else {
    const size_t colon = text.find(':');
    host = text.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = text.substr(colon + 1);
      has_port = true;
      if (port.find(':') != std::string_view::npos) return HttpError{400, "an IPv6 address must be in brackets"};
    }
    if (std::optional<Ip> ip = ParseIp(host, /*allow_v4=*/true, /*allow_v6=*/false)) {
      req->address = ip;
    } else {
      absl::StatusOr<std::string> name = NormalizeName(host);
      if (!name.ok()) return HttpError{400, std::string(name.status().message())};
      req->host = *std::move(name);
    }
  }
  if (req->address) req->host = IpToString(*req->address);
  if (has_port && !(port.empty() && default_port != 0)) {
    std::optional<uint16_t> p = ParsePort(port);
    if (!p) return HttpError{400, absl::StrCat("port \"", Printable(port), "\" is not a number from 1 to 65535")};
    req->port = *p;
  } else if (default_port != 0) {
    req->port = default_port;
  } else {
    return HttpError{400, "CONNECT needs host:port"};
  }
  return std::nullopt;
}

}  // namespace

// Refuses, before the header is complete, bytes that cannot start an HTTP request (TLS, binary garbage).
std::optional<HttpError> CheckPartialHead(std::string_view buf) {
  size_t i = 0;
  for (; i < buf.size() && buf[i] != ' '; ++i) {
    if (!IsTchar(buf[i])) return HttpError{400, "not an HTTP request"};
    if (i >= 32) return HttpError{400, "not an HTTP request (method too long)"};
  }
  if (i < buf.size() && i == 0) return HttpError{400, "not an HTTP request"};
  return std::nullopt;
}

// Parses a complete request header (`head` ends with the blank line) and, for plain HTTP, builds the header
// to send upstream.
namespace {

// The header's lines without their CRLFs, without the blank line that ends it.
std::optional<HttpError> SplitLines(std::string_view head, std::vector<std::string_view>* lines) {
  size_t start = 0;
  while (start < head.size()) {
    const size_t end = head.find("\r\n", start);
    if (end == std::string_view::npos) break;
    lines->push_back(head.substr(start, end - start));
    start = end + 2;
  }
  // The last line is the empty one that ends the header.
  if (lines->size() < 2 || !lines->back().empty()) return HttpError{400, "malformed request header"};
  lines->pop_back();
  return std::nullopt;
}

struct RequestLineParts {
  std::string_view method, target, version;
};

// "METHOD target HTTP/1.x": a token, a target without spaces, HTTP/1.0 or HTTP/1.1 (505 for another version).
std::optional<HttpError> ParseRequestLine(std::string_view request_line, RequestLineParts* parts) {
  if (HasCtl(request_line, false)) return HttpError{400, "control characters in the request line"};
  const size_t sp1 = request_line.find(' ');
  const size_t sp2 = request_line.rfind(' ');
  if (sp1 == std::string_view::npos || sp1 == sp2) return HttpError{400, "malformed request line"};
  const std::string_view method = request_line.substr(0, sp1);
  const std::string_view target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = request_line.substr(sp2 + 1);
  if (!IsToken(method) || target.empty() || target.find(' ') != std::string_view::npos) {
    return HttpError{400, "malformed request line"};
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    if (version.size() == 8 && version.substr(0, 5) == "HTTP/" &&
        std::isdigit(static_cast<unsigned char>(version[5])) && version[6] == '.' &&
        std::isdigit(static_cast<unsigned char>(version[7]))) {
      return HttpError{505, absl::StrCat(ToAbsl(version), " is not supported")};
    }
    return HttpError{400, "malformed request line"};
  }
  *parts = {method, target, version};
  return std::nullopt;
}

// What the header lines say that the proxy needs.
struct HeaderFacts {
  std::vector<std::pair<std::string_view, std::string_view>> headers;
  std::set<std::string> connection_tokens;  // lowercase
  std::optional<std::string_view> content_length;
  std::string transfer_encoding;  // lowercase, joined by ","
  bool has_transfer_encoding = false;
};

// The tokens of a Connection header's value, lowercased, into `tokens`.
void AddConnectionTokens(std::string_view value, std::set<std::string>* tokens) {
  size_t p = 0;
  while (p <= value.size()) {
    const size_t comma = value.find(',', p);
    const std::string_view token =
        TrimOws(value.substr(p, comma == std::string_view::npos ? std::string_view::npos : comma - p));
    if (!token.empty()) tokens->insert(ToLower(token));
    if (comma == std::string_view::npos) break;
    p = comma + 1;
  }
}

// Header lines (after the request line): strict syntax; collects what the proxy needs.
std::optional<HttpError> ParseHeaderLines(const std::vector<std::string_view>& lines, HeaderFacts* facts) {
  for (size_t i = 1; i < lines.size(); ++i) {
    const std::string_view line = lines[i];
    if (line[0] == ' ' || line[0] == '\t') return HttpError{400, "folded header lines are not accepted"};
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || !IsToken(line.substr(0, colon))) {
      return HttpError{400, absl::StrCat("malformed header line \"", Printable(line, 60), "\"")};
    }
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = TrimOws(line.substr(colon + 1));
    if (HasCtl(value, true)) return HttpError{400, absl::StrCat("control characters in header ", ToAbsl(name))};
    facts->headers.emplace_back(name, value);
    if (EqualsIgnoreCase(name, "connection")) {
      AddConnectionTokens(value, &facts->connection_tokens);
    } else if (EqualsIgnoreCase(name, "content-length")) {
      if (!IsDigits(value) || value.size() > 18) return HttpError{400, "malformed Content-Length"};
      if (facts->content_length && *facts->content_length != value) {
        return HttpError{400, "conflicting Content-Length headers"};
      }
      facts->content_length = value;
    } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
      if (facts->has_transfer_encoding) facts->transfer_encoding += ",";
      facts->transfer_encoding += ToLower(value);
      facts->has_transfer_encoding = true;
    }
  }
  return std::nullopt;
}

// Plain HTTP's target: absolute-form http:// only. Fills the destination into `req` and the origin-form
// path into `origin_form`.
std::optional<HttpError> ParseAbsoluteTarget(std::string_view method, std::string_view target, Request* req,
                                             std::string* origin_form) {
  constexpr std::string_view kScheme = "http://";
  if (target.size() < kScheme.size() || !EqualsIgnoreCase(target.substr(0, kScheme.size()), kScheme)) {
    if (target.size() >= 8 && EqualsIgnoreCase(target.substr(0, 8), "https://")) {
      return HttpError{400, "https:// URIs go through CONNECT"};
    }
    return HttpError{400, absl::StrCat("not a proxy request: ", ToAbsl(method), " needs an absolute http:// URI")};
  }
  std::string_view rest = target.substr(kScheme.size());
  const size_t authority_end = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, authority_end);
  std::string_view path = authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) return HttpError{400, "userinfo in the URI is not accepted"};
  if (authority.empty()) return HttpError{400, "no host in the URI"};
  if (std::optional<HttpError> e = ParseAuthority(authority, 80, req)) return e;
  const size_t hash = path.find('#');
  if (hash != std::string_view::npos) path = path.substr(0, hash);
  // (Not string::insert: GCC 12 warns a false -Wrestrict on it here.)
  *origin_form = path.empty() || path[0] != '/' ? absl::StrCat("/", ToAbsl(path)) : std::string(path);
  return std::nullopt;
}

// How the body is framed: chunked, Content-Length, or none.
std::optional<HttpError> SetBodyFraming(const HeaderFacts& facts, Request* req) {
  if (facts.has_transfer_encoding) {
    if (facts.content_length) return HttpError{400, "both Content-Length and Transfer-Encoding"};
    if (facts.transfer_encoding != "chunked") {
      return HttpError{501, absl::StrCat("Transfer-Encoding \"", Printable(facts.transfer_encoding),
                                         "\" is not supported")};
    }
    req->body = BodyKind::kChunked;
  } else if (facts.content_length) {
    req->body = BodyKind::kLength;
    req->content_length = std::stoull(std::string(*facts.content_length));
  }
  return std::nullopt;
}

// The header sent upstream: origin-form request line, Host from the URI, no hop-by-hop headers,
// "Connection: close".
std::string UpstreamHead(const RequestLineParts& line, std::string_view origin_form, const HeaderFacts& facts,
                         const Request& req) {
  static const std::set<std::string> kHopByHop = {
      "connection", "proxy-connection", "keep-alive", "proxy-authorization", "proxy-authenticate", "te",
      "trailer",    "upgrade",          "host"};
  std::string out = absl::StrCat(ToAbsl(line.method), " ", ToAbsl(origin_form), " ", ToAbsl(line.version), "\r\n");
  const bool default_port = req.port == 80;
  absl::StrAppend(
      &out, "Host: ",
      default_port ? (req.address && req.address->family == AF_INET6 ? absl::StrCat("[", req.host, "]") : req.host)
                   : HostPort(req.host, req.port),
      "\r\n");
  for (const auto& [name, value] : facts.headers) {
    const std::string lower = ToLower(name);
    if (kHopByHop.count(lower)) continue;
    // Framing headers are never dropped: the body is relayed as framed by them.
    if (facts.connection_tokens.count(lower) && lower != "content-length" && lower != "transfer-encoding") continue;
    absl::StrAppend(&out, ToAbsl(name), ": ", ToAbsl(value), "\r\n");
  }
  out += "Connection: close\r\n\r\n";
  return out;
}

}  // namespace

std::optional<HttpError> ParseHead(std::string_view head, Request* req) {
  std::vector<std::string_view> lines;
  if (std::optional<HttpError> e = SplitLines(head, &lines)) return e;
  RequestLineParts line;
  if (std::optional<HttpError> e = ParseRequestLine(lines[0], &line)) return e;
  HeaderFacts facts;
  if (std::optional<HttpError> e = ParseHeaderLines(lines, &facts)) return e;
  if (EqualsIgnoreCase(line.method, "CONNECT")) {
    req->connect = true;
    return ParseAuthority(line.target, /*default_port=*/0, req);
  }
  std::string origin_form;
  if (std::optional<HttpError> e = ParseAbsoluteTarget(line.method, line.target, req, &origin_form)) return e;
  if (std::optional<HttpError> e = SetBodyFraming(facts, req)) return e;
  req->upstream_head = UpstreamHead(line, origin_form, facts, *req);
  return std::nullopt;
}

std::optional<size_t> FindHeadEnd(std::string_view buf, size_t searched) {
  const size_t end = buf.find("\r\n\r\n", searched >= 3 ? searched - 3 : 0);
  if (end == std::string_view::npos) return std::nullopt;
  return end + 4;
}

std::string_view FirstLine(std::string_view head) { return head.substr(0, head.find("\r\n")); }

TunnelStart ClassifyTunnelStart(std::string_view bytes, bool eof, std::string_view* connect_line) {
  size_t i = 0;
  while (i < bytes.size() && (bytes[i] == '\r' || bytes[i] == '\n' || bytes[i] == ' ' || bytes[i] == '\t')) ++i;
  const std::string_view rest = bytes.substr(i);
  constexpr std::string_view kConnect = "CONNECT ";
  if (rest.empty()) return TunnelStart::kBlank;
  const size_t n = std::min(rest.size(), kConnect.size());
  if (!EqualsIgnoreCase(rest.substr(0, n), kConnect.substr(0, n)) || (n < kConnect.size() && eof)) {
    return TunnelStart::kNotConnect;
  }
  if (n < kConnect.size()) return TunnelStart::kUndecided;  // "CONN": wait for more
  *connect_line = rest.substr(0, std::min(rest.find_first_of("\r\n"), size_t{200}));
  return TunnelStart::kConnect;
}

namespace {

std::string StatusText(int status) {
  switch (status) {
    case 200:
      return "Connection established";
    case 400:
      return "Bad Request";
    case 403:
      return "Forbidden";
    case 408:
      return "Request Timeout";
    case 431:
      return "Request Header Fields Too Large";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

}  // namespace

std::string ErrorResponse(int status, std::string_view body_line) {
  const std::string body = absl::StrCat(ToAbsl(body_line), "\n");
  return absl::StrCat("HTTP/1.1 ", status, " ", StatusText(status),
                      "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", body);
}

BodyFramer::BodyFramer(BodyKind kind, uint64_t length) : kind_(kind), remaining_(length) {
  if (kind == BodyKind::kChunked) {
    state_ = State::kSize;
    remaining_ = 0;
  } else if (kind == BodyKind::kLength && length > 0) {
    state_ = State::kData;
  }
}

size_t BodyFramer::Feed(std::string_view data) {
  size_t i = 0;
  while (i < data.size() && state_ != State::kDone && state_ != State::kError) {
    if (state_ == State::kData) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(remaining_, data.size() - i));
      i += n;
      remaining_ -= n;
      if (remaining_ == 0) state_ = kind_ == BodyKind::kLength ? State::kDone : State::kDataCr;
      continue;
    }
    Step(data[i++]);
  }
  return i;
}

void BodyFramer::Step(char c) {
  switch (state_) {
    case State::kSize:
      if (std::isxdigit(static_cast<unsigned char>(c))) {
        if (++digits_ > 15) return Fail();
        remaining_ =
            remaining_ * 16 +
            static_cast<uint64_t>(std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : Lower(c) - 'a' + 10);
      } else if (digits_ > 0 && (c == ';' || c == ' ' || c == '\t')) {
        state_ = State::kExt;
        line_ = 0;
      } else if (digits_ > 0 && c == '\r') {
        state_ = State::kSizeLf;
      } else {
        Fail();
      }
      return;
    case State::kExt:
      if (c == '\r') {
        state_ = State::kSizeLf;
      } else if (c == '\n' || ++line_ > kMaxLine) {
        Fail();
      }
      return;
    case State::kSizeLf:
      if (c != '\n') return Fail();
      state_ = remaining_ == 0 ? State::kTrailerStart : State::kData;
      trailer_ = 0;
      return;
    case State::kDataCr:
      if (c != '\r') return Fail();
      state_ = State::kDataLf;
      return;
    case State::kDataLf:
      if (c != '\n') return Fail();
      state_ = State::kSize;
      digits_ = 0;
      remaining_ = 0;
      return;
    case State::kTrailerStart:
      if (c == '\r') {
        state_ = State::kLastLf;
        return;
      }
      state_ = State::kTrailer;
      [[fallthrough]];
    case State::kTrailer:
      if (c == '\r') {
        state_ = State::kTrailerLf;
      } else if (c == '\n' || ++trailer_ > kMaxLine * 4) {
        Fail();
      }
      return;
    case State::kTrailerLf:
      if (c != '\n') return Fail();
      state_ = State::kTrailerStart;
      return;
    case State::kLastLf:
      if (c != '\n') return Fail();
      state_ = State::kDone;
      return;
    default:
      return;
  }
}

}  // namespace sbx::agent::http1
