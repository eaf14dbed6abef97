#include "agent/session/approvals.h"

#include <algorithm>
#include <future>
#include <map>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "agent/session/event_log.h"
#include "base/clock.h"
#include "re2/re2.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

pb::HumanDecision::Scope Normalized(pb::HumanDecision::Scope scope) {
  return scope == pb::HumanDecision::SCOPE_UNSPECIFIED ? pb::HumanDecision::REQUEST : scope;
}

// How a decided request is named in a FAILED_PRECONDITION message.
std::string StateOf(const pb::HumanDecision& d) {
  switch (d.decision()) {
    case pb::HumanDecision::EXPIRED: return "expired (its deadline passed)";
    case pb::HumanDecision::CANCELED: return absl::StrCat("canceled (", d.note(), ")");
    default:
      return absl::StrCat("already decided: ", pb::HumanDecision::Decision_Name(d.decision()), " by ", d.by(),
                          Normalized(d.scope()) == pb::HumanDecision::SESSION ? " for the session" : "");
  }
}

}  // namespace

class Approvals::Impl {
 public:
  explicit Impl(Options options)
      : options_(std::move(options)),
        own_timer_(options_.timer == nullptr ? std::make_unique<Timer>() : nullptr),
        timer_(options_.timer != nullptr ? options_.timer : own_timer_.get()) {}

  // NOTE: an expiry being handed out finishes before this returns.
  ~Impl() { timer_->CancelAll(this); }

  // One decision to hand out once the lock is released.
  struct Delivery {
    Done done;
    pb::HumanDecision decision;
    pb::Event event;  // as appended (for the observer)
  };

  void SetObserver(std::function<void(const pb::Event&)> observer) {
    absl::MutexLock lock(&mu_);
    observer_ = observer ? std::make_shared<const std::function<void(const pb::Event&)>>(std::move(observer))
                         : nullptr;
  }

  std::string Ask(GateAsk ask, Done done) {
    std::vector<Delivery> out;
    std::string id;
    std::optional<pb::HumanRequest> raised;
    pb::Event raised_event;
    {
      absl::MutexLock lock(&mu_);
      auto remembered = ask.action.empty() ? session_decisions_.end() : session_decisions_.find(ask.action);
      if (remembered != session_decisions_.end()) {
        // A session-scoped decision covers this action: decided at once, naming the request that decided it.
        pb::HumanDecision d = remembered->second;
        d.set_call_id(ask.call_id);
        id = d.request_id();
        pb::Event e = AppendDecisionLocked(d);
        out.push_back({std::move(done), std::move(d), std::move(e)});
      } else {
        id = absl::StrCat("hr-", next_id_++);
        pb::HumanDecision d;
        d.set_request_id(id);
        d.set_call_id(ask.call_id);
        d.set_by("agent");
        if (closed_) {
          d.set_decision(pb::HumanDecision::CANCELED);
          d.set_note(close_reason_);
        } else if (open_.size() >= options_.max_open) {
          d.set_decision(pb::HumanDecision::REJECT);
          d.set_note(absl::StrCat("too many open human requests in this session (", options_.max_open, ")"));
        }
        if (d.decision() != pb::HumanDecision::DECISION_UNSPECIFIED) {
          decided_[id] = Decided{d, ""};
          pb::Event e = AppendDecisionLocked(d);
          out.push_back({std::move(done), std::move(d), std::move(e)});
        } else {
          pb::HumanRequest r;
          r.set_request_id(id);
          r.set_call_id(std::move(ask.call_id));
          r.set_question(std::move(ask.question));
          r.set_kind(ask.kind);
          r.set_rule(std::move(ask.rule));
          r.set_action(std::move(ask.action));
          r.set_destination(std::move(ask.destination));
          r.set_wants_answer(ask.wants_answer);
          r.set_deadline_unix_ms(UnixMs() + options_.timeout.count());
          *raised_event.mutable_human_request() = r;
          AppendLocked(raised_event);
          const Clock::time_point deadline = Clock::now() + options_.timeout;
          open_.emplace(id, Pending{r, std::move(done), deadline, next_id_});
          raised = std::move(r);
          timer_->At(deadline, this, [this] { ExpireDue(); });
        }
      }
    }
    if (raised && options_.on_request) options_.on_request(*raised);
    Deliver(out);
    return id;
  }

  absl::StatusOr<pb::HumanDecision> Respond(const std::string& request_id, pb::HumanDecision::Decision decision,
                                            pb::HumanDecision::Scope scope, const std::string& note,
                                            const std::string& text, const std::string& idempotency_key,
                                            const std::string& by) {
    if (decision != pb::HumanDecision::APPROVE && decision != pb::HumanDecision::REJECT &&
        decision != pb::HumanDecision::ANSWER) {
      return absl::InvalidArgumentError(absl::StrCat("decision: ", pb::HumanDecision::Decision_Name(decision),
                                                     "; answer APPROVE, REJECT or ANSWER"));
    }
    if (decision == pb::HumanDecision::ANSWER && text.empty()) {
      return absl::InvalidArgumentError("text: an ANSWER carries the answer's text");
    }
    if (decision == pb::HumanDecision::ANSWER && Normalized(scope) == pb::HumanDecision::SESSION) {
      return absl::InvalidArgumentError("scope: SESSION is for APPROVE or REJECT; an ANSWER is for one request");
    }
    std::vector<Delivery> out;
    pb::HumanDecision result;
    {
      absl::MutexLock lock(&mu_);
      auto it = open_.find(request_id);
      if (it == open_.end()) {
        auto past = decided_.find(request_id);
        if (past == decided_.end()) {
          return absl::NotFoundError(absl::StrCat("no human request '", request_id, "' in this session"));
        }
        const pb::HumanDecision& d = past->second.decision;
        // A repeat of the answer that decided it (a retried RPC, a redelivered command) changes nothing.
        if (!idempotency_key.empty() && past->second.idempotency_key == idempotency_key &&
            d.decision() == decision && Normalized(d.scope()) == Normalized(scope) && d.note() == note &&
            d.text() == text) {
          return d;
        }
        return absl::FailedPreconditionError(absl::StrCat("human request ", request_id, " is ", StateOf(d)));
      }
      if (decision == pb::HumanDecision::ANSWER && !it->second.request.wants_answer()) {
        return absl::InvalidArgumentError(absl::StrCat("decision: ANSWER to human request ", request_id,
                                                       ", which asks no question (APPROVE or REJECT it)"));
      }
      result.set_request_id(request_id);
      result.set_decision(decision);
      result.set_scope(Normalized(scope));
      result.set_note(note);
      result.set_text(text);
      result.set_call_id(it->second.request.call_id());
      result.set_by(by);
      const std::string action = it->second.request.action();
      out.push_back(DecideLocked(it, result, idempotency_key));
      if (result.scope() == pb::HumanDecision::SESSION && !action.empty()) {
        session_decisions_[action] = result;
        // The other open requests of the same action are covered too.
        for (auto other = open_.begin(); other != open_.end();) {
          if (other->second.request.action() != action) {
            ++other;
            continue;
          }
          pb::HumanDecision d = result;
          d.set_call_id(other->second.request.call_id());
          d.set_request_id(other->first);
          d.set_note(absl::StrCat("decided for the session with ", request_id, note.empty() ? "" : ": ", note));
          auto next = std::next(other);
          out.push_back(DecideLocked(other, d, ""));
          other = next;
        }
      }
    }
    Deliver(out);
    return result;
  }

  void Cancel(const std::string& request_id, const std::string& reason) {
    std::vector<Delivery> out;
    {
      absl::MutexLock lock(&mu_);
      auto it = open_.find(request_id);
      if (it == open_.end()) return;
      out.push_back(DecideLocked(it, Final(it->second, pb::HumanDecision::CANCELED, reason), ""));
    }
    Deliver(out);
  }

  void CloseAll(const std::string& reason) {
    std::vector<Delivery> out;
    {
      absl::MutexLock lock(&mu_);
      if (!closed_) {
        closed_ = true;
        close_reason_ = reason;
      }
      while (!open_.empty()) {
        auto oldest = OldestLocked();
        out.push_back(DecideLocked(oldest, Final(oldest->second, pb::HumanDecision::CANCELED, reason), ""));
      }
    }
    Deliver(out);
  }

  std::vector<pb::HumanRequest> Open() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::pair<uint64_t, pb::HumanRequest>> sorted;
    for (const auto& [id, p] : open_) sorted.emplace_back(p.order, p.request);
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<pb::HumanRequest> out;
    for (auto& [order, r] : sorted) out.push_back(std::move(r));
    return out;
  }

 private:
  struct Pending {
    pb::HumanRequest request;
    Done done;
    Clock::time_point deadline;
    uint64_t order = 0;  // asked order (ids sort as strings, "hr-10" < "hr-9")
  };
  struct Decided {
    pb::HumanDecision decision;
    std::string idempotency_key;
  };
  using OpenMap = std::map<std::string, Pending>;

  static pb::HumanDecision Final(const Pending& p, pb::HumanDecision::Decision decision, const std::string& note) {
    pb::HumanDecision d;
    d.set_request_id(p.request.request_id());
    d.set_decision(decision);
    d.set_note(note);
    d.set_call_id(p.request.call_id());
    d.set_by("agent");
    return d;
  }

  OpenMap::iterator OldestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::min_element(open_.begin(), open_.end(),
                            [](const auto& a, const auto& b) { return a.second.order < b.second.order; });
  }

  // Appends `event` to the log and sets its seq (0 when there is no log or it is closed).
  // NOTE: appended under mu_ (the log takes only its own lock and calls nothing back), so a request's
  // HumanRequest event always precedes its one HumanDecision event.
  // The observer sees the event as appended before any reader of the log can: a fleet agent killed the
  // moment the control plane saw a request has already journaled it.
  void AppendLocked(pb::Event& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.events == nullptr) return;
    event.set_unix_ms(UnixMs());
    if (observer_ != nullptr) {
      event.set_seq(options_.events->Append(event, *observer_));
    } else {
      event.set_seq(options_.events->Append(event));
    }
  }

  pb::Event AppendDecisionLocked(const pb::HumanDecision& d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pb::Event event;
    *event.mutable_human_decision() = d;
    AppendLocked(event);
    return event;
  }

  // Moves an open request to decided_, appending its decision; the caller delivers it after unlocking.
  Delivery DecideLocked(OpenMap::iterator it, const pb::HumanDecision& d, const std::string& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    pb::Event event = AppendDecisionLocked(d);
    Delivery delivery{std::move(it->second.done), d, std::move(event)};
    decided_[it->first] = Decided{d, key};
    open_.erase(it);
    return delivery;
  }

  void Deliver(std::vector<Delivery>& out) {
    for (Delivery& d : out) {
      if (options_.on_decision) options_.on_decision(d.decision);
      if (d.done) d.done(d.decision);
    }
  }

  // On the agent's timer, at a request's deadline: expires every open request that is due.
  void ExpireDue() {
    std::vector<Delivery> out;
    {
      absl::MutexLock lock(&mu_);
      const auto now = Clock::now();
      for (auto it = open_.begin(); it != open_.end();) {
        auto next_it = std::next(it);
        if (it->second.deadline <= now) {
          out.push_back(DecideLocked(
              it, Final(it->second, pb::HumanDecision::EXPIRED,
                        absl::StrCat("no decision within ", options_.timeout.count(), " ms")),
              ""));
        }
        it = next_it;
      }
    }
    Deliver(out);
  }

  const Options options_;
  const std::unique_ptr<Timer> own_timer_;  // only when options_.timer is null
  Timer* const timer_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  OpenMap open_ ABSL_GUARDED_BY(mu_);                                       // by request id
  std::map<std::string, Decided> decided_ ABSL_GUARDED_BY(mu_);             // by request id
  std::map<std::string, pb::HumanDecision> session_decisions_ ABSL_GUARDED_BY(mu_);  // by action
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<const std::function<void(const pb::Event&)>> observer_ ABSL_GUARDED_BY(mu_);
  std::string close_reason_ ABSL_GUARDED_BY(mu_);
};

Approvals::Approvals(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Approvals::~Approvals() {
  impl_->CloseAll("session ended");
  impl_.reset();  // joins the timer
}

std::string Approvals::Ask(GateAsk ask, Done done) { return impl_->Ask(std::move(ask), std::move(done)); }

pb::HumanDecision Approvals::AskAndWait(GateAsk ask) {
  auto promise = std::make_shared<std::promise<pb::HumanDecision>>();
  std::future<pb::HumanDecision> decided = promise->get_future();
  Ask(std::move(ask), [promise](const pb::HumanDecision& d) { promise->set_value(d); });
  return decided.get();
}

absl::StatusOr<pb::HumanDecision> Approvals::Respond(const std::string& request_id,
                                                     pb::HumanDecision::Decision decision,
                                                     pb::HumanDecision::Scope scope, const std::string& note,
                                                     const std::string& text, const std::string& idempotency_key,
                                                     const std::string& by) {
  return impl_->Respond(request_id, decision, scope, note, text, idempotency_key, by);
}

void Approvals::Cancel(const std::string& request_id, const std::string& reason) {
  impl_->Cancel(request_id, reason);
}

void Approvals::CloseAll(const std::string& reason) { impl_->CloseAll(reason); }

void Approvals::SetObserver(std::function<void(const pb::Event&)> observer) {
  impl_->SetObserver(std::move(observer));
}

std::vector<pb::HumanRequest> Approvals::Open() const { return impl_->Open(); }

absl::Status DecisionStatus(const pb::HumanDecision& d) {
  switch (d.decision()) {
    case pb::HumanDecision::APPROVE:
    case pb::HumanDecision::ANSWER:
      return absl::OkStatus();
    case pb::HumanDecision::REJECT:
      return absl::PermissionDeniedError(absl::StrCat("rejected by ", d.by(), ": ", d.note()));
    case pb::HumanDecision::EXPIRED:
      return absl::PermissionDeniedError(
          absl::StrCat("approval expired (human request ", d.request_id(), ": ", d.note(), ")"));
    default:
      return absl::CancelledError(absl::StrCat("canceled: ", d.note()));
  }
}

std::string OriginOf(std::string_view url) {
  const size_t colon = url.find(':');
  if (colon == std::string_view::npos || colon == 0) return "";
  const std::string scheme = absl::AsciiStrToLower(absl::string_view(url.data(), colon));
  std::string_view rest = url.substr(colon + 1);
  if (rest.substr(0, 2) != "//") return scheme + ":";
  rest.remove_prefix(2);
  std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  if (const size_t at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string_view host = authority, port;
  // "[v6]:port" or "host:port"
  const size_t bracket = authority.rfind(']');
  const size_t port_colon = authority.rfind(':');
  if (port_colon != std::string_view::npos && (bracket == std::string_view::npos || port_colon > bracket)) {
    host = authority.substr(0, port_colon);
    port = authority.substr(port_colon + 1);
  }
  std::string p(port);
  if (p.empty()) p = scheme == "https" || scheme == "wss" ? "443" : scheme == "http" || scheme == "ws" ? "80" : "";
  return absl::StrCat(scheme, "://", absl::AsciiStrToLower(absl::string_view(host.data(), host.size())),
                      p.empty() ? "" : ":", p);
}

ApprovalGates::ApprovalGates(const sandbox::ApprovalSpec& spec) : spec_(spec) {
  RE2::Options options;
  options.set_log_errors(false);
  for (const std::string& rule : spec_.exec_regex) exec_rules_.push_back(std::make_unique<RE2>(rule, options));
  for (const std::string& pattern : spec_.secret_patterns) {
    secrets_.push_back(std::make_unique<RE2>(pattern, options));
  }
}

ApprovalGates::~ApprovalGates() = default;

std::string ApprovalGates::Redact(std::string_view text) const {
  std::string out(text);
  for (const auto& re : secrets_) {
    if (re->ok()) RE2::GlobalReplace(&out, *re, "[redacted]");
  }
  return out;
}

bool ApprovalGates::IsSecret(std::string_view text) const {
  for (const auto& re : secrets_) {
    if (re->ok() && RE2::PartialMatch(re2::StringPiece(text.data(), text.size()), *re)) return true;
  }
  return false;
}

GateAsk ApprovalGates::ToolGate(const std::string& call_id, std::string_view kind, std::string_view question) const {
  GateAsk ask;
  ask.kind = pb::HumanRequest::TOOL_CALL;
  ask.call_id = call_id;
  ask.rule = absl::StrCat("require_approval: ", absl::string_view(kind.data(), kind.size()));
  ask.action = std::string(kind);
  // Redacted first, cut after: a cut never leaves half a secret unredacted.
  ask.question = Redact(question);
  if (ask.question.size() > kMaxQuestionBytes) {
    ask.question.resize(kMaxQuestionBytes);
    ask.question += "...";
  }
  return ask;
}

std::optional<GateAsk> ApprovalGates::ForCall(const std::string& call_id, const pb::ToolCall& call,
                                              const std::function<bool(const std::string&)>& is_new_origin) const {
  switch (call.tool_case()) {
    case pb::ToolCall::kExec: {
      const std::string command = absl::StrJoin(call.exec().argv(), " ");
      // An exec rule is more specific than "exec": a session-wide approval of every exec does not let a
      // command a rule names through.
      for (size_t i = 0; i < exec_rules_.size(); ++i) {
        if (!exec_rules_[i]->ok() || !RE2::PartialMatch(command, *exec_rules_[i])) continue;
        GateAsk ask = ToolGate(call_id, "exec", absl::StrCat("exec: ", command));
        ask.kind = pb::HumanRequest::EXEC;
        ask.rule = absl::StrCat("exec.argv_regex: ", spec_.exec_regex[i]);
        ask.action = absl::StrCat("exec:", spec_.exec_regex[i]);
        return ask;
      }
      if (spec_.Requires("exec")) return ToolGate(call_id, "exec", absl::StrCat("exec: ", command));
      return std::nullopt;
    }
    case pb::ToolCall::kWriteFile:
      if (!spec_.Requires("write_file")) return std::nullopt;
      return ToolGate(call_id, "write_file",
                      absl::StrCat("write_file: ", call.write_file().path(), " (", call.write_file().data().size(),
                                   " bytes)"));
    case pb::ToolCall::kRemove:
      if (!spec_.Requires("remove")) return std::nullopt;
      return ToolGate(call_id, "remove",
                      absl::StrCat("remove: ", call.remove().path(), call.remove().recursive() ? " (recursive)" : ""));
    case pb::ToolCall::kBrowser: {
      const pb::BrowserAction& b = call.browser();
      if (b.has_navigate() && spec_.Requires("browser_navigate_new_origin")) {
        const std::string origin = OriginOf(b.navigate().url());
        if (is_new_origin && is_new_origin(origin)) {
          return ToolGate(call_id, "browser_navigate_new_origin",
                          absl::StrCat("browser navigate to a new origin (", origin, "): ", b.navigate().url()));
        }
      }
      if (spec_.Requires("browser_submit")) {
        // What counts as a submit (policy.proto): Enter pressed, a click whose selector names "submit", or
        // typed text with a line break (Enter in a form field).
        if (b.has_press() && (absl::EqualsIgnoreCase(b.press().key(), "Enter") ||
                              absl::EqualsIgnoreCase(b.press().key(), "Return"))) {
          return ToolGate(call_id, "browser_submit", absl::StrCat("browser press ", b.press().key()));
        }
        if (b.has_click() && absl::StrContains(absl::AsciiStrToLower(b.click().selector()), "submit")) {
          return ToolGate(call_id, "browser_submit", absl::StrCat("browser click ", b.click().selector()));
        }
        if (b.has_type() && b.type().text().find_first_of("\r\n") != std::string::npos) {
          return ToolGate(call_id, "browser_submit",
                          absl::StrCat("browser type (with Enter) into ", b.type().selector().empty() ? "the focused element" : b.type().selector(),
                                       ": ", b.type().text()));
        }
      }
      return std::nullopt;
    }
    case pb::ToolCall::kDesktop:
      if (call.desktop().has_type() && spec_.Requires("desktop_type_secret") &&
          IsSecret(call.desktop().type().text())) {
        return ToolGate(call_id, "desktop_type_secret", absl::StrCat("desktop type: ", call.desktop().type().text()));
      }
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

std::optional<GateAsk> ApprovalGates::ForTransfer(std::string_view kind, const std::string& path,
                                                  std::string_view detail) const {
  if (!spec_.Requires(kind)) return std::nullopt;
  return ToolGate("", kind,
                  absl::StrCat(absl::string_view(kind.data(), kind.size()), ": ", path,
                               detail.empty() ? "" : " (", absl::string_view(detail.data(), detail.size()),
                               detail.empty() ? "" : ")"));
}

}  // namespace sbx::agent
