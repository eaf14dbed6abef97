// Framing of the init protocol, shared by the agent (InitClient) and sandbox-init: each frame is a 4-byte
// little-endian payload length followed by the payload. A length above kMaxFrameBytes ends the connection.
// No protobuf and no abseil here: sandbox-init links this into a small static binary.
#ifndef SBX_WIRE_FRAME_H_
#define SBX_WIRE_FRAME_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace sbx::sandbox {

// Largest payload either side accepts; a bigger length prefix ends the connection.
inline constexpr uint32_t kMaxFrameBytes = 1 << 20;
// Largest data chunk (file data, stdin, CDP messages) carried in one frame.
inline constexpr uint32_t kMaxChunkBytes = 256 << 10;
// Largest chunk of a command's output in one frame: a whole frame but for the envelope's few bytes, so a full
// 1 MiB pipe goes to the agent in one read, one frame and (EventLog) one event.
inline constexpr uint32_t kMaxOutputChunkBytes = kMaxFrameBytes - (4 << 10);
inline constexpr size_t kFrameHeaderBytes = 4;

// Writes the 4-byte little-endian length prefix for a payload of `size` bytes.
void EncodeFrameHeader(uint32_t size, char out[kFrameHeaderBytes]);

// The header followed by `payload`. NOTE: the caller keeps payload.size() <= kMaxFrameBytes; a bigger
// payload is a programming error (the peer would drop the connection on it).
std::string EncodeFrame(std::string_view payload);

// Reassembles frames from a byte stream fed in arbitrary pieces (e.g. nonblocking reads). A length prefix is
// checked against the cap as soon as its 4 bytes are in, before any payload is buffered, so the memory held
// is at most the bytes actually received: never the length a peer merely claims.
//
//   reader.Feed(buf, n);               // false: broken stream, see error()
//   std::string_view frame;
//   while (reader.Next(&frame)) ...    // frame stays valid until the next Feed
//   if (eof && !reader.Finish()) ...   // a frame cut off by the end of the stream
class FrameReader {
 public:
  explicit FrameReader(uint32_t max_payload_bytes = kMaxFrameBytes) : max_(max_payload_bytes) {}

  // Appends received bytes. Returns false once the stream is broken (a length prefix above the cap), and
  // from then on.
  bool Feed(const char* data, size_t size);
  bool Feed(std::string_view bytes) { return Feed(bytes.data(), bytes.size()); }

  // The same without the extra copy: read(2) straight into Prepare(n) (room for at least n bytes; it
  // invalidates earlier payloads), then Commit the bytes written. Commit returns what Feed would.
  char* Prepare(size_t n);
  bool Commit(size_t n);

  // The next complete payload, if any. It points into the reader's buffer and stays valid until the next
  // Feed call.
  bool Next(std::string_view* payload);

  // Called when the stream ended: true when it ended on a frame boundary; otherwise the stream is broken
  // ("truncated frame: ...") and error() says where it was cut.
  bool Finish();

  // A complete payload is waiting for Next.
  bool ready() const { return !failed() && pos_ < scan_; }
  bool failed() const { return !error_.empty(); }
  // Why the stream is broken, e.g. "frame of 2000000 bytes exceeds the 1048576-byte cap".
  const std::string& error() const { return error_; }
  // Bytes received and not yet returned by Next.
  size_t buffered() const { return len_ - pos_; }

 private:
  // Checks every length prefix that is complete in the buffer, advancing scan_ over complete frames.
  void Scan();

  uint32_t max_;
  std::string buf_;  // storage; only [0, len_) holds data (the rest is room, never zero-filled twice)
  size_t len_ = 0;
  size_t pos_ = 0;   // start of the first frame not yet returned by Next
  size_t scan_ = 0;  // end of the complete frames that were checked; frames in [pos_, scan_) are ready
  std::string error_;
};

}  // namespace sbx::sandbox

#endif  // SBX_WIRE_FRAME_H_
