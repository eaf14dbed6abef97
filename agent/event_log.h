// EventLog: one session's events, numbered 1, 2, 3... with no gaps, kept in memory so a client that
// reconnects resumes from the last seq it saw. Output is retained up to a byte budget: past it, the oldest
// output chunks that a client has already received, or that belong to a finished call, give up their data
// (the event stays, marked with dropped_bytes), so a chatty session cannot grow the agent without bound.
// Output nobody has received yet of a running call is never dropped (the session kills a command whose
// output exceeds the policy's budget). Events are shared, immutable: readers copy pointers, not payloads.
// Thread-safe: writers append from the session's threads, readers (RPC handlers) wait for new events.
#ifndef SBX_AGENT_EVENT_LOG_H_
#define SBX_AGENT_EVENT_LOG_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "duvo/sandbox/v1/session.pb.h"

namespace sbx::agent {

class EventLog {
 public:
  using EventPtr = std::shared_ptr<const duvo::sandbox::v1::Event>;

  // `max_output_bytes`: output data retained at most (older chunks are dropped first).
  explicit EventLog(std::string session_id, uint64_t max_output_bytes = 64ull << 20);

  // Appends `event`, setting its seq, session id and time; returns the seq. After Close, does nothing and
  // returns 0.
  uint64_t Append(duvo::sandbox::v1::Event event);

  enum class ReadResult { kEvents, kClosed, kTimeout, kStopped };
  // Copies up to `max` events with seq > after_seq into `out`. When there are none yet, waits until one is
  // appended, the log is closed (kClosed: nothing more will come), `deadline` passes (kTimeout), or `stop()`
  // returns true (checked every 100 ms; kStopped).
  template <typename StopFn>
  ReadResult Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline, StopFn stop,
                  std::vector<EventPtr>* out);

  // A client has received every event up to `seq` (a watermark: it only grows).
  void MarkDelivered(uint64_t seq);

  // No more events: wakes every reader.
  void Close();
  bool closed() const;
  uint64_t last_seq() const;

 private:
  const std::string session_id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  const uint64_t max_output_bytes_;
  std::vector<EventPtr> events_;  // GUARDED_BY(mu_); events_[i]->seq() == i + 1
  uint64_t output_bytes_ = 0;     // GUARDED_BY(mu_): output data held
  size_t oldest_output_ = 0;      // GUARDED_BY(mu_): no output data is held before this index
  std::set<std::string> finished_calls_;  // GUARDED_BY(mu_)
  uint64_t delivered_seq_ = 0;            // GUARDED_BY(mu_)
  void TrimLocked();
  bool closed_ = false;           // GUARDED_BY(mu_)
};

template <typename StopFn>
EventLog::ReadResult EventLog::Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline,
                                    StopFn stop, std::vector<EventPtr>* out) {
  std::unique_lock lock(mu_);
  for (;;) {
    if (after_seq < events_.size()) {
      for (size_t i = after_seq; i < events_.size() && out->size() < max; ++i) out->push_back(events_[i]);
      return ReadResult::kEvents;
    }
    if (closed_) return ReadResult::kClosed;
    if (stop()) return ReadResult::kStopped;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return ReadResult::kTimeout;
    cv_.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
}

}  // namespace sbx::agent

#endif  // SBX_AGENT_EVENT_LOG_H_
