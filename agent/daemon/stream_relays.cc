#include "agent/daemon/stream_relays.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;

constexpr size_t kMaxCdpBacklogBytes = 192 << 20;
constexpr size_t kMaxCdpMessageBytes = 64 << 20;
constexpr size_t kPieceBytes = 1 << 20;  // CdpFrame pieces (the gRPC message cap is 4 MiB)

// Waits up to 500 ms for output or the end; then takes what there is. False: nothing left to write.
bool TakeBatch(RelayQueue& relay, grpc::ServerContext* ctx, std::deque<std::string>* batch) {
  absl::MutexLock lock(&relay.mu);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(500);
  while (relay.out.empty() && !relay.ended && !relay.cv.WaitWithDeadline(&relay.mu, deadline)) {
  }
  if (relay.out.empty() && (relay.ended || ctx->IsCancelled())) return false;
  batch->swap(relay.out);
  relay.out_bytes = 0;
  return true;
}


// Cdp: sandbox-init's output for this client, split into messages at their NUL ends.
auto OnCdpOutput(std::shared_ptr<CdpRelay> relay) {
  return [relay](sandbox::OutputStream, std::string data, uint64_t) {
    absl::MutexLock lock(&relay->mu);
    relay->opened = true;
    relay->cv.SignalAll();
    if (relay->ended) return;
    size_t start = 0;
    for (;;) {
      const size_t nul = data.find('\0', start);
      if (nul == std::string::npos) break;
      relay->partial.append(data, start, nul - start);
      relay->out_bytes += relay->partial.size();
      relay->out.push_back(std::move(relay->partial));
      relay->partial.clear();
      start = nul + 1;
    }
    relay->partial.append(data, start, std::string::npos);
    if (relay->out_bytes + relay->partial.size() > kMaxCdpBacklogBytes || relay->partial.size() > kMaxCdpMessageBytes) {
      relay->ended = true;
      relay->end = absl::ResourceExhaustedError(absl::StrCat("cdp: the client fell ", kMaxCdpBacklogBytes >> 20,
                                                             " MiB behind the browser"));
    }
    relay->cv.SignalAll();
  };
}

auto OnCdpEnd(std::shared_ptr<CdpRelay> relay) {
  return [relay](absl::StatusOr<sandbox::ExecEnd> end) {
    absl::MutexLock lock(&relay->mu);
    if (!relay->ended) relay->end = end.status();
    relay->ended = true;
    relay->cv.SignalAll();
  };
}

}  // namespace

// Vnc: starts x11vnc in the session; its stdout goes to `relay`.
absl::StatusOr<uint64_t> StartVnc(Session& session, const std::shared_ptr<VncRelay>& relay) {
  sandbox::ExecSpec spec;
  spec.argv = {"x11vnc", "-inetd", "-display", ":1", "-nopw", "-shared", "-quiet", "-noxdamage", "-nowf", "-o",
               "/dev/null"};
  spec.stdin_open = true;
  spec.socket_stdio = true;  // x11vnc -inetd wants a socket on stdin/stdout
  auto on_output = [relay](sandbox::OutputStream stream_kind, std::string data, uint64_t) {
    if (stream_kind != sandbox::OutputStream::kStdout) return;  // x11vnc's own messages
    absl::MutexLock lock(&relay->mu);
    if (relay->out_bytes + data.size() > kMaxVncBacklogBytes) {
      relay->overflow = relay->ended = true;
    } else {
      relay->out_bytes += data.size();
      relay->out.push_back(std::move(data));
    }
    relay->cv.SignalAll();
  };
  auto on_end = [relay](absl::StatusOr<sandbox::ExecEnd>) {
    absl::MutexLock lock(&relay->mu);
    relay->ended = true;
    relay->cv.SignalAll();
  };
  return session.init()->StartExec(spec, on_output, on_end);
}

// Vnc: writes x11vnc's output to the viewer until it ends, the viewer goes, or a write fails.
void PumpVnc(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::VncData, pb::VncData>* stream, VncRelay& relay) {
  for (;;) {
    std::deque<std::string> batch;
    if (!TakeBatch(relay, ctx, &batch)) break;
    bool ok = true;
    for (std::string& data : batch) {
      pb::VncData frame;
      frame.set_data(std::move(data));
      if (!stream->Write(frame)) {
        ok = false;
        break;
      }
    }
    if (!ok) break;
  }
}

// Cdp: connects a client to the session's browser through sandbox-init, which accepts it (an empty first
// chunk) or refuses it: another client is connected. One that just went (a dropped connection, a
// /json/version fetch) may still be leaving: tried again for 3 s. Sets *relay to the accepted client's.
absl::StatusOr<uint64_t> OpenCdp(grpc::ServerContext* ctx, sandbox::InitClient* init,
                                 std::shared_ptr<CdpRelay>* relay_out) {
  std::shared_ptr<CdpRelay>& relay = *relay_out;
  absl::StatusOr<uint64_t> call;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (;;) {
    relay = std::make_shared<CdpRelay>();
    call = init->StartCdp(OnCdpOutput(relay), OnCdpEnd(relay));
    if (!call.ok()) return Annotate(call.status(), "cdp");
    absl::Status refused;
    {
      absl::MutexLock lock(&relay->mu);
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      while (!relay->opened && !relay->ended && !relay->cv.WaitWithDeadline(&relay->mu, deadline)) {
      }
      if (relay->opened) break;
      refused = relay->ended ? relay->end : absl::DeadlineExceededError("cdp: sandbox-init did not answer");
    }
    if (refused.code() == absl::StatusCode::kFailedPrecondition && std::chrono::steady_clock::now() < give_up &&
        !ctx->IsCancelled()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    (void)init->CdpSend(*call, "", true);
    return refused.ok() ? absl::UnavailableError("cdp: the stream ended") : refused;
  }
  return call;
}

// Cdp: the client's messages go to sandbox-init from the reader thread, each ended by a NUL byte (a CDP
// message, being JSON text, holds none: one that does is refused, as it would split into two).
void RelayCdpClient(grpc::ServerReaderWriter<pb::CdpFrame, pb::CdpFrame>* stream, const pb::CdpFrame& first,
                    Session& session, sandbox::InitClient* init, uint64_t id, CdpRelay& relay) {
  pb::CdpFrame in;
  std::string message;
  absl::Status why;
  bool first_frame = true;
  auto take = [&](const pb::CdpFrame& frame) -> bool {
    if (frame.message().find('\0') != std::string::npos) {
      why = absl::InvalidArgumentError("cdp: a message holds a NUL byte");
      return false;
    }
    message.append(frame.message());
    if (message.size() > kMaxCdpMessageBytes) {
      why = absl::InvalidArgumentError(absl::StrCat("cdp: a message over ", kMaxCdpMessageBytes >> 20, " MiB"));
      return false;
    }
    if (frame.more() || message.empty()) return true;
    message.push_back('\0');
    session.Touch();
    absl::Status sent = init->CdpSend(id, message, false);
    message.clear();
    if (!sent.ok()) {
      why = sent;
      return false;
    }
    return true;
  };
  bool ok = take(first);
  first_frame = false;
  while (ok && stream->Read(&in)) ok = take(in);
  (void)first_frame;
  (void)init->CdpSend(id, "", true);  // its sessions detached, its targets closed
  absl::MutexLock lock(&relay.mu);
  if (!why.ok() && !relay.ended) {
    relay.ended = true;
    relay.end = why;
  }
  relay.cv.SignalAll();
}

// Cdp: writes the browser's messages to the client, in pieces, until the end or the client goes. True: a
// write failed (the client went).
bool PumpCdp(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::CdpFrame, pb::CdpFrame>* stream,
             CdpRelay& relay) {
  bool write_failed = false;
  for (;;) {
    std::deque<std::string> batch;
    if (!TakeBatch(relay, ctx, &batch)) break;
    for (std::string& m : batch) {
      for (size_t off = 0; off < m.size() || off == 0;) {
        pb::CdpFrame frame;
        const size_t n = std::min(kPieceBytes, m.size() - off);
        frame.set_message(m.substr(off, n));
        off += n;
        frame.set_more(off < m.size());
        if (!stream->Write(frame)) {
          write_failed = true;
          break;
        }
        if (off >= m.size()) break;
      }
      if (write_failed) break;
    }
    if (write_failed) break;
  }
  return write_failed;
}

}  // namespace sbx::agent
