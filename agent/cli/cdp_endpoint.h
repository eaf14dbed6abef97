// A Chrome DevTools Protocol endpoint like Chromium's own --remote-debugging-port, for Playwright
// (chromium.connectOverCDP) and Puppeteer (puppeteer.connect({browserURL})): HTTP GET /json/version (with
// webSocketDebuggerUrl), /json/list (and /json), and a WebSocket (RFC 6455) at /devtools/browser/..., each
// connection one Cdp stream to the session's browser (sandboxes.proto, rpc Cdp). No gRPC here: the caller hands
// in a way to open a stream, so the daemon's own HTTP listener can serve the same (CdpHttpConnection takes an
// accepted fd). Pure C++ and POSIX sockets.
#ifndef SBX_AGENT_CLI_CDP_ENDPOINT_H_
#define SBX_AGENT_CLI_CDP_ENDPOINT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace sbx::cdp {

// SHA-1 (RFC 3174), for Sec-WebSocket-Accept only: 20 raw bytes.
std::string Sha1(std::string_view data);
std::string Base64Encode(std::string_view data);
// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2).
std::string WebSocketAccept(std::string_view key);

// A server's reader of client frames (RFC 6455 section 5): masking required, fragmented messages joined,
// control frames (ping, pong, close) between fragments, a cap on a whole message.
class WebSocketReader {
 public:
  explicit WebSocketReader(size_t max_message_bytes) : max_(max_message_bytes) {}
  struct Event {
    enum class Kind { kNeedMore, kMessage, kPing, kPong, kClose, kError };
    Kind kind = Kind::kNeedMore;
    std::string data;         // a message, a ping's or pong's payload, a close's reason
    uint16_t code = 0;        // kClose: the client's code (1005 if none); kError: the close code to send
  };
  void Feed(std::string_view bytes) { buf_.append(bytes); }
  // The next event in what was fed. After kError or kClose, nothing more is read.
  Event Next();

 private:
  struct Frame {
    bool fin = false;
    uint8_t opcode = 0;
    std::string payload;  // unmasked
  };
  enum class Parse { kNeedMore, kFrame, kError };
  // Takes the next whole frame from the buffer, checked (masking, sizes, control frames); kError sets *error.
  Parse TakeFrame(Frame* frame, Event* error);
  // What a frame makes: true with *e set when it is an event (a whole message, ping, pong, close, error);
  // false when it was a fragment of a message still open.
  bool OnFrame(Frame& frame, Event* e);
  // Ends reading with an error event carrying the close code to send.
  Event Fail(uint16_t code, std::string why);
  Parse Failed(Event* error, uint16_t code, std::string why);  // *error = Fail(...): kError

  const size_t max_;
  std::string buf_;
  size_t pos_ = 0;
  std::string message_;
  bool in_message_ = false;
  bool done_ = false;
};

// One server frame (never masked), FIN set.
enum : uint8_t { kWsText = 1, kWsBinary = 2, kWsClose = 8, kWsPing = 9, kWsPong = 10 };
std::string WebSocketFrame(uint8_t opcode, std::string_view payload);
std::string WebSocketCloseFrame(uint16_t code, std::string_view reason);

// One Cdp stream, as the endpoint uses it. Read and Write may run on two threads at once.
class CdpStream {
 public:
  virtual ~CdpStream() = default;
  // The next message for the client (a whole CDP JSON text); false once the stream is over.
  virtual bool Read(std::string* message) = 0;
  virtual bool Write(std::string_view message) = 0;
  virtual void WritesDone() = 0;
  // Ends the stream from this side (the client went away).
  virtual void Cancel() = 0;
  // After Read returned false: why it ended ("" when cleanly).
  virtual std::string Finish() = 0;
};

// What a stream is opened for: the session, and the request's Authorization header ("" if none), which the
// daemon's listener forwards as the RPC's bearer token.
struct CdpOpenRequest {
  std::string session_id;
  std::string authorization;
};

// Opens a stream to the session's browser, or returns nullptr with an HTTP status (401 refused token, 403,
// 404 no such session, 409 not a browser / another client, 502 otherwise) and a message.
using OpenCdpFn =
    std::function<std::unique_ptr<CdpStream>(const CdpOpenRequest& request, int* http_status, std::string* error)>;

struct CdpEndpointOptions {
  OpenCdpFn open;
  std::string session_id;  // in the WebSocket path: /devtools/browser/SESSION
  // Non-empty ("/cdp"): paths are PREFIX/SESSION/json/version, PREFIX/SESSION/devtools/browser/SESSION, ...,
  // the session taken from the path (session_id is ignored), as the daemon's shared TCP port serves them.
  std::string session_path_prefix;
  // When set, checked first with the request's Authorization header: false is a 401, nothing else looked at.
  std::function<bool(const std::string& authorization)> authorize;
  size_t max_message_bytes = 64 << 20;
};

// Serves one accepted connection (HTTP/1.1; one request, or a WebSocket upgrade) until it ends; closes fd.
void ServeCdpConnection(int fd, const CdpEndpointOptions& options);

}  // namespace sbx::cdp

#endif  // SBX_AGENT_CLI_CDP_ENDPOINT_H_
