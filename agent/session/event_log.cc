#include "agent/session/event_log.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/session/jail_text.h"
#include "base/clock.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;

uint64_t PayloadOf(const pb::Event& e) {
  if (e.has_output()) return e.output().data().size();
  if (e.has_file()) return e.file().data().size();
  return 0;
}

}  // namespace

const std::string& CallIdOf(const pb::Event& e) {
  static const std::string kNone;
  switch (e.kind_case()) {
    case pb::Event::kToolCallStarted: return e.tool_call_started().call_id();
    case pb::Event::kOutput: return e.output().call_id();
    case pb::Event::kToolCallFinished: return e.tool_call_finished().call_id();
    case pb::Event::kFile: return e.file().call_id();
    case pb::Event::kAudit: return e.audit().call_id();
    case pb::Event::kHumanRequest: return e.human_request().call_id();
    case pb::Event::kHumanDecision: return e.human_decision().call_id();
    case pb::Event::kPage: return e.page().call_id();
    case pb::Event::kDropped: return e.dropped().call_id();
    default: return kNone;
  }
}

EventLog::EventLog(std::string session_id, Limits limits)
    : session_id_(std::move(session_id)), limits_(limits) {}

uint64_t EventLog::Append(pb::Event event) {
  uint64_t seq;
  {
    absl::MutexLock lock(&mu_);
    seq = AppendLocked(std::move(event));
  }
  if (seq != 0) cv_.SignalAll();
  return seq;
}

uint64_t EventLog::Append(pb::Event event, const std::function<void(const pb::Event&)>& before_readers) {
  uint64_t seq;
  {
    absl::MutexLock lock(&mu_);
    seq = AppendLocked(std::move(event));
    if (seq != 0) {
      auto it = events_.find(seq);
      if (it != events_.end() && it->second.event != nullptr) before_readers(*it->second.event);
    }
  }
  if (seq != 0) cv_.SignalAll();
  return seq;
}

uint64_t EventLog::AppendLocked(pb::Event event) {
  if (closed_) return 0;
  // The one place jail text is made valid UTF-8: every event passes here (agent/session/jail_text.h).
  SanitizeUtf8(&event);
  open_seq_ = 0;
  const uint64_t seq = ++last_seq_;
  event.set_seq(seq);
  event.set_session_id(session_id_);
  event.set_unix_ms(UnixMs());
  if (event.has_tool_call_started()) running_calls_.insert(event.tool_call_started().call_id());
  if (event.has_output()) running_calls_.insert(event.output().call_id());
  if (event.has_tool_call_finished()) {
    const std::string& call = event.tool_call_finished().call_id();
    running_calls_.erase(call);
    auto flow = flows_.find(call);
    if (flow != flows_.end() && flow->second.readers == 0) flows_.erase(flow);
  }
  AddLocked(seq, std::make_shared<pb::Event>(std::move(event)));
  TrimLocked();
  return seq;
}

void EventLog::AddLocked(uint64_t seq, std::shared_ptr<pb::Event> event) {
  Record r;
  r.cost = event->ByteSizeLong() + kEventOverheadBytes;
  if (event->has_file()) file_bytes_ += event->file().data().size();
  if (event->has_output()) flows_[event->output().call_id()].pending += event->output().data().size();
  r.event = std::move(event);
  bytes_ += r.cost;
  events_[seq] = std::move(r);
}

uint64_t EventLog::AppendOutput(const std::string& call_id, pb::OutputStream stream, uint64_t offset,
                                std::string data) {
  {
    absl::MutexLock lock(&mu_);
    AwaitLiveReaderLocked(call_id);
    if (closed_) return 0;
    if (open_seq_ != 0 && open_seq_ == last_seq_) {
      Record& r = events_.rbegin()->second;
      pb::Output* open = r.event->mutable_output();
      // NOTE: nobody else holds the open chunk (Read closes it before handing it out), so it may change.
      if (open->call_id() == call_id && open->stream() == stream &&
          open->offset() + open->data().size() == offset && open->data().size() + data.size() <= kOutputChunkBytes &&
          std::chrono::steady_clock::now() - open_since_ < kOutputHold) {
        // Room for the whole chunk at once: growing it by doubling would copy it again at each step.
        if (open->data().capacity() < kOutputChunkBytes) open->mutable_data()->reserve(kOutputChunkBytes);
        open->mutable_data()->append(data);
        r.cost += data.size();
        bytes_ += data.size();
        flows_[call_id].pending += data.size();
        const uint64_t seq = open_seq_;
        TrimLocked();
        return seq;  // readers are woken by the chunk's opening, and look again when it ripens
      }
    }
  }
  pb::Event event;
  pb::Output* out = event.mutable_output();
  out->set_call_id(call_id);
  out->set_stream(stream);
  out->set_offset(offset);
  out->set_data(std::move(data));
  uint64_t seq;
  {
    absl::MutexLock lock(&mu_);
    seq = AppendLocked(std::move(event));
    if (seq != 0 && events_.count(seq) != 0) {
      open_seq_ = seq;
      open_since_ = std::chrono::steady_clock::now();
    }
  }
  if (seq != 0) cv_.SignalAll();
  return seq;
}

absl::Status EventLog::AppendFile(const std::string& call_id, const std::string& path, std::string_view data,
                                  const std::string& sha256, size_t chunk_bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::FailedPreconditionError("the session has ended");
    if (file_bytes_ + data.size() > limits_.max_file_bytes) {
      const std::string message =
          absl::StrCat(path, ": ", data.size(), " bytes would take the file payloads this session holds (",
                       file_bytes_, " bytes not yet acknowledged) past limits.file_events_max_bytes (",
                       limits_.max_file_bytes, "); it was not sent as file events");
      pb::Event event;
      pb::Dropped* d = event.mutable_dropped();
      d->set_budget("limits.file_events_max_bytes");
      d->set_bytes(data.size());
      d->set_call_id(call_id);
      d->set_path(path);
      d->set_detail(message);
      AppendLocked(std::move(event));
      cv_.SignalAll();
      return absl::ResourceExhaustedError(message);
    }
    // NOTE: under one lock, so the file's chunks are consecutive events.
    for (size_t offset = 0;;) {
      const size_t n = std::min(data.size() - offset, chunk_bytes);
      pb::Event event;
      pb::FileChunk* chunk = event.mutable_file();
      chunk->set_path(path);
      chunk->set_call_id(call_id);
      chunk->set_offset(offset);
      chunk->set_data(std::string(data.substr(offset, n)));
      offset += n;
      const bool last = offset >= data.size();
      if (last) {
        chunk->set_last(true);
        chunk->set_sha256(sha256);
      }
      AppendLocked(std::move(event));
      if (last) break;
    }
  }
  cv_.SignalAll();
  return absl::OkStatus();
}

bool EventLog::AcknowledgedLocked(uint64_t seq, const Record& r) const { return seq <= delivered_seq_ || r.sent; }

bool EventLog::OfRunningCallLocked(const pb::Event& e) const {
  const std::string& call = CallIdOf(e);
  return !call.empty() && running_calls_.count(call) != 0;
}

void EventLog::StripPayloadLocked(Record* r) {
  const pb::Event& old = *r->event;
  const uint64_t size = PayloadOf(old);
  if (size == 0) return;
  UnpendLocked(*r);
  // NOTE: built field by field: copying the event and clearing its data would keep the buffer's capacity.
  // Readers holding the old event keep their copy.
  auto stub = std::make_shared<pb::Event>();
  stub->set_seq(old.seq());
  stub->set_session_id(old.session_id());
  stub->set_unix_ms(old.unix_ms());
  if (old.has_output()) {
    pb::Output* out = stub->mutable_output();
    out->set_call_id(old.output().call_id());
    out->set_stream(old.output().stream());
    out->set_offset(old.output().offset());
    out->set_dropped_bytes(size);
  } else {
    pb::FileChunk* f = stub->mutable_file();
    const pb::FileChunk& o = old.file();
    f->set_path(o.path());
    f->set_path_bytes(o.path_bytes());
    f->set_call_id(o.call_id());
    f->set_offset(o.offset());
    f->set_last(o.last());
    f->set_sha256(o.sha256());
    f->set_dropped_bytes(size);
    file_bytes_ -= size;
  }
  if (old.seq() == open_seq_) open_seq_ = 0;
  const uint64_t cost = stub->ByteSizeLong() + kEventOverheadBytes;
  bytes_ = bytes_ - r->cost + cost;
  r->cost = cost;
  r->event = std::move(stub);
}

void EventLog::DropLocked(std::map<uint64_t, Record>::iterator it, const char* budget) {
  // The run this event joins: a marker just before it and/or just after it.
  uint64_t first = it->first, last = it->first, events = 1, bytes = PayloadOf(*it->second.event);
  if (it->second.event->has_dropped() && it->second.event->dropped().first_seq() != 0) {
    first = it->second.event->dropped().first_seq();
    events = it->second.event->dropped().events();
    bytes = it->second.event->dropped().bytes();
  }
  if (it->first == open_seq_) open_seq_ = 0;
  UnpendLocked(it->second);
  if (it->second.event->has_file()) file_bytes_ -= it->second.event->file().data().size();
  bytes_ -= it->second.cost;
  it = events_.erase(it);
  const auto is_run = [](const Record& r) { return r.event->has_dropped() && r.event->dropped().first_seq() != 0; };
  if (it != events_.begin()) {
    auto prev = std::prev(it);
    if (is_run(prev->second) && prev->first + 1 == first) {
      first = prev->second.event->dropped().first_seq();
      events += prev->second.event->dropped().events();
      bytes += prev->second.event->dropped().bytes();
      bytes_ -= prev->second.cost;
      events_.erase(prev);
    }
  }
  if (it != events_.end() && is_run(it->second) && it->second.event->dropped().first_seq() == last + 1) {
    last = it->first;
    events += it->second.event->dropped().events();
    bytes += it->second.event->dropped().bytes();
    bytes_ -= it->second.cost;
    events_.erase(it);
  }
  auto marker = std::make_shared<pb::Event>();
  marker->set_seq(last);
  marker->set_session_id(session_id_);
  marker->set_unix_ms(UnixMs());
  pb::Dropped* d = marker->mutable_dropped();
  d->set_budget(budget);
  d->set_first_seq(first);
  d->set_last_seq(last);
  d->set_events(events);
  d->set_bytes(bytes);
  d->set_detail(absl::StrCat("the session's event log reached ", budget, "; events ", first, "..", last,
                             " are no longer held"));
  AddLocked(last, std::move(marker));
}

void EventLog::TrimLocked() {
  const auto over = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return events_.size() > limits_.max_events || bytes_ > limits_.max_bytes; };
  if (!over()) return;
  // Down to 7/8 of each budget, so trimming (a pass over the log) happens once per many appends.
  const uint64_t target_events = limits_.max_events - limits_.max_events / 8;
  const uint64_t target_bytes = limits_.max_bytes - limits_.max_bytes / 8;
  const auto above_target = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return events_.size() > target_events || bytes_ > target_bytes; };
  const auto budget = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return events_.size() > target_events ? "limits.event_log_max_events" : "limits.event_log_max_bytes";
  };
  // (1) Payloads a client acknowledged, or of finished calls.
  for (auto it = events_.begin(); it != events_.end() && bytes_ > target_bytes; ++it) {
    if (AcknowledgedLocked(it->first, it->second) || !OfRunningCallLocked(*it->second.event)) {
      StripPayloadLocked(&it->second);
    }
  }
  // (2) Whole events a client acknowledged, of finished calls, or session-wide; never the newest (it may be
  // a marker this pass just made, or the event being appended).
  for (auto it = events_.begin(); it != events_.end() && above_target();) {
    const uint64_t seq = it->first;
    if (seq == last_seq_) break;
    const Record& r = it->second;
    const bool run = r.event->has_dropped() && r.event->dropped().first_seq() != 0;
    if (!run && (AcknowledgedLocked(seq, r) || !OfRunningCallLocked(*r.event))) {
      DropLocked(it, budget());
      it = events_.upper_bound(seq);
    } else {
      ++it;
    }
  }
  // (3) Still over: the oldest events left, whatever they are.
  for (auto it = events_.begin(); it != events_.end() && above_target();) {
    const uint64_t seq = it->first;
    if (seq == last_seq_) break;
    const bool run = it->second.event->has_dropped() && it->second.event->dropped().first_seq() != 0;
    if (!run) {
      DropLocked(it, budget());
      it = events_.upper_bound(seq);
    } else {
      ++it;
    }
  }
}

void EventLog::MarkDelivered(uint64_t seq) {
  absl::MutexLock lock(&mu_);
  if (seq <= delivered_seq_) return;
  // File payloads are released once acknowledged; output stays until the byte budget needs it.
  for (auto it = events_.upper_bound(delivered_seq_); it != events_.end() && it->first <= seq; ++it) {
    if (it->second.event->has_file()) StripPayloadLocked(&it->second);
  }
  delivered_seq_ = seq;
  TrimLocked();
}

void EventLog::MarkSent(uint64_t seq) {
  absl::MutexLock lock(&mu_);
  auto it = events_.find(seq);
  if (it == events_.end()) return;
  if (!it->second.sent && it->second.event->has_output()) {
    UnpendLocked(it->second);
    auto flow = flows_.find(it->second.event->output().call_id());
    if (flow != flows_.end()) flow->second.progress = std::chrono::steady_clock::now();
  }
  it->second.sent = true;
  if (it->second.event->has_file()) StripPayloadLocked(&it->second);
  TrimLocked();
  if (waiting_writers_ > 0) cv_.SignalAll();
}

void EventLog::UnpendLocked(const Record& r) {
  if (r.sent || !r.event->has_output()) return;
  auto flow = flows_.find(r.event->output().call_id());
  if (flow == flows_.end()) return;
  const uint64_t size = r.event->output().data().size();
  flow->second.pending -= std::min(flow->second.pending, size);
}

void EventLog::AwaitLiveReaderLocked(const std::string& call_id) {
  for (;;) {
    if (closed_) return;
    auto it = flows_.find(call_id);
    if (it == flows_.end() || it->second.readers == 0 || it->second.pending < kLiveWindowBytes) return;
    const auto stalled = it->second.progress + kLiveStall;
    const auto now = std::chrono::steady_clock::now();
    if (now >= stalled) return;  // the caller stopped carrying: the budgets rule again
    // The open chunk goes to the caller now rather than when it ripens: nothing joins it while we wait.
    if (open_seq_ != 0) {
      open_seq_ = 0;
      cv_.SignalAll();
    }
    ++waiting_writers_;
    WaitUntilLocked(std::min(stalled, now + std::chrono::milliseconds(100)));
    --waiting_writers_;
  }
}

void EventLog::AttachReader(const std::string& call_id) {
  absl::MutexLock lock(&mu_);
  if (closed_) return;
  CallFlow& flow = flows_[call_id];
  ++flow.readers;
  flow.progress = std::chrono::steady_clock::now();
}

void EventLog::DetachReader(const std::string& call_id) {
  {
    absl::MutexLock lock(&mu_);
    auto flow = flows_.find(call_id);
    if (flow == flows_.end()) return;
    if (flow->second.readers > 0) --flow->second.readers;
    if (flow->second.readers == 0 && running_calls_.count(call_id) == 0) flows_.erase(flow);
  }
  cv_.SignalAll();  // a writer waiting for this reader goes on
}

void EventLog::Close() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    open_seq_ = 0;
  }
  cv_.SignalAll();
}

bool EventLog::closed() const {
  absl::MutexLock lock(&mu_);
  return closed_;
}

uint64_t EventLog::last_seq() const {
  absl::MutexLock lock(&mu_);
  return last_seq_;
}

EventLog::Usage EventLog::usage() const {
  absl::MutexLock lock(&mu_);
  return Usage{events_.size(), bytes_, file_bytes_};
}

}  // namespace sbx::agent
