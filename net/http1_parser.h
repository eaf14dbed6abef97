// The egress proxy's HTTP/1 parsing (egress_proxy.h, "Protocol"), apart from its sockets and rules so that it
// can be tested and fuzzed on bytes alone (tests/fuzz/http1_parser_fuzz.cc). Everything here reads bytes a
// hostile jail sent: it never trusts a length, never reads past its input, and answers a malformed request
// with an Error naming what is wrong.
//
// The proxy's use, in order:
//   1. CheckPartialHead on each prefix of the request header as it arrives (refuses TLS and binary garbage
//      before the whole header is in);
//   2. ParseHead on the complete header (through the blank line): the destination, and for plain HTTP the
//      header to send upstream and how the body is framed;
//   3. a BodyFramer for that framing, fed every later client byte: it says where the body ends;
//   4. in a CONNECT tunnel, ClassifyTunnelStart on the first client bytes (no CONNECT inside a tunnel);
//   5. ErrorResponse for the proxy's own answers.
// The host and text helpers below are also what the egress rules (ParseEgressRule) parse hosts with, so that a
// request and a rule read a host the same way.
#ifndef SBX_NET_HTTP1_PARSER_H_
#define SBX_NET_HTTP1_PARSER_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sbx::agent::http1 {

// ---- hosts and text

// An address with IPv4-mapped IPv6 turned into IPv4.
struct Ip {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> bytes{};
  const uint8_t* data() const { return bytes.data(); }
};

// Parses a canonical IPv4 (dotted quad) or IPv6 literal; IPv4-mapped IPv6 becomes IPv4.
std::optional<Ip> ParseIp(std::string_view text, bool allow_v4 = true, bool allow_v6 = true);
std::string IpToString(const Ip& ip);
// "host:port", with an IPv6 literal in brackets.
std::string HostPort(std::string_view host, uint16_t port);
// Text from a peer or a rule, made safe for a one-line message: printable ASCII, the rest \xNN, truncated.
std::string Printable(std::string_view text, size_t max = 120);
char Lower(char c);  // ASCII only
bool EqualsIgnoreCase(std::string_view a, std::string_view b);
std::string ToLower(std::string_view s);
bool IsDigits(std::string_view s);  // non-empty, [0-9] only
// A port: 1 to 65535, decimal digits only.
std::optional<uint16_t> ParsePort(std::string_view s);
// A host name: lowercased, one trailing dot removed; labels of [a-z0-9_-], 1 to 63 characters, 253 in all.
// A name whose last label is numeric (or hex, "0x7f") is refused: resolvers read "127.1" or "0x7f000001"
// as addresses, so it would dodge the name rules.
absl::StatusOr<std::string> NormalizeName(std::string_view text);

// ---- requests

// An answer the proxy gives instead of relaying.
struct HttpError {
  int status = 400;
  std::string detail;
};

enum class BodyKind { kNone, kLength, kChunked };

// A request header, understood.
struct Request {
  bool connect = false;
  std::string host;           // normalized name, or the canonical text of an IP literal
  std::optional<Ip> address;  // set for an IP literal
  uint16_t port = 0;
  std::string upstream_head;  // plain HTTP: the header to send upstream
  BodyKind body = BodyKind::kNone;
  uint64_t content_length = 0;
};

// Refuses, before the header is complete, bytes that cannot start an HTTP request (TLS, binary garbage).
// `buf` is every byte received so far.
std::optional<HttpError> CheckPartialHead(std::string_view buf);

// Parses a complete request header (`head` ends with the blank line, "\r\n\r\n") into `req` and, for plain
// HTTP, builds the header to send upstream. On error `req` may be partly filled.
std::optional<HttpError> ParseHead(std::string_view head, Request* req);

// Where the request header in `buf` ends (just past its blank line), searching the bytes from `searched`
// on (less the 3 before it, in case the CRLFCRLF straddles); nullopt while it is not complete.
std::optional<size_t> FindHeadEnd(std::string_view buf, size_t searched);

// A header's first line (the request line), without its CRLF.
std::string_view FirstLine(std::string_view head);

// What the first client bytes in a CONNECT tunnel are (egress_proxy.h, "Nested CONNECT"), after any CR, LF,
// SP or HT: nothing else yet, not "CONNECT " (any case), its start only, or a CONNECT request.
enum class TunnelStart { kBlank, kNotConnect, kUndecided, kConnect };
// `eof`: the client sent all it will. kConnect sets `connect_line` to the request's first line (at most 200
// bytes, a view into `bytes`).
TunnelStart ClassifyTunnelStart(std::string_view bytes, bool eof, std::string_view* connect_line);

// ---- answers

// The proxy's own answer: a status line, a one-line text/plain body and "Connection: close".
std::string ErrorResponse(int status, std::string_view body_line);
// The answer to a CONNECT that succeeded.
inline constexpr std::string_view kConnectEstablished = "HTTP/1.1 200 Connection established\r\n\r\n";

// Finds where a request body ends in the bytes the client sends: Content-Length or chunked.
class BodyFramer {
 public:
  BodyFramer() = default;  // no body
  BodyFramer(BodyKind kind, uint64_t length);
  bool done() const { return state_ == State::kDone; }
  bool error() const { return state_ == State::kError; }

  // Returns how many bytes at the front of `data` belong to the body (all of them until it ends).
  size_t Feed(std::string_view data);

 private:
  enum class State {
    kSize,
    kExt,
    kSizeLf,
    kData,
    kDataCr,
    kDataLf,
    kTrailerStart,
    kTrailer,
    kTrailerLf,
    kLastLf,
    kDone,
    kError
  };
  static constexpr size_t kMaxLine = 4096;

  void Step(char c);
  void Fail() { state_ = State::kError; }

  BodyKind kind_ = BodyKind::kNone;
  State state_ = State::kDone;  // kLength: kData
  uint64_t remaining_ = 0;
  int digits_ = 0;
  size_t line_ = 0, trailer_ = 0;
};

}  // namespace sbx::agent::http1

#endif  // SBX_NET_HTTP1_PARSER_H_
