#include "agent/event_log.h"

#include <chrono>

namespace sbx::agent {

EventLog::EventLog(std::string session_id) : session_id_(std::move(session_id)) {}

uint64_t EventLog::Append(duvo::sandbox::v1::Event event) {
  uint64_t seq;
  {
    std::lock_guard lock(mu_);
    if (closed_) return 0;
    seq = events_.size() + 1;
    event.set_seq(seq);
    event.set_session_id(session_id_);
    event.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count());
    events_.push_back(std::move(event));
  }
  cv_.notify_all();
  return seq;
}

void EventLog::Close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool EventLog::closed() const {
  std::lock_guard lock(mu_);
  return closed_;
}

uint64_t EventLog::last_seq() const {
  std::lock_guard lock(mu_);
  return events_.size();
}

}  // namespace sbx::agent
