// Approvals: one session's human approval gates (DESIGN.md "Governance"; policy.proto ApprovalPolicy).
//
// A gate is hit when policy says a human decides: an egress destination on the `ask` list (the proxy holds
// the connection), a tool call whose kind is require_approval, an exec matching an ExecRule (the call
// waits). Ask() raises a HumanRequest event in the session's log and calls `done` once with the decision:
// the human's (Respond, from RespondHumanRequest locally or a HumanAnswer over Attach), EXPIRED when the
// deadline passes, or CANCELED when the session ends. Every decision is a HumanDecision event, so a client
// that reads the log sees each request and how it ended; nothing is decided twice.
//
// A session-scoped approval (or rejection) decides later asks of the same `action` at once, without a new
// request; that decision is still appended as a HumanDecision naming the earlier request.
//
// Threads: Ask, Respond, CloseAll and Open may be called from any thread. `done` is never called with a lock
// of this class held; it may run before Ask returns (a session-scoped decision), on the thread that called
// Respond, on the agent's timer thread (a deadline), or in CloseAll / the destructor.
#ifndef SBX_AGENT_SESSION_APPROVALS_H_
#define SBX_AGENT_SESSION_APPROVALS_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/session/timer.h"
#include "duvo/sandbox/v1/session.pb.h"
#include "sandbox/policy/policy.h"

namespace re2 {
class RE2;
}

namespace sbx::agent {

class EventLog;

// One gate hit: what is asked.
struct GateAsk {
  duvo::sandbox::v1::HumanRequest::Kind kind = duvo::sandbox::v1::HumanRequest::TOOL_CALL;
  std::string call_id;      // the tool call it belongs to; may be empty
  std::string rule;         // the policy rule that gated it, as written
  std::string action;       // what a session-scoped decision covers ("egress:host:port", "download", ...)
  std::string question;     // for a person, already redacted
  std::string destination;  // EGRESS: "host:port"
  bool wants_answer = false;
};

class Approvals {
 public:
  struct Options {
    EventLog* events = nullptr;  // not owned; HumanRequest / HumanDecision events go here
    std::chrono::milliseconds timeout{300000};  // ApprovalPolicy.timeout_ms
    // Optional: called (not under a lock of this class) after each HumanRequest / HumanDecision event is
    // appended, e.g. for metrics. The event log is what persists them (fleet: the outbox journals the log).
    std::function<void(const duvo::sandbox::v1::HumanRequest&)> on_request;
    std::function<void(const duvo::sandbox::v1::HumanDecision&)> on_decision;
    // Requests open at once; an Ask past it is REJECTed at once by "agent", saying so (a workload that makes
    // the proxy ask in a loop must not grow the agent's memory without bound).
    size_t max_open = 256;
    // Not owned: the agent's timer, which expires requests at their deadlines. Null: Approvals makes its own.
    Timer* timer = nullptr;
  };
  using Done = std::function<void(const duvo::sandbox::v1::HumanDecision&)>;

  explicit Approvals(Options options);
  // CloseAll("session ended"), then cancels its deadlines on the timer (waiting for one being handed out).
  ~Approvals();
  Approvals(const Approvals&) = delete;
  Approvals& operator=(const Approvals&) = delete;

  // Raises a HumanRequest (or decides at once from a session-scoped decision on ask.action, or CANCELED
  // after CloseAll). Returns the request id; `done` is called exactly once.
  std::string Ask(GateAsk ask, Done done);
  // Ask, waiting for the decision.
  duvo::sandbox::v1::HumanDecision AskAndWait(GateAsk ask);

  // Decides an open request (see sandboxes.proto RespondHumanRequest for the errors). `by` goes into the
  // HumanDecision ("local", "control_plane").
  absl::StatusOr<duvo::sandbox::v1::HumanDecision> Respond(
      const std::string& request_id, duvo::sandbox::v1::HumanDecision::Decision decision,
      duvo::sandbox::v1::HumanDecision::Scope scope, const std::string& note, const std::string& text,
      const std::string& idempotency_key, const std::string& by);

  // Closes one open request as CANCELED with `reason` (the action it gated went away, e.g. a Download's
  // client disconnected). Does nothing when it is not open.
  void Cancel(const std::string& request_id, const std::string& reason);

  // Closes every open request as CANCELED with `reason`; later Asks are CANCELED at once.
  void CloseAll(const std::string& reason);

  // The requests not decided yet, oldest first.
  std::vector<duvo::sandbox::v1::HumanRequest> Open() const;

  // Called with each HumanRequest / HumanDecision event as appended to the log (seq set), before any reader of
  // the log sees it and before `done` runs: the fleet agent journals them in its outbox so that an agent
  // restart loses no decision the control plane was shown. Runs under this class's lock and the log's: it
  // must not call back into either. Replaces the previous observer; {} clears it.
  void SetObserver(std::function<void(const duvo::sandbox::v1::Event&)> observer);

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// What a decision means for the action it gated: OK (APPROVE, ANSWER); PermissionDenied "rejected by <by>:
// <note>" (REJECT) or "approval expired (...)" (EXPIRED); Cancelled "canceled: <why>" (CANCELED).
absl::Status DecisionStatus(const duvo::sandbox::v1::HumanDecision& decision);

// A URL's origin as the browser gate compares them: "scheme://host:port" with the scheme and host lower-cased
// and the scheme's default port filled in (http 80, https 443); userinfo, path, query and fragment dropped.
// A URL without "//" after its scheme (about:, data:, javascript:) is "<scheme>:".
std::string OriginOf(std::string_view url);

// A session's approval policy (sandbox::ApprovalSpec), compiled once: which tool calls and transfers ask,
// and what the question shows (arguments with secret_patterns matches replaced by "[redacted]"; never a
// file's contents).
class ApprovalGates {
 public:
  // Questions longer than this are cut (after redaction, so a cut never reveals part of a secret).
  static constexpr size_t kMaxQuestionBytes = 2048;

  // `spec` was validated by sandbox::PolicyBuilder; a pattern that does not compile is ignored.
  explicit ApprovalGates(const sandbox::ApprovalSpec& spec);
  ~ApprovalGates();

  const sandbox::ApprovalSpec& spec() const { return spec_; }
  // `text` with every secret_patterns match replaced by "[redacted]".
  std::string Redact(std::string_view text) const;
  // Whether `text` matches a secret_patterns entry.
  bool IsSecret(std::string_view text) const;

  // The gate tool call `call` hits, or nullopt. `is_new_origin` says whether a browser navigate's origin
  // (OriginOf) is one the session has not navigated to.
  std::optional<GateAsk> ForCall(const std::string& call_id, const duvo::sandbox::v1::ToolCall& call,
                                 const std::function<bool(const std::string&)>& is_new_origin) const;
  // The gate a file transfer hits ("download" or "upload" of `path`), or nullopt.
  std::optional<GateAsk> ForTransfer(std::string_view kind, const std::string& path, std::string_view detail) const;

 private:
  GateAsk ToolGate(const std::string& call_id, std::string_view kind, std::string_view question) const;
  const sandbox::ApprovalSpec spec_;
  std::vector<std::unique_ptr<re2::RE2>> exec_rules_;  // parallel to spec_.exec_regex
  std::vector<std::unique_ptr<re2::RE2>> secrets_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_APPROVALS_H_
