// Fuzzes the init protocol as both ends read it (wire/frame.h, init_protocol.proto): a byte stream,
// fed to a FrameReader in pieces (sizes from the first byte, through Feed or Prepare/Commit as the agent's
// InitClient and sandbox-init do), and every frame parsed as the agent parses sandbox-init's (Response) and as
// sandbox-init parses the agent's (Request). Beyond "no crash": the reader never hands out more bytes than it
// was fed, never a frame over its cap, Finish agrees with what is left, and a message that parsed survives a
// round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "wire/frame.h"
#include "wire/init_protocol.pb.h"

namespace {

namespace pb = ::sbx::init;

void Check(bool ok) {
  if (!ok) std::abort();
}

template <typename Message>
void ParseAndRoundTrip(std::string_view payload) {
  Message m;
  if (!m.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return;
  // What each side reads after parsing: the oneof case and the fields of every kind.
  (void)m.kind_case();
  (void)m.call_id();
  std::string again;
  Check(m.SerializeToString(&again));
  Message m2;
  Check(m2.ParseFromString(again));
  std::string third;
  Check(m2.SerializeToString(&third));
  Check(third == again);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t piece = 1 + data[0] % 32;
  const bool zero_copy = data[1] & 1;
  // A small cap sometimes, so the oversized-prefix path is reached with small inputs.
  const uint32_t cap = (data[1] & 2) ? 64 : sbx::sandbox::kMaxFrameBytes;
  std::string_view in(reinterpret_cast<const char*>(data) + 2, size - 2);

  sbx::sandbox::FrameReader reader(cap);
  size_t fed = 0, taken = 0;
  bool ok = true;
  while (!in.empty() && ok) {
    const std::string_view chunk = in.substr(0, piece);
    in.remove_prefix(chunk.size());
    if (zero_copy) {
      char* p = reader.Prepare(chunk.size());
      std::memcpy(p, chunk.data(), chunk.size());
      ok = reader.Commit(chunk.size());
    } else {
      ok = reader.Feed(chunk);
    }
    fed += chunk.size();
    std::string_view payload;
    while (reader.Next(&payload)) {
      Check(payload.size() <= cap);
      taken += sbx::sandbox::kFrameHeaderBytes + payload.size();
      ParseAndRoundTrip<pb::Response>(payload);
      ParseAndRoundTrip<pb::Request>(payload);
    }
    Check(taken <= fed);
    if (ok) Check(reader.buffered() == fed - taken);
  }
  if (ok) {
    Check(reader.Finish() == (reader.buffered() == 0));
  } else {
    Check(reader.failed() && !reader.error().empty() && !reader.Finish());
  }
  return 0;
}
