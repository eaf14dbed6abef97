#include "agent/session/session.h"

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "agent/session/cgroup_ledger.h"
#include "agent/session/jail_text.h"
#include "agent/obs/log.h"
#include "agent/run/outcome_json.h"
#include "base/clock.h"
#include "base/status.h"
#include "wire/init_protocol.pb.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

}  // namespace

Session::Session(Options options, std::unique_ptr<sandbox::Jail> jail, std::unique_ptr<sandbox::InitClient> init)
    : options_(std::move(options)),
      created_(Clock::now()),
      created_unix_ms_(UnixMs()),
      expires_(created_ + options_.ttl),
      events_(options_.id, options_.event_log),
      own_timer_(options_.timer == nullptr ? std::make_unique<Timer>() : nullptr),
      timer_(options_.timer != nullptr ? options_.timer : own_timer_.get()),
      approvals_(std::make_unique<Approvals>([this] {
        Approvals::Options o;
        o.events = &events_;
        o.timeout = std::chrono::milliseconds(options_.approvals.timeout());
        o.timer = timer_;
        return o;
      }())),
      gates_(std::make_unique<ApprovalGates>(options_.approvals)),
      jail_(std::move(jail)),
      init_(std::move(init)) {
  absl::MutexLock lock(&mu_);
  labels_ = options_.labels;
  Touch();
}

Session::~Session() {
  End(pb::Outcome::CANCELED, "canceled", "the session was deleted");
  egress_.reset();  // before the jail: its audit callback writes the event log
  if (watcher_.joinable()) watcher_.join();
  // Every request is closed (End); this cancels the deadlines on the timer, waiting for one that may still be
  // handing a decision to OnGateDecided, before the members that takes (mu_, the runner) are destroyed.
  approvals_.reset();
  std::jthread runner;
  {
    absl::MutexLock lock(&approved_.mu);
    approved_.stop = true;
    approved_.cv.SignalAll();
    runner = std::move(approved_.thread);
  }
  if (runner.joinable()) runner.join();  // finishes what it had as canceled
  {
    absl::MutexLock lock(&mu_);
    kills_closed_ = true;  // the client's reader may still see output until init_ goes
  }
  timer_->CancelAll(this);  // a pending kill is dropped, a running one finishes first
  init_.reset();  // after the watcher and the kills: joins the client's reader thread
  jail_.reset();  // kills what is left, removes the cgroup
  if (options_.ledger != nullptr) options_.ledger->Remove(options_.id);
}

void Session::Touch() {
  last_used_ns_.store(Clock::now().time_since_epoch().count());
}

Clock::time_point Session::last_used() const {
  return Clock::time_point(Clock::duration(last_used_ns_.load()));
}

bool Session::Matches(const std::map<std::string, std::string>& selector) const {
  for (const auto& [key, value] : selector) {
    absl::MutexLock lock(&mu_);
    auto it = labels_.find(key);
    if (it == labels_.end() || it->second != value) return false;
  }
  return true;
}

void Session::TakeFromPool(std::map<std::string, std::string> labels) {
  if (absl::Status s = jail_->SetCpuBackground(false); !s.ok()) {
    // NOTE: the session still works; it only gets the CPU nothing else wants.
    Log(LogLevel::kWarn, "bringing a pooled session out of the CPU background failed",
        {{"session_id", options_.id}, {"error", s.ToString()}});
  }
  Touch();  // its idle time starts now, not when the pool started it
  absl::MutexLock lock(&mu_);
  labels_ = std::move(labels);
}

bool Session::busy() const {
  absl::MutexLock lock(&mu_);
  // A call waiting for a person is not idle: the request's deadline bounds the wait, the ttl the session.
  return !running_execs_.empty() || !gated_waiting_.empty();
}

pb::Session Session::Describe() const {
  pb::Session out;
  out.set_id(options_.id);
  out.set_kind(options_.kind);
  out.set_state(ended_ ? pb::ENDED : pb::RUNNING);
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [k, v] : labels_) (*out.mutable_labels())[k] = v;
  }
  out.set_created_unix_ms(created_unix_ms_);
  out.set_expires_unix_ms(created_unix_ms_ + options_.ttl.count());
  out.set_last_seq(events_.last_seq());
  if (egress_ != nullptr) *out.mutable_egress() = effective_egress_;
  absl::MutexLock lock(&mu_);
  if (ended_) *out.mutable_outcome() = outcome_;
  for (pb::HumanRequest& r : approvals_->Open()) *out.add_open_requests() = std::move(r);
  return out;
}

void Session::End(pb::Outcome::Status status, const std::string& reason, const std::string& message,
                  std::optional<int> exit_code) {
  {
    absl::MutexLock lock(&mu_);
    if (ended_ || end_.status != pb::Outcome::STATUS_UNSPECIFIED) return;
    end_ = EndRequest{status, reason, message, exit_code};
  }
  // Open requests end now, before the outcome: their calls finish as canceled and a client sees why.
  approvals_->CloseAll(absl::StrCat("session ended: ", reason));
  jail_->Kill();
}

void Session::WatchJail() {
  const sandbox::RunResult result = jail_->Wait(-1);
  pb::Outcome outcome;
  {
    absl::MutexLock lock(&mu_);
    // init is gone, so the client's connection fails and every running call finishes with an error: give its
    // reader thread a moment (up to 2 s) to post those before the outcome closes the log.
    const auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return running_execs_.empty() && gated_waiting_.empty();
    };
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (!idle() && !calls_changed_.WaitWithDeadline(&mu_, deadline)) {
    }
    outcome = OutcomeOf(result);
    outcome_ = outcome;
  }
  if (options_.metrics != nullptr) {
    options_.metrics->Outcome(absl::AsciiStrToLower(pb::Outcome::Status_Name(outcome.status())), outcome.reason());
  }
  // The jail may have ended on its own (ttl, memory): what is still open is canceled before the outcome.
  approvals_->CloseAll(absl::StrCat("session ended: ", outcome.reason()));
  pb::Event event;
  *event.mutable_outcome() = outcome;
  events_.Append(std::move(event));
  ended_ = true;
  events_.Close();
}

pb::Outcome Session::OutcomeOf(const sandbox::RunResult& result) {
  pb::Outcome outcome;
  pb::Usage* usage = outcome.mutable_usage();
  usage->set_wall_ms(result.usage.wall_ms);
  usage->set_cpu_user_ms(result.usage.cpu_user_ms);
  usage->set_cpu_sys_ms(result.usage.cpu_sys_ms);
  usage->set_max_memory_bytes(result.usage.max_memory_bytes);
  if (end_.status != pb::Outcome::STATUS_UNSPECIFIED) {
    outcome.set_status(end_.status);
    outcome.set_reason(end_.reason);
    outcome.set_message(end_.message);
    if (end_.exit_code) outcome.set_exit_code(*end_.exit_code);
  } else {
    switch (result.reason) {
      case sandbox::RunReason::kTimeLimit:
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason("ttl_expired");
        outcome.set_message(absl::StrCat("the session's ttl of ", options_.ttl.count(), " ms passed"));
        break;
      case sandbox::RunReason::kMemoryLimit:
      case sandbox::RunReason::kPidsLimit:
      case sandbox::RunReason::kSeccompViolation:
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason(std::string(sandbox::RunReasonName(result.reason)));
        outcome.set_message(result.message);
        break;
      default:
        // sandbox-init itself ended (killed from inside the jail, or crashed): the jail is gone.
        outcome.set_status(pb::Outcome::FAILED);
        outcome.set_reason("jail_exited");
        outcome.set_message(absl::StrCat("sandbox-init ended (",
                                         result.signal > 0 ? absl::StrCat("signal ", result.signal)
                                                           : absl::StrCat("exit ", result.exit_code),
                                         ")"));
    }
    if (result.exit_code >= 0) outcome.set_exit_code(result.exit_code);
    if (result.signal > 0) outcome.set_signal(result.signal);
  }
  SanitizeUtf8(&outcome);  // its message may quote what init or the jail said
  return outcome;
}

}  // namespace sbx::agent
