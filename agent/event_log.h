// EventLog: one session's events, numbered 1, 2, 3... with no gaps, kept in memory so a client that
// reconnects resumes from the last seq it saw and loses nothing. Thread-safe: writers append from the
// session's threads, readers (RPC handlers) wait for new events.
#ifndef SBX_AGENT_EVENT_LOG_H_
#define SBX_AGENT_EVENT_LOG_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

#include "duvo/sandbox/v1/session.pb.h"

namespace sbx::agent {

class EventLog {
 public:
  explicit EventLog(std::string session_id);

  // Appends `event`, setting its seq, session id and time; returns the seq. After Close, does nothing and
  // returns 0.
  uint64_t Append(duvo::sandbox::v1::Event event);

  enum class ReadResult { kEvents, kClosed, kTimeout, kStopped };
  // Copies up to `max` events with seq > after_seq into `out`. When there are none yet, waits until one is
  // appended, the log is closed (kClosed: nothing more will come), `deadline` passes (kTimeout), or `stop()`
  // returns true (checked every 100 ms; kStopped).
  template <typename StopFn>
  ReadResult Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline, StopFn stop,
                  std::vector<duvo::sandbox::v1::Event>* out);

  // No more events: wakes every reader.
  void Close();
  bool closed() const;
  uint64_t last_seq() const;

 private:
  const std::string session_id_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<duvo::sandbox::v1::Event> events_;  // GUARDED_BY(mu_); events_[i].seq() == i + 1
  bool closed_ = false;                           // GUARDED_BY(mu_)
};

template <typename StopFn>
EventLog::ReadResult EventLog::Read(uint64_t after_seq, size_t max, std::chrono::steady_clock::time_point deadline,
                                    StopFn stop, std::vector<duvo::sandbox::v1::Event>* out) {
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
