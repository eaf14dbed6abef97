// EventLog: one session's events, numbered 1, 2, 3... with no gaps, kept in memory so a client that
// reconnects resumes from the last seq it saw. Everything in it came out of a jail, so it is bounded by the
// policy's budgets (DESIGN rule 5), enforced here and nowhere else:
// - Output is coalesced: a chunk stays open while its stream keeps writing, up to kOutputHold and
//   kOutputChunkBytes, so a workload writing a byte at a time makes ~one event per stream per kOutputHold,
//   not one per write. Offsets stay exact. Readers are not handed an open chunk until it closes.
// - limits.event_log_max_events / event_log_max_bytes (payloads and each event's metadata): past either, the
//   log gives up, in this order, (1) the payloads of output and file chunks a client acknowledged or of
//   finished calls (the event stays, with dropped_bytes), (2) whole events a client acknowledged, or of
//   finished calls, or session-wide ones, (3) the oldest events left. Events given up are replaced by one
//   `dropped` marker per run of seqs (its seq is the run's last), so a resuming client sees exactly what is
//   gone; nothing is lost silently. Output nobody took of a running call is only lost at (3).
// - A live caller is not outrun: while the Call stream of a call is attached (AttachReader), AppendOutput
//   of that call waits once kLiveWindowBytes of its output are unsent, so the init client's reader stops
//   reading, sandbox-init's queue to the agent fills, init stops reading the command's pipes
//   (sandbox/init/server.cc, UpdatePause) and the command blocks in write(2), as behind a pipe to a slow
//   reader. Nothing of it is dropped. A caller that carries nothing for kLiveStall (it stopped reading, or
//   its connection did) no longer holds the source back: the budgets above apply again, so a client cannot
//   stall the session for good. Without an attached caller (a detached call, Events-only clients, the
//   fleet) output never waits and the budgets alone bound it.
// - limits.file_events_max_bytes: file payloads (screenshots, downloads) held at once; a file past it is not
//   appended, a `dropped` event says so. A file chunk's payload is released once acknowledged.
// "Acknowledged": an Events request's ack_seq or the fleet's ack (MarkDelivered, a watermark), or the Call
// stream of the event's own call carried it (MarkSent). Another client's Events stream does not count: it
// must not take a screenshot's bytes from the caller that asked for it.
// Events are shared, immutable once handed out: readers copy pointers, not payloads.
// Thread-safe: writers append from the session's threads, readers (RPC handlers) wait for new events.
#ifndef SBX_AGENT_SESSION_EVENT_LOG_H_
#define SBX_AGENT_SESSION_EVENT_LOG_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "duvo/sandbox/v1/session.pb.h"

namespace sbx::agent {

// The policy's budgets (sandbox::Limits event_log_max_events, event_log_max_bytes, file_events_max_bytes).
struct EventLogLimits {
  uint64_t max_events = 100000;
  uint64_t max_bytes = 256ull << 20;
  uint64_t max_file_bytes = 128ull << 20;
};

// The call id an event belongs to, or "" for session-wide events.
const std::string& CallIdOf(const duvo::sandbox::v1::Event& e);

class EventLog {
 public:
  using EventPtr = std::shared_ptr<const duvo::sandbox::v1::Event>;

  using Limits = EventLogLimits;
  // How long an output chunk stays open for more writes of its stream, and its largest size.
  static constexpr std::chrono::milliseconds kOutputHold{5};
  // 1 MiB: one gRPC message per chunk, and each message costs the daemon wake-ups and syscalls whatever its
  // size (perf: most of the streaming time was the gRPC thread's per-message scheduling and copies).
  static constexpr size_t kOutputChunkBytes = 1 << 20;
  // A live caller's window: its call's output appended and not yet carried by its Call stream, past which
  // AppendOutput waits (see above). A few chunks: enough to keep the stream busy while init refills.
  static constexpr uint64_t kLiveWindowBytes = 8 << 20;
  // How long an attached caller may carry nothing before its call's output stops waiting for it.
  static constexpr std::chrono::seconds kLiveStall{5};
  // What one held event costs besides its serialized size (the Event object, its strings' headers, the
  // shared_ptr's control block, the map node): an estimate, so metadata counts against max_bytes.
  static constexpr uint64_t kEventOverheadBytes = 256;

  explicit EventLog(std::string session_id, Limits limits = {});

  // Appends `event`, setting its seq, session id and time, after making its text valid UTF-8
  // (agent/session/jail_text.h); returns the seq. After Close, does nothing and returns 0.
  uint64_t Append(duvo::sandbox::v1::Event event);
  // The same, calling `before_readers` with the event as appended (seq set) before any reader can see it,
  // under the log's lock: it must not touch this log. For what has to be durable before anyone is told.
  uint64_t Append(duvo::sandbox::v1::Event event,
                  const std::function<void(const duvo::sandbox::v1::Event&)>& before_readers);

  // Output of a call: joins the open chunk when it is the newest event, of the same call and stream, ends at
  // `offset`, and has room and time left; else appends a new chunk, which takes `data` itself (moved in: bulk
  // output arrives in chunks of up to 256 KiB, and a copy of each was most of the daemon's streaming cost).
  // Returns the chunk's seq (0 after Close).
  uint64_t AppendOutput(const std::string& call_id, duvo::sandbox::v1::OutputStream stream, uint64_t offset,
                        std::string data);

  // A whole file as chunk events of at most `chunk_bytes` (sha256 on the last). When the file payloads held
  // would pass limits.file_events_max_bytes, appends one `dropped` event instead and returns
  // ResourceExhausted naming the field.
  absl::Status AppendFile(const std::string& call_id, const std::string& path, std::string_view data,
                          const std::string& sha256, size_t chunk_bytes);

  enum class ReadResult { kEvents, kClosed, kTimeout, kStopped };
  // Copies up to `max` events with seq > after_seq into `out` (a `dropped` marker for a run the log gave
  // up). When there are none yet, waits until one is appended, the log is closed (kClosed: nothing more
  // will come), `deadline` passes (kTimeout), or `stop()` returns true (checked every 100 ms; kStopped).
  template <typename StopFn>
  ReadResult Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline, StopFn stop,
                  std::vector<EventPtr>* out);

  // A client holds every event up to `seq` (a watermark: it only grows).
  void MarkDelivered(uint64_t seq);
  // The Call stream of the event's own call carried event `seq`.
  void MarkSent(uint64_t seq);
  // The Call stream of `call_id` is attached and reading (counted: an idempotent replay may attach twice);
  // DetachReader when it stops. While attached, the call's output waits for it (kLiveWindowBytes).
  void AttachReader(const std::string& call_id);
  void DetachReader(const std::string& call_id);

  // No more events: wakes every reader.
  void Close();
  bool closed() const;
  uint64_t last_seq() const;

  // What the log holds now (for tests and metrics).
  struct Usage {
    uint64_t events = 0;      // held events, markers included
    uint64_t bytes = 0;       // their estimated cost
    uint64_t file_bytes = 0;  // file payloads held
  };
  Usage usage() const;

 private:
  struct Record {
    std::shared_ptr<duvo::sandbox::v1::Event> event;
    uint64_t cost = 0;
    bool sent = false;  // MarkSent
  };
  // A call's output flow, for its live caller's window.
  struct CallFlow {
    int readers = 0;       // attached Call streams
    uint64_t pending = 0;  // output payload held and not yet sent (MarkSent)
    std::chrono::steady_clock::time_point progress;  // the last attach, or event its stream carried
  };
  // The output payload of `r` leaves the call's pending bytes (sent, stripped or dropped unsent).
  void UnpendLocked(const Record& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits while `call_id`'s live caller is a window behind (see the header comment).
  void AwaitLiveReaderLocked(const std::string& call_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t AppendLocked(duvo::sandbox::v1::Event event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddLocked(uint64_t seq, std::shared_ptr<duvo::sandbox::v1::Event> event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AcknowledgedLocked(uint64_t seq, const Record& r) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool OfRunningCallLocked(const duvo::sandbox::v1::Event& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StripPayloadLocked(Record* r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropLocked(std::map<uint64_t, Record>::iterator it, const char* budget) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TrimLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  template <typename StopFn>
  bool HoldOpenChunkLocked(uint64_t after_seq, std::chrono::steady_clock::time_point deadline, StopFn& stop)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits on cv_ until `until` at the latest (a steady-clock time; absl's waits take a duration).
  void WaitUntilLocked(std::chrono::steady_clock::time_point until) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    (void)cv_.WaitWithTimeout(&mu_, absl::FromChrono(until - std::chrono::steady_clock::now()));
  }

  const std::string session_id_;
  const Limits limits_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::map<uint64_t, Record> events_ ABSL_GUARDED_BY(mu_);  // by seq; a dropped run is one marker at its last seq
  uint64_t last_seq_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;          // the records' cost
  uint64_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;     // file payloads held
  uint64_t delivered_seq_ ABSL_GUARDED_BY(mu_) = 0;
  std::set<std::string> running_calls_ ABSL_GUARDED_BY(mu_);  // started (or with output) and not finished
  uint64_t open_seq_ ABSL_GUARDED_BY(mu_) = 0;  // the open output chunk (the newest event), or 0
  std::map<std::string, CallFlow> flows_ ABSL_GUARDED_BY(mu_);  // of running calls, and attached ones
  int waiting_writers_ ABSL_GUARDED_BY(mu_) = 0;                // in AwaitLiveReaderLocked
  std::chrono::steady_clock::time_point open_since_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

// NOTE: returns true when it waited (the caller looks again), false when the events can be handed out.
template <typename StopFn>
bool EventLog::HoldOpenChunkLocked(uint64_t after_seq, std::chrono::steady_clock::time_point deadline,
                                   StopFn& stop) {
  // Only the newest event can be open: hold it back when it is all there is to hand out.
  if (open_seq_ == 0 || after_seq + 1 != open_seq_ || closed_) return false;
  const auto now = std::chrono::steady_clock::now();
  const auto ripe = open_since_ + kOutputHold;
  if (now >= ripe || now >= deadline || stop()) return false;
  WaitUntilLocked(std::min(deadline, ripe));
  return true;
}

template <typename StopFn>
EventLog::ReadResult EventLog::Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline,
                                    StopFn stop, std::vector<EventPtr>* out) {
  absl::MutexLock lock(&mu_);
  for (;;) {
    if (after_seq < last_seq_) {
      if (HoldOpenChunkLocked(after_seq, deadline, stop)) continue;
      for (auto it = events_.upper_bound(after_seq); it != events_.end() && out->size() < max; ++it) {
        // A following reader gets the open chunk only when it is all there is (ripe, HoldOpenChunkLocked):
        // behind closed ones it keeps filling, so bulk output goes in whole chunks.
        if (it->first == open_seq_ && !out->empty() && std::chrono::steady_clock::now() < deadline) break;
        if (it->first == open_seq_) open_seq_ = 0;  // handed out: nothing joins it any more
        out->push_back(it->second.event);
      }
      return ReadResult::kEvents;
    }
    if (closed_) return ReadResult::kClosed;
    if (stop()) return ReadResult::kStopped;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return ReadResult::kTimeout;
    WaitUntilLocked(std::min(deadline, now + std::chrono::milliseconds(100)));
  }
}

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_EVENT_LOG_H_
