#include "agent/event_log.h"

#include <chrono>

namespace sbx::agent {

EventLog::EventLog(std::string session_id, uint64_t max_output_bytes)
    : session_id_(std::move(session_id)), max_output_bytes_(max_output_bytes) {}

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
    if (event.has_output()) output_bytes_ += event.output().data().size();
    if (event.has_tool_call_finished()) finished_calls_.insert(event.tool_call_finished().call_id());
    events_.push_back(std::make_shared<const duvo::sandbox::v1::Event>(std::move(event)));
    TrimLocked();
  }
  cv_.notify_all();
  return seq;
}

void EventLog::TrimLocked() {
  // Over budget: the oldest output chunks already received by a client, or of finished calls, give up their
  // data. Readers holding a chunk keep their copy.
  while (output_bytes_ > max_output_bytes_ && oldest_output_ < events_.size()) {
    const EventPtr& old = events_[oldest_output_];
    if (old->has_output() && old->seq() > delivered_seq_ &&
        finished_calls_.count(old->output().call_id()) == 0) {
      break;
    }
    if (old->has_output() && !old->output().data().empty()) {
      // NOTE: built field by field: copying the event and clearing its data would keep the buffer's capacity.
      auto trimmed = std::make_shared<duvo::sandbox::v1::Event>();
      trimmed->set_seq(old->seq());
      trimmed->set_session_id(old->session_id());
      trimmed->set_unix_ms(old->unix_ms());
      duvo::sandbox::v1::Output* out = trimmed->mutable_output();
      out->set_call_id(old->output().call_id());
      out->set_stream(old->output().stream());
      out->set_offset(old->output().offset());
      const uint64_t size = old->output().data().size();
      out->set_dropped_bytes(size);
      output_bytes_ -= size;
      events_[oldest_output_] = std::move(trimmed);
    }
    ++oldest_output_;
  }
}

void EventLog::MarkDelivered(uint64_t seq) {
  std::lock_guard lock(mu_);
  if (seq <= delivered_seq_) return;
  delivered_seq_ = seq;
  TrimLocked();
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
