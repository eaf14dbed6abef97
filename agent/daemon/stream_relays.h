// The Vnc and Cdp handlers' relays (SandboxesService::Vnc, ::Cdp): the init client's reader thread fills a
// queue with what the session sends, and the handler's thread writes it to the gRPC client.
#ifndef SBX_AGENT_DAEMON_STREAM_RELAYS_H_
#define SBX_AGENT_DAEMON_STREAM_RELAYS_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/session/session.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::agent {

// What a Vnc or Cdp handler writes to its client, filled by the init client's reader thread.
struct RelayQueue {
  absl::Mutex mu;
  absl::CondVar cv;
  std::deque<std::string> out ABSL_GUARDED_BY(mu);
  size_t out_bytes ABSL_GUARDED_BY(mu) = 0;
  bool ended ABSL_GUARDED_BY(mu) = false;
};

// One x11vnc per viewer, in inetd mode: RFB over its stdin and stdout, relayed here. Its output bypasses
// the session's event log (a live view is not a tool call's output).
struct VncRelay : RelayQueue {
  bool overflow ABSL_GUARDED_BY(mu) = false;  // the viewer read too slowly
};

// Chromium's messages for the client, split at their NUL ends by the init client's reader thread and
// written from here. Bounded: sandbox-init itself cuts a client off that falls far behind (cdp.h); this
// bound is the agent's share of that backlog.
struct CdpRelay : RelayQueue {
  std::string partial ABSL_GUARDED_BY(mu);  // a message not yet complete (`out`: complete messages)
  bool opened ABSL_GUARDED_BY(mu) = false;  // sandbox-init accepted the client (its empty first chunk)
  absl::Status end ABSL_GUARDED_BY(mu);
};


// What x11vnc may have sent that the viewer has not taken yet, before the viewer is cut off.
constexpr size_t kMaxVncBacklogBytes = 64 << 20;

// Vnc: starts x11vnc in the session; its stdout goes to `relay`.
absl::StatusOr<uint64_t> StartVnc(Session& session, const std::shared_ptr<VncRelay>& relay);
// Vnc: writes x11vnc's output to the viewer until it ends, the viewer goes, or a write fails.
void PumpVnc(grpc::ServerContext* ctx,
             grpc::ServerReaderWriter<duvo::sandbox::v1::VncData, duvo::sandbox::v1::VncData>* stream,
             VncRelay& relay);

// Cdp: connects a client to the session's browser through sandbox-init (see stream_relays.cc); sets *relay.
absl::StatusOr<uint64_t> OpenCdp(grpc::ServerContext* ctx, sandbox::InitClient* init,
                                 std::shared_ptr<CdpRelay>* relay_out);
// Cdp: the reader thread's side: the client's messages to sandbox-init.
void RelayCdpClient(grpc::ServerReaderWriter<duvo::sandbox::v1::CdpFrame, duvo::sandbox::v1::CdpFrame>* stream,
                    const duvo::sandbox::v1::CdpFrame& first, Session& session, sandbox::InitClient* init,
                    uint64_t id, CdpRelay& relay);
// Cdp: the browser's messages to the client. True: a write failed (the client went).
bool PumpCdp(grpc::ServerContext* ctx,
             grpc::ServerReaderWriter<duvo::sandbox::v1::CdpFrame, duvo::sandbox::v1::CdpFrame>* stream,
             CdpRelay& relay);

}  // namespace sbx::agent

#endif  // SBX_AGENT_DAEMON_STREAM_RELAYS_H_
