// Fuzzes the egress proxy's HTTP/1 parsing (net/http1_parser.h) the way the proxy drives it: the first byte
// picks the size of the pieces the client's bytes arrive in; CheckPartialHead sees each prefix of the header,
// ParseHead the complete header, and a BodyFramer of the header's framing the bytes after it.
// Beyond "no crash": an accepted plain-HTTP request's upstream header is one header (no CR or LF smuggled into
// it, exactly one blank line, at its end), and the framer never claims bytes it was not given.
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "net/http1_parser.h"

namespace {

using sbx::agent::http1::BodyFramer;
using sbx::agent::http1::CheckPartialHead;
using sbx::agent::http1::HttpError;
using sbx::agent::http1::ParseHead;
using sbx::agent::http1::Request;

void Check(bool ok) {
  if (!ok) std::abort();
}

// CR and LF only as "\r\n", and the only empty line is the last one.
void CheckOneHeader(std::string_view head) {
  Check(head.size() >= 4 && head.substr(head.size() - 4) == "\r\n\r\n");
  for (size_t i = 0; i < head.size(); ++i) {
    if (head[i] == '\r') Check(i + 1 < head.size() && head[i + 1] == '\n');
    if (head[i] == '\n') Check(i > 0 && head[i - 1] == '\r');
  }
  Check(head.find("\r\n\r\n") == head.size() - 4);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = 1 + data[0] % 64;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);

  // The header arrives piece by piece; the proxy checks what it has after each read.
  const size_t end = in.find("\r\n\r\n");
  const size_t head_size = end == std::string_view::npos ? in.size() : end + 4;
  for (size_t n = piece; ; n += piece) {
    if (CheckPartialHead(in.substr(0, std::min(n, head_size)))) return 0;
    if (n >= head_size) break;
  }
  if (end == std::string_view::npos) return 0;

  Request req;
  if (std::optional<HttpError> e = ParseHead(in.substr(0, head_size), &req)) {
    Check(e->status >= 400 && e->status < 600);
    return 0;
  }
  Check(!req.host.empty() && req.port != 0);
  if (req.connect) return 0;
  CheckOneHeader(req.upstream_head);

  BodyFramer body(req.body, req.content_length);
  std::string_view rest = in.substr(head_size);
  while (!rest.empty() && !body.done() && !body.error()) {
    const std::string_view chunk = rest.substr(0, piece);
    const size_t k = body.Feed(chunk);
    Check(k <= chunk.size());
    if (!body.done() && !body.error()) Check(k == chunk.size());
    rest.remove_prefix(chunk.size());
  }
  if (body.done()) Check(body.Feed("more") == 0);
  return 0;
}
