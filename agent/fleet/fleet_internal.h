// Private to agent/fleet/fleet_*.cc: the outbox record kinds and bounds of fleet mode, the helpers its files
// share, and FleetAgent::Lease, one lease's state shared by its pump, streamer, reader and driver threads.
#ifndef SBX_AGENT_FLEET_FLEET_INTERNAL_H_
#define SBX_AGENT_FLEET_FLEET_INTERNAL_H_

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "base/clock.h"
#include "agent/fleet/fleet_agent.h"
#include "duvo/sandbox/v1/agent_state.pb.h"

namespace sbx::agent {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

inline constexpr char kLeaseKind[] = "lease";
inline constexpr char kOutcomeKind[] = "outcome";
inline constexpr char kFinishedKind[] = "finished";
// A lease's HumanRequest / HumanDecision events, journaled as they happen (payload: the Event), so that the
// report of a session lost with the agent still has every decision; acked once the lease's outcome is.
inline constexpr char kApprovalKind[] = "approval";
// Finished leases remembered in the outbox (FinishedLeaseRecord): the newest this many, for this long.
inline constexpr size_t kFinishedLeases = 20000;
inline constexpr int64_t kFinishedMaxAgeMs = 24 * 3600 * 1000;
// A LeaseResponse with more grants than the free capacity asked for plus this is refused whole.
inline constexpr uint64_t kLeaseSurplus = 16;
// Refused lease ids kept to send (and remembered so as not to reconcile them); sent at most this many a
// heartbeat.
inline constexpr size_t kRefusedLeases = 100000;
inline constexpr size_t kRefusedPerHeartbeat = 10000;
// Held leases considered per heartbeat answer (the rest come again in the next).
inline constexpr int kReconcilePerHeartbeat = 1024;
// Lease ids remembered for duplicate detection beyond those in the outbox.
inline constexpr size_t kKnownLeases = 100000;
// A lease's ttl from the control plane: 0 is 30 s; at most a day (a larger value would overflow the clock).
inline milliseconds LeaseTtl(uint64_t ttl_ms) {
  return milliseconds(ttl_ms == 0 ? 30000 : std::min<uint64_t>(ttl_ms, 24 * 3600 * 1000));
}

// Events a report carries for the control plane to fill its gaps; output and file data beyond it travel as
// dropped_bytes.
inline constexpr size_t kReportEventBytes = 2 << 20;
inline constexpr size_t kReportMaxBytes = 3 << 20;    // all its events (an outbox record holds at most 4 MiB)
// After the session ended, how long the stream may take to have its last events acknowledged.
inline constexpr milliseconds kFinalAckWait{2000};

std::string GrpcError(const grpc::Status& s);
pb::Outcome Failed(const std::string& reason, const std::string& message);

// A lost session's approval events, journaled under its lease (kApprovalKind): in seq order, then, for each
// request with no decision among them, a HumanDecision CANCELED with seq 0 (made after the session's log was
// gone, so it has no seq of its own; worker.proto ReportOutcomeRequest.events).
std::vector<pb::Event> LostApprovalEvents(const std::vector<OutboxRecord>& records, const std::string& lease_id,
                                          const std::string& session_id);
pb::ReportOutcomeRequest LostReport(const std::string& agent_id, const std::string& lease_id,
                                    const std::string& session_id, const std::string& reason,
                                    const std::string& message);

inline constexpr char kDamagedMessage[] = "the lease's records were lost with a damaged outbox journal";

struct FleetAgent::Lease {
  std::string lease_id;
  std::string session_id;
  pb::SandboxRequest request;
  pb::LeaseRecord record;                    // as journaled
  uint64_t record_id = 0;                    // the outbox's lease record
  std::atomic<int64_t> expires_ns{0};        // steady clock
  std::atomic<uint64_t> acked_seq{0};        // the control plane holds every event up to here
  std::atomic<bool> finished{false};         // the pump is done (the outcome is journaled)
  std::shared_ptr<Session> session;          // set by the pump before it is visible to other threads' use
  std::atomic<bool> has_session{false};

  // The outbox records of its approval events (kApprovalKind). Shared with the session's Approvals observer,
  // which may outlive this lease; `closed` once the outcome is journaled (the events are in it).
  struct ApprovalJournal {
    absl::Mutex mu;
    bool closed ABSL_GUARDED_BY(mu) = false;
    std::vector<uint64_t> ids ABSL_GUARDED_BY(mu);
  };
  std::shared_ptr<ApprovalJournal> approval_journal = std::make_shared<ApprovalJournal>();

  // The commands carried out (by command id) and the uploads in progress (fleet_agent.cc).
  absl::Mutex cmd_mu;
  std::set<std::string> commands_seen ABSL_GUARDED_BY(cmd_mu);
  struct Upload {
    // The upload's tool call (Session::BeginUpload, at its first chunk) until it ends: its events, and no
    // file left unless it succeeded.
    std::unique_ptr<Session::Upload> call;
    uint64_t next_offset = 0;
    bool done = false;
    // Approvals "upload": asked at the first chunk; the chunks wait in `held` until the decision.
    enum class Gate { kUnasked, kWaiting, kApproved } gate = Gate::kUnasked;
    std::vector<pb::UploadPart> held;
    uint64_t held_bytes = 0;
  };
  std::map<std::string, Upload> uploads ABSL_GUARDED_BY(cmd_mu);

  // The Attach stream: the streamer (re)connects it while the session runs; the pump stops it once the
  // outcome is journaled, canceling the stream in flight.
  absl::Mutex stream_mu;
  bool stream_stop ABSL_GUARDED_BY(stream_mu) = false;
  grpc::ClientContext* stream_ctx ABSL_GUARDED_BY(stream_mu) = nullptr;  // the stream in flight
  std::atomic<bool> stream_ended{false};      // the streamer is done
  std::atomic<bool> pump_done{false};         // the pump returned (or is about to): joining it is immediate

  void StopStream() {
    {
      absl::MutexLock lock(&stream_mu);
      stream_stop = true;
      if (stream_ctx != nullptr) stream_ctx->TryCancel();
    }
    NotifyProgress();
  }
  bool stream_stopped() {
    absl::MutexLock lock(&stream_mu);
    return stream_stop;
  }

  // Progress of the stream, for the threads that wait on it: acked_seq grew, the streamer or a stream's
  // reader ended, a write failed, the stream was stopped. Lock order: progress_mu before stream_mu.
  absl::Mutex progress_mu;
  absl::CondVar progress_cv;
  void NotifyProgress() {
    absl::MutexLock lock(&progress_mu);
    progress_cv.SignalAll();
  }
  // Waits until `done()` (checked with progress_mu held) or `deadline`.
  template <typename Done>
  void WaitProgress(Clock::time_point deadline, Done done) {
    absl::MutexLock lock(&progress_mu);
    while (!done()) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) return;
      progress_cv.WaitWithTimeout(&progress_mu, absl::FromChrono(deadline - now));
    }
  }
  // Raises acked_seq to `seq` (it only grows).
  void Ack(uint64_t seq) {
    uint64_t seen = acked_seq.load();
    while (seq > seen && !acked_seq.compare_exchange_weak(seen, seq)) {
    }
    NotifyProgress();
  }

  std::jthread driver;
  std::jthread streamer;
  std::jthread pump;  // last

  Clock::time_point expires() const { return Clock::time_point(Clock::duration(expires_ns.load())); }
  void set_expires(Clock::time_point t) { expires_ns.store(t.time_since_epoch().count()); }
};

template <typename Done>
void FleetAgent::WaitLocked(Clock::time_point deadline, Done done) {
  while (!done()) {
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return;
    cv_.WaitWithTimeout(&mu_, absl::FromChrono(deadline - now));
  }
}

template <typename Done>
void FleetAgent::WaitFor(const std::stop_token& stop, milliseconds d, Done done) {
  const Clock::time_point deadline = Clock::now() + d;
  // A stop request wakes the wait: the callback runs on the requesting thread (here, at once, when the stop
  // was requested already), before mu_ is taken below.
  std::stop_callback wake(stop, [this] {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  });
  absl::MutexLock lock(&mu_);
  WaitLocked(deadline, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop.stop_requested() || done(); });
}

}  // namespace sbx::agent

#endif  // SBX_AGENT_FLEET_FLEET_INTERNAL_H_
