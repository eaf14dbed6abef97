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
// Respond, on the deadline timer's thread, or in CloseAll / the destructor.
#ifndef SBX_AGENT_APPROVALS_H_
#define SBX_AGENT_APPROVALS_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "duvo/sandbox/v1/session.pb.h"

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
  };
  using Done = std::function<void(const duvo::sandbox::v1::HumanDecision&)>;

  explicit Approvals(Options options);
  // CloseAll("session ended"), then stops the deadline timer.
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

  // Closes every open request as CANCELED with `reason`; later Asks are CANCELED at once.
  void CloseAll(const std::string& reason);

  // The requests not decided yet, oldest first.
  std::vector<duvo::sandbox::v1::HumanRequest> Open() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_APPROVALS_H_
