// Session: one long-lived sandbox — a serving jail (sandbox-init speaking the init protocol), its event log,
// and the tool calls running in it. Owned by the SessionManager through shared_ptr (RPC handlers hold a
// reference while they stream); the jail is killed and removed when the session ends.
#ifndef SBX_AGENT_SESSION_SESSION_H_
#define SBX_AGENT_SESSION_SESSION_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/session/approvals.h"
#include "agent/egress/egress_proxy.h"
#include "agent/session/event_log.h"
#include "agent/session/file_transfer.h"
#include "agent/session/timer.h"
#include "agent/obs/metrics.h"
#include "duvo/sandbox/v1/session.pb.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/init_client.h"
#include "sandbox/jail.h"
#include "sandbox/jail_launcher.h"
#include "sandbox/policy/policy.h"

namespace sbx::agent {

class CgroupLedger;
struct SeccompRelay;

// A request's own egress rules (CreateRequest.egress), already checked against the host policy's by the
// SessionManager. The proxy applies `allow` and `ask`, and the host's rules (`ceiling_*`) over them.
struct SessionEgress {
  std::vector<std::string> allow, ask;  // as requested
  duvo::sandbox::v1::EgressRequest::Default default_ask = duvo::sandbox::v1::EgressRequest::DENY;
  std::vector<std::string> ceiling_allow, ceiling_ask;  // the host policy's network.allow / network.ask
};

// The name of a session's jail and cgroup: "session-<id>".
std::string SessionCgroupName(const std::string& session_id);

class Session {
 public:
  // WriteFile.data's cap (session.proto): a larger write_file call is refused, naming the field and the limit.
  static constexpr uint64_t kMaxWriteFileBytes = 1 << 20;

  struct Options {
    std::string id;
    duvo::sandbox::v1::SessionKind kind = duvo::sandbox::v1::FILE;
    std::map<std::string, std::string> labels;
    std::chrono::milliseconds ttl{0};
    std::chrono::milliseconds idle_timeout{0};
    std::string init_path;
    const sandbox::CgroupLayout* cgroups = nullptr;  // nullptr: rootless without cgroup limits
    std::vector<std::string> warnings;
    std::vector<sandbox::EnvVar> env;  // the policy's environment, for exec calls that add variables
    Metrics* metrics = nullptr;        // not owned; may be null
    CgroupLedger* ledger = nullptr;    // not owned; may be null: forgets the session once its cgroup is gone
    sandbox::JailLauncher* launcher = nullptr;  // not owned; clones the jail from a long-lived thread
    // Not owned; the agent's one timer (SessionManager's). Null: the session makes one of its own.
    Timer* timer = nullptr;
    uint64_t max_output_bytes = 64ull << 20;     // one command's output budget (policy output_max_bytes)
    EventLog::Limits event_log;                  // the event log's budgets (policy limits.event_log_*, file_events_*)
    duvo::sandbox::v1::DesktopOptions desktop;   // kind DESKTOP: the display to start
    std::string storage_state_json;              // kind BROWSER: Playwright's storageState, loaded at start
    // A warm-pool session: its cgroup stays in the CPU background (only CPU nothing else wants) until
    // TakeFromPool, so keeping the pool full never slows live sessions down.
    bool pooled = false;
    std::vector<IpNetwork> egress_deny;  // network mode EGRESS: AgentConfig.egress_deny_cidrs
    // Network mode EGRESS: the request's own rules; unset: the host policy's network.allow / network.ask.
    std::optional<SessionEgress> egress;
    sandbox::ApprovalSpec approvals;     // the human approval gates (the host policy's and the request's)
    // Set by Start for a desktop session: the display's size.
    uint32_t display_width = 0, display_height = 0;
  };

  // Builds the jail and connects to its sandbox-init. The session_started event is seq 1.
  static absl::StatusOr<std::shared_ptr<Session>> Start(const sandbox::Policy& policy, Options options);
  ~Session();

  const std::string& id() const { return options_.id; }
  duvo::sandbox::v1::SessionKind kind() const { return options_.kind; }
  // A desktop session created with desktop.vnc.
  bool vnc_allowed() const { return options_.kind == duvo::sandbox::v1::DESKTOP && options_.desktop.vnc(); }
  EventLog& events() { return events_; }
  // The session's human approval gates: tool calls and the egress proxy ask through it; RespondHumanRequest
  // and the fleet's HumanAnswer decide through it. Exists for the session's whole life (closed in End).
  Approvals& approvals() { return *approvals_; }  // NOTE: gone once the destructor runs
  // The session's compiled approval policy (Download and Upload ask through it too).
  const ApprovalGates& gates() const { return *gates_; }
  // A file transfer's gate ("download" or "upload" of `path`): OK at once when the policy does not gate it;
  // else raises a HumanRequest and waits for its decision: OK when approved, PermissionDenied when rejected
  // or expired, Cancelled when the session ended or `gone()` (polled every 100 ms) says the client left.
  // `call_id`: the call the request is for (an upload's), or "" (a download).
  absl::Status AwaitTransferApproval(std::string_view kind, const std::string& path, std::string_view detail,
                                     const std::function<bool()>& gone, const std::string& call_id = "");
  duvo::sandbox::v1::Session Describe() const;
  bool ended() const { return ended_.load(); }
  bool Matches(const std::map<std::string, std::string>& selector) const;
  // A pooled session taken by a Create: its labels become the request's, and it leaves the CPU background.
  void TakeFromPool(std::map<std::string, std::string> labels);
  // True while an exec runs (an idle timeout does not apply then).
  bool busy() const;

  // Control messages for a running exec (stdin, window size, signals).
  struct ExecControl {
    std::string stdin_data;
    bool stdin_eof = false;
    uint32_t rows = 0, cols = 0;
    int signal = 0;

    // From a CallRequest (local mode) or an ExecInput (fleet mode): both carry these five fields.
    template <typename Message>
    static ExecControl Of(const Message& m) {
      return ExecControl{m.stdin(), m.stdin_eof(), m.rows(), m.cols(), m.signal()};
    }
  };

  // Starts a tool call: appends tool_call_started and returns its seq; the call's output and its
  // tool_call_finished follow in the log. File tools run before this returns; an exec runs on.
  // FailedPrecondition once the session has ended.
  absl::StatusOr<uint64_t> StartCall(const std::string& call_id, const duvo::sandbox::v1::ToolCall& call);
  absl::Status ControlExec(const std::string& call_id, const ExecControl& control);

  // StartCall with an idempotency key: the first call with `key` starts as `new_call_id`; a later one with
  // the same body gets that call's id and started seq back (its events replay from the log); with another
  // body it is ABORTED. An empty key always starts a new call. Returns {call id, started seq}.
  absl::StatusOr<std::pair<std::string, uint64_t>> StartCallOnce(const std::string& key,
                                                                 const std::string& new_call_id,
                                                                 const duvo::sandbox::v1::ToolCall& call);

  // Ends the session (kills the jail). `status`/`reason` go into the outcome unless it already ended.
  // `exit_code`, when set, goes into the outcome too (a fleet session that completed its calls).
  void End(duvo::sandbox::v1::Outcome::Status status, const std::string& reason, const std::string& message,
           std::optional<int> exit_code = std::nullopt);

  // An upload into the jail, run as a tool call: the one implementation both front ends use (the Upload RPC
  // and fleet upload commands). Begins with tool_call_started (a write_file naming the path and mode, without
  // data) under `call_id`, and ends with tool_call_finished (Upload::Finish, Fail, or the Upload dropped
  // unfinished). The bytes go through a FileTransfer (agent/session/file_transfer.h: sha256 checked at the
  // end, the file removed on a mismatch or an abort).
  // `key` is an idempotency key, as StartCallOnce's: an upload with a key already used for the same path and
  // mode gets back the first upload (its call id and seq); when that one succeeded, nothing is written again
  // (Upload::replayed(), and Finish returns its result). A key used for another path or mode is ABORTED; one
  // whose upload is still running is ABORTED too; after one that failed, the key starts a new upload.
  // FailedPrecondition once the session has ended; InvalidArgument for an empty path.
  class Upload;
  absl::StatusOr<std::unique_ptr<Upload>> BeginUpload(const std::string& key, const std::string& call_id,
                                                      const std::string& path, uint32_t mode);

  // The InitClient for Upload/Download and the service's own streams (Vnc, Cdp). Never null: Start() always
  // makes one and it lives as long as the Session. After the end the jail is killed, so its calls fail;
  // callers check ended() first.
  sandbox::InitClient* init() { return init_.get(); }

  // Marks the session used now (tool calls, uploads); the idle timeout counts from the last use.
  void Touch();
  std::chrono::steady_clock::time_point last_used() const;
  std::chrono::steady_clock::time_point expires_at() const { return expires_; }
  std::chrono::milliseconds idle_timeout() const { return options_.idle_timeout; }

 private:
  Session(Options options, std::unique_ptr<sandbox::Jail> jail, std::unique_ptr<sandbox::InitClient> init);

  // --- Start (session_start.cc) ---
  // Network mode EGRESS: starts the jail's egress proxy with the request's rules, or the host policy's.
  absl::Status StartEgressProxy(const sandbox::Policy& policy);
  // The proxy's rules; sets effective_egress_ (what Describe reports).
  absl::Status EgressRulesInto(const sandbox::Policy& policy, EgressProxyOptions* eo);
  void OnEgressAudit(const EgressAudit& a);                       // an egress audit as an event
  std::string AskEgress(const EgressAsk& a, EgressAnswerFn done);  // a held destination as a HumanRequest
  // Appends session_started (seq 1), then hands the seccomp records held so far, and all later ones, to
  // the event log.
  void AppendStarted(std::chrono::steady_clock::time_point start, SeccompRelay* relay);

  // --- The jail's end (session.cc) ---
  void WatchJail();  // runs on watcher_: waits for the jail's end and writes the outcome
  // The outcome: End's status when it was ended, else what ended the jail.
  duvo::sandbox::v1::Outcome OutcomeOf(const sandbox::RunResult& result) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // --- Tool calls (session_calls.cc) ---
  // Runs a tool call whose tool_call_started (seq) is in the log: file tools before it returns, an exec on.
  absl::StatusOr<uint64_t> RunCall(const std::string& call_id, const duvo::sandbox::v1::ToolCall& call, uint64_t seq);
  void RunExec(const std::string& call_id, const duvo::sandbox::v1::Exec& exec);
  // read_file, list_files and stat: their results.
  absl::StatusOr<duvo::sandbox::v1::ToolResult> RunFileQuery(const duvo::sandbox::v1::ToolCall& call);
  // A driver call (desktop, computer, browser): a lost display or browser ends the session.
  void RunDriverCall(const std::string& call_id, const duvo::sandbox::v1::ToolCall& call);
  // A gated call's decision: approved calls run on the approved runner; the rest finish with a ToolError.
  void OnGateDecided(const std::string& call_id, const duvo::sandbox::v1::ToolCall& call,
                     const duvo::sandbox::v1::HumanDecision& decision);
  void RunApproved();
  void FinishCall(const std::string& call_id, const absl::StatusOr<duvo::sandbox::v1::ToolResult>& result);
  // Kills a command over its output budget, on the agent's timer (not the client's reader thread).
  void RequestKill(const std::string& call_id);
  std::string LastCallId() const;  // the newest tool call, for audits

  // --- Driver actions (session.cc) ---
  // A desktop action: maps the caller's coordinate space onto the display, has sandbox-init carry it out,
  // and for a screenshot appends the image as file events.
  absl::StatusOr<duvo::sandbox::v1::ToolResult> RunDesktop(const std::string& call_id,
                                                           const duvo::sandbox::v1::DesktopAction& action);
  // A browser action, carried out by sandbox-init over CDP; the page's reports become PageEvents.
  // Anthropic's computer-use tool input (agent/session/computer_use.h), run as DesktopActions.
  absl::StatusOr<duvo::sandbox::v1::ToolResult> RunComputer(const std::string& call_id,
                                                            const duvo::sandbox::v1::ComputerUse& call);
  absl::StatusOr<duvo::sandbox::v1::ToolResult> RunBrowser(const std::string& call_id,
                                                           const duvo::sandbox::v1::BrowserAction& action);
  // Appends a screenshot as file events; returns its path. ResourceExhausted (and a `dropped` event) when
  // it would pass the policy's limits.file_events_max_bytes.
  absl::StatusOr<std::string> AppendImage(const std::string& call_id, const sandbox::Screenshot& shot,
                                          std::string_view ext);
  // A browser download (a workspace path) as file events; fails (appending nothing, or only a `dropped`
  // event) when it cannot be read or would pass limits.file_events_max_bytes (the file payloads the log
  // holds until clients acknowledge them; a hostile page can download until its workspace is full).
  absl::Status AppendDownload(const std::string& call_id, const std::string& path, uint64_t size);
  std::atomic<uint64_t> screenshots_{0};
  std::atomic<uint64_t> audits_{0};  // egress audits so far (events past a limit are not appended)

  const Options options_;
  const std::chrono::steady_clock::time_point created_;
  const int64_t created_unix_ms_;
  const std::chrono::steady_clock::time_point expires_;
  EventLog events_;
  std::unique_ptr<Timer> own_timer_;  // only when Options.timer is null
  Timer* const timer_;                // options_.timer, or own_timer_: the kills and the approvals' deadlines
  // After events_ (it appends there), created in the constructor before anything that can ask.
  std::unique_ptr<Approvals> approvals_;
  std::unique_ptr<ApprovalGates> gates_;
  std::unique_ptr<sandbox::Jail> jail_;
  std::unique_ptr<sandbox::InitClient> init_;
  std::unique_ptr<EgressProxy> egress_;  // network mode EGRESS: the jail's proxy
  duvo::sandbox::v1::EffectiveEgress effective_egress_;  // set by Start, then constant (Describe)
  std::atomic<uint64_t> allowed_audits_{0};  // egress_allowed audits so far (their own limit)
  std::atomic<bool> ended_{false};
  std::atomic<int64_t> last_used_ns_;

  mutable absl::Mutex mu_;
  // Signalled when a call finishes (running_execs_ shrinks): WatchJail waits for the calls to end.
  absl::CondVar calls_changed_;
  std::map<std::string, uint64_t> running_execs_ ABSL_GUARDED_BY(mu_);  // call id -> InitClient call id
  std::string last_call_id_ ABSL_GUARDED_BY(mu_);  // the newest tool call, for egress audits
  std::map<std::string, std::string> labels_ ABSL_GUARDED_BY(mu_);
  // Gated tool calls waiting for a decision (busy() while any waits), and the origins the browser
  // navigated to (OriginOf).
  std::set<std::string> gated_waiting_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> origins_ ABSL_GUARDED_BY(mu_);
  bool kills_closed_ ABSL_GUARDED_BY(mu_) = false;  // set by ~Session: no kill is scheduled after it
  // The end: End's request (status unset until then), and the outcome WatchJail wrote.
  struct EndRequest {
    duvo::sandbox::v1::Outcome::Status status = duvo::sandbox::v1::Outcome::STATUS_UNSPECIFIED;
    std::string reason, message;
    std::optional<int> exit_code;
  };
  EndRequest end_ ABSL_GUARDED_BY(mu_);
  duvo::sandbox::v1::Outcome outcome_ ABSL_GUARDED_BY(mu_);

  // Idempotency keys of StartCallOnce and BeginUpload.
  struct IdempotentCall {
    std::string body;
    std::string call_id;
    uint64_t seq = 0;
    // An upload's: running until it ends; a succeeded one keeps its result (a repeat writes nothing).
    enum class Upload { kNone, kRunning, kSucceeded, kFailed } upload = Upload::kNone;
    FileTransfer::Result upload_result;
  };
  absl::Mutex idempotent_mu_;  // held across StartCall so two calls with one key start once
  std::map<std::string, IdempotentCall> idempotent_calls_ ABSL_GUARDED_BY(idempotent_mu_);

  // Approved gated calls run off the thread that decided (a RespondHumanRequest handler, the fleet's command
  // reader) so that it is not held by a long browser call. The runner starts with the first approval.
  struct ApprovedRunner {
    absl::Mutex mu;
    absl::CondVar cv;
    std::deque<std::pair<std::string, duvo::sandbox::v1::ToolCall>> queue ABSL_GUARDED_BY(mu);
    bool stop ABSL_GUARDED_BY(mu) = false;
    std::jthread thread ABSL_GUARDED_BY(mu);
  };
  ApprovedRunner approved_;

  std::jthread watcher_;  // last member: joined first
};

// One upload (Session::BeginUpload): a FileTransfer whose end is the call's tool_call_finished. Driven by one
// front end's thread (or under its lock); dropped before its session.
class Session::Upload {
 public:
  ~Upload();  // unfinished: aborted (no file is left), and the call finishes with an error saying so
  Upload(const Upload&) = delete;
  Upload& operator=(const Upload&) = delete;

  const std::string& call_id() const { return call_id_; }
  uint64_t seq() const { return seq_; }  // its tool_call_started
  // A repeat of an upload that succeeded under the same idempotency key: writes nothing, and Finish returns
  // the first upload's result.
  bool replayed() const { return replay_.has_value(); }
  uint64_t size() const { return transfer_ ? transfer_->size() : 0; }
  // Finish or Fail was called, or a write failed.
  bool ended() const { return ended_; }

  // FileTransfer::Write; a failed write ends the upload with its error.
  absl::Status Write(uint64_t offset, std::string_view data);
  // FileTransfer::Finish; the call finishes with its result (done) or its error.
  absl::StatusOr<FileTransfer::Result> Finish(std::string_view declared_sha256);
  // Ends the upload with `why` (its gate refused it, the stream ended early): no file is left.
  void Fail(const absl::Status& why);

 private:
  friend class Session;
  Upload(Session* session, std::string key, std::string call_id, uint64_t seq,
         std::optional<FileTransfer::Result> replay);
  void End(const absl::StatusOr<FileTransfer::Result>& result);

  Session* const session_;
  const std::string key_;  // the idempotency key, or ""
  const std::string call_id_;
  const uint64_t seq_;
  const std::optional<FileTransfer::Result> replay_;
  std::unique_ptr<FileTransfer> transfer_;  // null when replayed
  bool ended_ = false;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_SESSION_H_
