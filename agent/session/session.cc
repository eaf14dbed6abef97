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
#include "base/status.h"
#include "wire/init_protocol.pb.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxReadFileBytes = 1 << 20;

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

pb::FileInfo ToProto(const sandbox::FileInfo& info) {
  pb::FileInfo out;
  out.set_name(info.name);
  switch (info.type) {
    case sandbox::FileInfo::Type::kFile: out.set_type(pb::FileInfo::REGULAR); break;
    case sandbox::FileInfo::Type::kDirectory: out.set_type(pb::FileInfo::DIRECTORY); break;
    case sandbox::FileInfo::Type::kSymlink: out.set_type(pb::FileInfo::SYMLINK); break;
    case sandbox::FileInfo::Type::kOther: out.set_type(pb::FileInfo::OTHER); break;
  }
  out.set_size(info.size);
  out.set_mode(info.mode);
  out.set_mtime_unix_ns(info.mtime_ns);
  out.set_symlink_target(info.symlink_target);
  return out;
}

// Carries the jail's seccomp records (on the supervisor's thread) to its session, which exists only once the
// jail has started: what comes before waits here, a few at most.
struct SeccompRelay {
  std::mutex mu;
  std::function<void(const sandbox::SeccompAudit&)> deliver;  // GUARDED_BY(mu): set once the session exists
  std::vector<sandbox::SeccompAudit> pending;                 // GUARDED_BY(mu): until then, up to 64
  // The call the last recorded denial was attributed to: a seccomp_suppressed count follows recorded
  // denials (it is emitted when the bucket refills, perhaps after the next call started) and counts those.
  std::string last_denial_call_id;  // used by `deliver` only (under mu)
};

// A seccomp record as an audit event of the tool call `call_id`.
pb::Event SeccompAuditEvent(const sandbox::SeccompAudit& a, const std::string& call_id) {
  pb::Event event;
  pb::Audit* audit = event.mutable_audit();
  audit->set_call_id(call_id);
  audit->set_action(SeccompAuditAction(a.kind));
  switch (a.kind) {
    case sandbox::SeccompAudit::Kind::kDenied:
      audit->set_detail(absl::StrCat("seccomp denied ", a.syscall, ": errno ", a.errno_value, " (",
                                     strerror(a.errno_value), ")"));
      break;
    case sandbox::SeccompAudit::Kind::kKilled:
      audit->set_detail(absl::StrCat("killed by the seccomp policy: syscall ", a.syscall));
      break;
    case sandbox::SeccompAudit::Kind::kSuppressed:
      audit->set_suppressed(a.suppressed);
      audit->set_detail(absl::StrCat(a.suppressed, " seccomp denials were answered without an audit event (rate limit)"));
      return event;
  }
  audit->set_syscall(a.syscall);
  audit->set_pid(a.pid);
  audit->set_comm(a.comm);
  audit->set_args(a.args);
  return event;
}
}  // namespace

std::string SessionCgroupName(const std::string& session_id) { return absl::StrCat("session-", session_id); }

absl::StatusOr<std::shared_ptr<Session>> Session::Start(const sandbox::Policy& policy, Options options) {
  const auto start = Clock::now();
  sandbox::JailOptions jail_options;
  jail_options.serve = true;
  jail_options.init_path = options.init_path;
  jail_options.cgroups = options.cgroups;
  jail_options.name = SessionCgroupName(options.id);
  jail_options.warnings = options.warnings;
  jail_options.pids_poll_interval = std::chrono::milliseconds(250);
  jail_options.cpu_background = options.pooled;
  auto seccomp_relay = std::make_shared<SeccompRelay>();
  jail_options.seccomp_audit = [seccomp_relay](const sandbox::SeccompAudit& a) {
    std::lock_guard lock(seccomp_relay->mu);
    if (seccomp_relay->deliver) {
      seccomp_relay->deliver(a);
    } else if (seccomp_relay->pending.size() < 64) {
      seccomp_relay->pending.push_back(a);
    }
  };
  if (options.launcher == nullptr) return absl::InternalError("session: no jail launcher");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::Jail> jail, options.launcher->Start(policy, jail_options));
  auto init = std::make_unique<sandbox::InitClient>(jail->TakeControlFd());
  if (options.kind == pb::DESKTOP) {
    absl::StatusOr<sandbox::DesktopInfo> display =
        init->DesktopStart(options.desktop.width(), options.desktop.height(), options.desktop.window_manager());
    if (!display.ok()) return Annotate(display.status(), "starting the desktop");
    options.display_width = display->width;
    options.display_height = display->height;
  }
  if (options.kind == pb::BROWSER) {
    // Chromium reaches the network only through the agent's egress proxy, when the policy has one.
    const std::string proxy = policy.spec().network == sandbox::NetworkMode::kEgress
                                  ? absl::StrCat("http://127.0.0.1:", policy.spec().egress_proxy_port)
                                  : "";
    if (absl::Status s = init->BrowserStart(1280, 800, proxy); !s.ok()) return Annotate(s, "starting the browser");
    if (!options.storage_state_json.empty()) {
      init::BrowserRequest load;
      load.mutable_import_storage()->set_state_json(options.storage_state_json);
      if (absl::StatusOr<sandbox::InitClient::BrowserOutput> loaded = init->BrowserRequest(load); !loaded.ok()) {
        return Annotate(loaded.status(), "browser.storage_state_json");
      }
    }
  }
  std::shared_ptr<Session> session(new Session(std::move(options), std::move(jail), std::move(init)));
  if (policy.spec().network == sandbox::NetworkMode::kEgress) {
    // The proxy listens on the jail's loopback and connects out from the agent's namespace, to the
    // policy's allowed destinations only (agent/egress_proxy.h): the request's rules when it had its own
    // (inside the host's, which the proxy checks too), else the host policy's.
    EgressProxyOptions eo;
    pb::EffectiveEgress& effective = session->effective_egress_;
    if (const std::optional<SessionEgress>& req = session->options_.egress; req.has_value()) {
      ASSIGN_OR_RETURN(eo.allow, ParseEgressRules(req->allow));
      ASSIGN_OR_RETURN(eo.ask, ParseEgressRules(req->ask));
      EgressCeiling ceiling;
      ASSIGN_OR_RETURN(ceiling.allow, ParseEgressRules(req->ceiling_allow));
      ASSIGN_OR_RETURN(ceiling.ask, ParseEgressRules(req->ceiling_ask));
      if (req->default_ask == pb::EgressRequest::ASK) {
        // Default ASK: whatever the host's rules would let through (allowed or asked) is asked about; the
        // ceiling keeps everything else refused.
        eo.ask.insert(eo.ask.end(), ceiling.allow.begin(), ceiling.allow.end());
        eo.ask.insert(eo.ask.end(), ceiling.ask.begin(), ceiling.ask.end());
      }
      eo.ceiling = std::move(ceiling);
      effective.mutable_allow()->Add(req->allow.begin(), req->allow.end());
      effective.mutable_ask()->Add(req->ask.begin(), req->ask.end());
      effective.set_default_(req->default_ask);
      effective.set_source(pb::EffectiveEgress::REQUEST);
    } else {
      ASSIGN_OR_RETURN(eo.allow, ParseEgressRules(policy.spec().egress_allow));
      ASSIGN_OR_RETURN(eo.ask, ParseEgressRules(policy.spec().egress_ask));
      effective.mutable_allow()->Add(policy.spec().egress_allow.begin(), policy.spec().egress_allow.end());
      effective.mutable_ask()->Add(policy.spec().egress_ask.begin(), policy.spec().egress_ask.end());
      effective.set_default_(pb::EgressRequest::DENY);
      effective.set_source(pb::EffectiveEgress::HOST);
    }
    ASSIGN_OR_RETURN(UniqueFd listen_fd, session->jail_->ListenInNetns(policy.spec().egress_proxy_port));
    eo.deny = session->options_.egress_deny;
    eo.resolver_threads = 1;
    Session* raw = session.get();
    eo.audit = [raw](const EgressAudit& a) {
      // Events stay in memory for the session's life, and a workload can be denied in a loop: past a
      // number of audits, one more says so and the rest are only counted (egress metrics, the proxy's log).
      // egress_allowed has a limit of its own, so a page that loads from many hosts cannot use up the
      // one that reports denials.
      constexpr uint64_t kMaxAudits = 1000;
      const bool allowed = a.action == "egress_allowed";
      const uint64_t n = (allowed ? raw->allowed_audits_ : raw->audits_).fetch_add(1) + 1;
      if (n > kMaxAudits + 1) return;
      pb::Event event;
      pb::Audit* audit = event.mutable_audit();
      audit->set_call_id(a.call_id);
      if (n == kMaxAudits + 1) {
        audit->set_action("audit_limit");
        audit->set_detail(absl::StrCat("this session reached ", kMaxAudits,
                                       allowed ? " egress_allowed audit events; later allowed connections"
                                               : " audit events; later denials",
                                       " are not reported as events"));
      } else {
        audit->set_action(a.action);
        audit->set_detail(a.detail);
        audit->set_destination(a.destination);
        audit->set_rule(a.rule);
        audit->set_request_id(a.request_id);
      }
      raw->events_.Append(std::move(event));
    };
    eo.current_call_id = [raw] {
      std::lock_guard lock(raw->mu_);
      return raw->last_call_id_;
    };
    // The ask gate: a held destination is a HumanRequest of kind EGRESS in the session's approvals. A
    // session-scoped approval covers its action ("egress:host:port"), so later connections there go through
    // unasked (Approvals decides them at once). The proxy is destroyed before the approvals (~Session), and
    // an answer after that goes nowhere (the proxy's inbox is closed).
    eo.ask_hook = [raw](const EgressAsk& a, EgressAnswerFn done) {
      GateAsk ask;
      ask.kind = pb::HumanRequest::EGRESS;
      ask.call_id = a.call_id;
      ask.rule = a.rule;
      ask.action = absl::StrCat("egress:", a.destination);
      ask.destination = a.destination;
      // A plain HTTP request line can carry a token in its query: secret_patterns apply.
      ask.question = raw->gates().Redact(absl::StrCat("Let the sandbox connect to ", a.summary, "?"));
      return raw->approvals().Ask(std::move(ask), [done = std::move(done)](const pb::HumanDecision& d) {
        EgressAnswer answer;
        const std::string note = d.note().empty() ? "" : absl::StrCat(": ", d.note());
        switch (d.decision()) {
          case pb::HumanDecision::APPROVE:
            answer.decision = EgressAnswer::Decision::kApproved;
            break;
          case pb::HumanDecision::EXPIRED:
            answer.decision = EgressAnswer::Decision::kTimedOut;
            answer.reason = absl::StrCat("no decision on request ", d.request_id(), " before its deadline", note);
            break;
          case pb::HumanDecision::CANCELED:
            answer.reason = absl::StrCat("request ", d.request_id(), " was canceled", note);
            break;
          default:  // REJECT (an ANSWER cannot decide a request that asked no question: refused as well)
            answer.reason = absl::StrCat("rejected by ", d.by().empty() ? "a human" : d.by(), " (request ",
                                         d.request_id(), ")", note);
            break;
        }
        done(std::move(answer));
      });
    };
    eo.ask_cancel = [raw](const std::string& request_id) {
      raw->approvals().Cancel(request_id, "the sandbox closed the connection that waited for it");
    };
    ASSIGN_OR_RETURN(session->egress_, EgressProxy::Start(std::move(listen_fd), std::move(eo)));
  }

  pb::Event started;
  started.mutable_session_started()->set_kind(session->options_.kind);
  started.mutable_session_started()->set_start_latency_us(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  session->events_.Append(std::move(started));
  {
    // Only now, so that session_started stays seq 1 (Chromium's start is denied a few calls; their audits
    // waited in `pending`). Attributed to the newest tool call, as egress audits are (the init protocol does not tell which
    // process an exec is). NOTE: the supervisor stops before the jail goes (~Session resets jail_ first).
    Session* raw = session.get();
    std::lock_guard relay_lock(seccomp_relay->mu);
    seccomp_relay->deliver = [raw, relay = seccomp_relay.get()](const sandbox::SeccompAudit& a) {
      std::string call_id;
      if (a.kind == sandbox::SeccompAudit::Kind::kSuppressed && !relay->last_denial_call_id.empty()) {
        call_id = relay->last_denial_call_id;
      } else {
        std::lock_guard session_lock(raw->mu_);
        call_id = raw->last_call_id_;
      }
      if (a.kind != sandbox::SeccompAudit::Kind::kSuppressed) relay->last_denial_call_id = call_id;
      raw->events_.Append(SeccompAuditEvent(a, call_id));
    };
    for (const sandbox::SeccompAudit& a : seccomp_relay->pending) seccomp_relay->deliver(a);
    seccomp_relay->pending.clear();
  }
  if (session->options_.metrics != nullptr) {
    session->options_.metrics->SessionStarted(std::chrono::duration<double>(Clock::now() - start).count());
  }
  session->killer_ = std::jthread([raw = session.get()](std::stop_token stop) { raw->RunKiller(stop); });
  session->watcher_ = std::jthread([raw = session.get()] { raw->WatchJail(); });
  return session;
}

Session::Session(Options options, std::unique_ptr<sandbox::Jail> jail, std::unique_ptr<sandbox::InitClient> init)
    : options_(std::move(options)),
      created_(Clock::now()),
      created_unix_ms_(UnixMs()),
      expires_(created_ + options_.ttl),
      events_(options_.id, options_.event_log),
      approvals_(std::make_unique<Approvals>([this] {
        Approvals::Options o;
        o.events = &events_;
        o.timeout = std::chrono::milliseconds(options_.approvals.timeout());
        return o;
      }())),
      gates_(std::make_unique<ApprovalGates>(options_.approvals)),
      jail_(std::move(jail)),
      init_(std::move(init)),
      labels_(options_.labels) {
  Touch();
}

Session::~Session() {
  End(pb::Outcome::CANCELED, "canceled", "the session was deleted");
  egress_.reset();  // before the jail: its audit callback writes the event log
  if (watcher_.joinable()) watcher_.join();
  // Every request is closed (End); this joins the deadline timer, which may still be handing a decision to
  // OnGateDecided, before the members that takes (mu_, the runner) are destroyed.
  approvals_.reset();
  {
    std::unique_lock lock(approved_mu_);
    approved_runner_.request_stop();
  }
  if (approved_runner_.joinable()) approved_runner_.join();  // finishes what it had as canceled
  killer_.request_stop();
  if (killer_.joinable()) killer_.join();
  init_.reset();  // after the watcher and the killer: joins the client's reader thread
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
    std::lock_guard lock(mu_);
    auto it = labels_.find(key);
    if (it == labels_.end() || it->second != value) return false;
  }
  return true;
}

void Session::TakeFromPool(std::map<std::string, std::string> labels) {
  if (absl::Status s = jail_->SetCpuBackground(false); !s.ok()) {
    // NOTE: the session still works; it only gets the CPU nothing else wants.
    Log(LogLevel::kWarn, "bringing a pooled browser out of the CPU background failed",
        {{"session_id", options_.id}, {"error", s.ToString()}});
  }
  Touch();  // its idle time starts now, not when the pool started it
  std::lock_guard lock(mu_);
  labels_ = std::move(labels);
}

bool Session::busy() const {
  std::lock_guard lock(mu_);
  // A call waiting for a person is not idle: the request's deadline bounds the wait, the ttl the session.
  return !running_execs_.empty() || !gated_waiting_.empty();
}

pb::Session Session::Describe() const {
  pb::Session out;
  out.set_id(options_.id);
  out.set_kind(options_.kind);
  out.set_state(ended_ ? pb::ENDED : pb::RUNNING);
  {
    std::lock_guard lock(mu_);
    for (const auto& [k, v] : labels_) (*out.mutable_labels())[k] = v;
  }
  out.set_created_unix_ms(created_unix_ms_);
  out.set_expires_unix_ms(created_unix_ms_ + options_.ttl.count());
  out.set_last_seq(events_.last_seq());
  if (egress_ != nullptr) *out.mutable_egress() = effective_egress_;
  std::lock_guard lock(mu_);
  if (ended_) *out.mutable_outcome() = outcome_;
  for (pb::HumanRequest& r : approvals_->Open()) *out.add_open_requests() = std::move(r);
  return out;
}

void Session::End(pb::Outcome::Status status, const std::string& reason, const std::string& message,
                  std::optional<int> exit_code) {
  {
    std::lock_guard lock(mu_);
    if (ended_ || end_status_ != pb::Outcome::STATUS_UNSPECIFIED) return;
    end_status_ = status;
    end_reason_ = reason;
    end_message_ = message;
    end_exit_code_ = exit_code;
  }
  // Open requests end now, before the outcome: their calls finish as canceled and a client sees why.
  approvals_->CloseAll(absl::StrCat("session ended: ", reason));
  jail_->Kill();
}

void Session::WatchJail() {
  const sandbox::RunResult result = jail_->Wait(-1);
  // init is gone, so the client's connection fails and every running call finishes with an error: give its
  // reader thread a moment to post those before the outcome closes the log.
  for (int i = 0; i < 200 && busy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));

  pb::Outcome outcome;
  pb::Usage* usage = outcome.mutable_usage();
  usage->set_wall_ms(result.usage.wall_ms);
  usage->set_cpu_user_ms(result.usage.cpu_user_ms);
  usage->set_cpu_sys_ms(result.usage.cpu_sys_ms);
  usage->set_max_memory_bytes(result.usage.max_memory_bytes);
  {
    std::lock_guard lock(mu_);
    if (end_status_ != pb::Outcome::STATUS_UNSPECIFIED) {
      outcome.set_status(end_status_);
      outcome.set_reason(end_reason_);
      outcome.set_message(end_message_);
      if (end_exit_code_) outcome.set_exit_code(*end_exit_code_);
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

absl::StatusOr<uint64_t> Session::StartCall(const std::string& call_id, const pb::ToolCall& call) {
  if (ended_ || events_.closed()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  }
  if (call.tool_case() == pb::ToolCall::TOOL_NOT_SET) {
    return absl::InvalidArgumentError("call: no tool given (exec, write_file, read_file, ...)");
  }
  // The documented cap (session.proto), in every front end: the local API, fleet commands and sandboxctl all
  // come through here. A larger file goes through Upload, which streams it.
  if (call.has_write_file() && call.write_file().data().size() > kMaxWriteFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat("write_file.data: ", call.write_file().data().size(),
                                                   " bytes, over the limit of ", kMaxWriteFileBytes,
                                                   " bytes (1 MiB); larger files go through Upload"));
  }
  {
    std::lock_guard lock(mu_);
    if (running_execs_.count(call_id) != 0) {
      return absl::AlreadyExistsError(absl::StrCat("call ", call_id, " is already running"));
    }
    last_call_id_ = call_id;
  }
  Touch();
  pb::Event started;
  started.mutable_tool_call_started()->set_call_id(call_id);
  *started.mutable_tool_call_started()->mutable_call() = call;
  if (call.has_write_file()) started.mutable_tool_call_started()->mutable_call()->mutable_write_file()->clear_data();
  const uint64_t seq = events_.Append(std::move(started));
  if (seq == 0) return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));

  // A gate (policy approvals): the call waits for a person without holding this thread; its HumanRequest
  // follows tool_call_started in the log, and the decision runs it or finishes it (OnGateDecided).
  std::optional<GateAsk> gate = gates_->ForCall(call_id, call, [this](const std::string& origin) {
    std::lock_guard lock(mu_);
    return origins_.count(origin) == 0;
  });
  if (gate) {
    {
      std::lock_guard lock(mu_);
      gated_waiting_.insert(call_id);
    }
    approvals_->Ask(std::move(*gate), [this, call_id, call](const pb::HumanDecision& d) {
      OnGateDecided(call_id, call, d);
    });
    return seq;
  }
  return RunCall(call_id, call, seq);
}

void Session::OnGateDecided(const std::string& call_id, const pb::ToolCall& call, const pb::HumanDecision& d) {
  {
    std::lock_guard lock(mu_);
    gated_waiting_.erase(call_id);
  }
  switch (d.decision()) {
    case pb::HumanDecision::APPROVE:
    case pb::HumanDecision::ANSWER: {
      std::lock_guard lock(approved_mu_);
      if (!approved_runner_.joinable()) {
        approved_runner_ = std::jthread([this](std::stop_token stop) { RunApproved(stop); });
      }
      approved_.emplace_back(call_id, call);
      approved_cv_.notify_all();
      return;
    }
    default:
      FinishCall(call_id, DecisionStatus(d));
      return;
  }
}

absl::Status Session::AwaitTransferApproval(std::string_view kind, const std::string& path, std::string_view detail,
                                            const std::function<bool()>& gone) {
  std::optional<GateAsk> gate = gates_->ForTransfer(kind, path, detail);
  if (!gate) return absl::OkStatus();
  auto decided = std::make_shared<std::promise<pb::HumanDecision>>();
  std::future<pb::HumanDecision> decision = decided->get_future();
  const std::string id = approvals_->Ask(std::move(*gate), [decided](const pb::HumanDecision& d) { decided->set_value(d); });
  while (decision.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
    if (gone()) approvals_->Cancel(id, "the client went away");  // decides it: the next wait returns
  }
  return DecisionStatus(decision.get());
}

void Session::RunApproved(std::stop_token stop) {
  std::unique_lock lock(approved_mu_);
  for (;;) {
    approved_cv_.wait(lock, stop, [this] { return !approved_.empty(); });
    if (approved_.empty()) return;  // stopped with nothing left
    auto [call_id, call] = std::move(approved_.front());
    approved_.pop_front();
    lock.unlock();
    if (stop.stop_requested() || ended_ || events_.closed()) {
      FinishCall(call_id, absl::CancelledError("canceled: the session ended before the approved call ran"));
    } else {
      // NOTE: the call's tool_call_started is in the log already; the seq is only returned, not used.
      (void)RunCall(call_id, call, 0);
    }
    lock.lock();
  }
}

absl::StatusOr<uint64_t> Session::RunCall(const std::string& call_id, const pb::ToolCall& call, uint64_t seq) {
  if (call.has_browser() && call.browser().has_navigate()) {
    std::lock_guard lock(mu_);
    origins_.insert(OriginOf(call.browser().navigate().url()));
  }
  switch (call.tool_case()) {
    case pb::ToolCall::kExec: {
      const pb::Exec& exec = call.exec();
      if (exec.argv().empty()) {
        FinishCall(call_id, absl::InvalidArgumentError("exec.argv: empty"));
        return seq;
      }
      sandbox::ExecSpec spec;
      spec.argv.assign(exec.argv().begin(), exec.argv().end());
      if (!exec.env().empty()) {
        // The policy's environment, with the request's variables on top.
        std::map<std::string, std::string> env;
        for (const sandbox::EnvVar& var : options_.env) env[var.name] = var.value;
        for (const auto& [k, v] : exec.env()) env[k] = v;
        for (const auto& [k, v] : env) spec.env.push_back(k + "=" + v);
      }
      spec.cwd = exec.cwd();
      spec.pty = exec.pty();
      if (exec.rows() > 0) spec.rows = exec.rows();
      if (exec.cols() > 0) spec.cols = exec.cols();
      const auto remaining =
          std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(expires_ - Clock::now()).count());
      spec.timeout_ms = exec.timeout_ms() > 0 ? std::min<uint64_t>(exec.timeout_ms(), remaining) : remaining;
      spec.stdin_open = exec.stdin_open() || !exec.stdin().empty();
      {
        std::lock_guard lock(mu_);
        running_execs_[call_id] = 0;  // a placeholder until the client's id is known
      }
      // The policy's output budget for one command: past it the command is killed (from the killer thread:
      // this callback runs on the client's reader and must not block on it).
      auto output_total = std::make_shared<uint64_t>(0);
      auto over_limit = std::make_shared<bool>(false);
      auto on_output = [this, call_id, output_total, over_limit](sandbox::OutputStream stream, std::string data,
                                                                 uint64_t offset) {
        Touch();
        *output_total += data.size();
        if (*over_limit) return;
        if (*output_total > options_.max_output_bytes) {
          *over_limit = true;
          RequestKill(call_id);
          return;
        }
        // Coalesced into chunks by the log (EventLog::AppendOutput): one write is not one event.
        events_.AppendOutput(call_id, stream == sandbox::OutputStream::kStdout ? pb::STDOUT : pb::STDERR, offset,
                             std::move(data));
      };
      auto on_end = [this, call_id, over_limit](absl::StatusOr<sandbox::ExecEnd> end) {
        absl::StatusOr<pb::ToolResult> result;
        if (*over_limit) {
          result = absl::ResourceExhaustedError(
              absl::StrCat("output: the command wrote more than the policy's output_max_bytes (",
                           options_.max_output_bytes, "); it was killed"));
        } else if (!end.ok()) {
          result = end.status();
        } else if (end->exec_errno != 0) {
          result = absl::Status(end->exec_errno == ENOENT ? absl::StatusCode::kNotFound
                                                          : absl::StatusCode::kPermissionDenied,
                                absl::StrCat("cannot execute the command: ", strerror(end->exec_errno)));
        } else {
          pb::ToolResult r;
          pb::ExecResult* e = r.mutable_exec();
          if (end->exit_code >= 0) e->set_exit_code(end->exit_code);
          if (end->signal > 0) e->set_signal(end->signal);
          e->set_timed_out(end->timed_out);
          result = r;
        }
        FinishCall(call_id, result);
      };
      // NOTE: mu_ is not held here: the client may report the end (FinishCall takes mu_) at any time.
      absl::StatusOr<uint64_t> id = init_->StartExec(spec, on_output, on_end);
      if (!id.ok()) {
        FinishCall(call_id, id.status());
        return seq;
      }
      {
        std::lock_guard lock(mu_);
        auto it = running_execs_.find(call_id);
        if (it != running_execs_.end()) it->second = *id;
      }
      if (!exec.stdin().empty()) (void)init_->WriteStdin(*id, exec.stdin(), /*eof=*/!exec.stdin_open());
      return seq;
    }
    case pb::ToolCall::kDesktop: {
      absl::StatusOr<pb::ToolResult> result = RunDesktop(call_id, call.desktop());
      FinishCall(call_id, result);
      // The display died under the session (Xvfb killed from inside): the session cannot go on.
      if (result.status().code() == absl::StatusCode::kUnavailable && init_->healthy() &&
          options_.kind == pb::DESKTOP) {
        End(pb::Outcome::FAILED, "display_lost", std::string(result.status().message()));
      }
      return seq;
    }
    case pb::ToolCall::kComputer: {
      absl::StatusOr<pb::ToolResult> result = RunComputer(call_id, call.computer());
      FinishCall(call_id, result);
      if (result.status().code() == absl::StatusCode::kUnavailable && init_->healthy() &&
          options_.kind == pb::DESKTOP) {
        End(pb::Outcome::FAILED, "display_lost", std::string(result.status().message()));
      }
      return seq;
    }
    case pb::ToolCall::kBrowser: {
      absl::StatusOr<pb::ToolResult> result = RunBrowser(call_id, call.browser());
      FinishCall(call_id, result);
      // Chromium died (killed from inside, or crashed for good): the session ends, saying so.
      if (result.status().code() == absl::StatusCode::kUnavailable && init_->healthy() &&
          options_.kind == pb::BROWSER) {
        End(pb::Outcome::FAILED, "browser_lost", std::string(result.status().message()));
      }
      return seq;
    }
    case pb::ToolCall::kWriteFile: {
      const pb::WriteFile& w = call.write_file();
      absl::Status s = init_->WriteFile(w.path(), w.data(), 0, /*truncate=*/true, w.mode() != 0 ? w.mode() : 0644);
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kReadFile: {
      const pb::ReadFile& rf = call.read_file();
      const uint64_t want = rf.length() == 0 ? kMaxReadFileBytes : std::min<uint64_t>(rf.length(), kMaxReadFileBytes);
      std::string data;
      absl::Status s;
      while (data.size() < want) {
        const uint64_t chunk = std::min<uint64_t>(want - data.size(), sandbox::InitClient::kMaxChunkBytes);
        absl::StatusOr<std::string> part = init_->ReadFile(rf.path(), rf.offset() + data.size(), chunk);
        if (!part.ok()) {
          s = part.status();
          break;
        }
        data += *part;
        if (part->size() < chunk) break;
      }
      pb::ToolResult r;
      r.set_data(std::move(data));
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kListFiles: {
      absl::StatusOr<std::vector<sandbox::FileInfo>> list = init_->ListFiles(call.list_files().path());
      if (!list.ok()) {
        FinishCall(call_id, list.status());
        return seq;
      }
      pb::ToolResult r;
      for (const sandbox::FileInfo& info : *list) *r.mutable_listing()->add_entries() = ToProto(info);
      FinishCall(call_id, r);
      return seq;
    }
    case pb::ToolCall::kStat: {
      absl::StatusOr<sandbox::FileInfo> info = init_->Stat(call.stat().path());
      if (!info.ok()) {
        FinishCall(call_id, info.status());
        return seq;
      }
      pb::ToolResult r;
      *r.mutable_info() = ToProto(*info);
      FinishCall(call_id, r);
      return seq;
    }
    case pb::ToolCall::kRemove: {
      absl::Status s = init_->Remove(call.remove().path(), call.remove().recursive());
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kMkdir: {
      absl::Status s = init_->Mkdir(call.mkdir().path(), call.mkdir().parents());
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::TOOL_NOT_SET:
      break;
  }
  return seq;
}

void Session::FinishCall(const std::string& call_id, const absl::StatusOr<pb::ToolResult>& result) {
  Touch();
  pb::Event event;
  pb::ToolCallFinished* finished = event.mutable_tool_call_finished();
  finished->set_call_id(call_id);
  if (result.ok()) {
    *finished->mutable_result() = *result;
  } else {
    finished->mutable_error()->set_code(static_cast<int>(result.status().code()));
    finished->mutable_error()->set_message(std::string(result.status().message()));
  }
  events_.Append(std::move(event));
  std::lock_guard lock(mu_);
  running_execs_.erase(call_id);
}

absl::StatusOr<std::pair<std::string, uint64_t>> Session::StartCallOnce(const std::string& key,
                                                                        const std::string& new_call_id,
                                                                        const pb::ToolCall& call) {
  if (key.empty()) {
    ASSIGN_OR_RETURN(uint64_t seq, StartCall(new_call_id, call));
    return std::make_pair(new_call_id, seq);
  }
  std::string body;
  call.SerializeToString(&body);
  std::lock_guard lock(idempotent_mu_);
  auto it = idempotent_calls_.find(key);
  if (it != idempotent_calls_.end()) {
    if (it->second.body != body) {
      return absl::AbortedError(absl::StrCat("idempotency_key '", key, "' was used for a different call"));
    }
    return std::make_pair(it->second.call_id, it->second.seq);
  }
  ASSIGN_OR_RETURN(uint64_t seq, StartCall(new_call_id, call));
  idempotent_calls_[key] = IdempotentCall{std::move(body), new_call_id, seq};
  return std::make_pair(new_call_id, seq);
}

absl::StatusOr<std::unique_ptr<FileTransfer>> Session::BeginUpload(const std::string& path, uint32_t mode) {
  if (ended_ || init_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  }
  if (path.empty()) return absl::InvalidArgumentError("upload: path: empty");
  Touch();
  return std::make_unique<FileTransfer>(init_.get(), path, mode);
}

void Session::RequestKill(const std::string& call_id) {
  {
    std::lock_guard lock(kill_mu_);
    kill_queue_.push_back(call_id);
  }
  kill_cv_.notify_one();
}

void Session::RunKiller(std::stop_token stop) {
  for (;;) {
    std::string call_id;
    {
      std::unique_lock lock(kill_mu_);
      if (!kill_cv_.wait(lock, stop, [this] { return !kill_queue_.empty(); })) return;
      call_id = std::move(kill_queue_.front());
      kill_queue_.pop_front();
    }
    ExecControl kill;
    kill.signal = SIGKILL;
    (void)ControlExec(call_id, kill);
  }
}

absl::Status Session::ControlExec(const std::string& call_id, const ExecControl& control) {
  uint64_t id;
  {
    std::lock_guard lock(mu_);
    auto it = running_execs_.find(call_id);
    if (it == running_execs_.end() || it->second == 0) {
      return absl::FailedPreconditionError(absl::StrCat("call ", call_id, " is not running"));
    }
    id = it->second;
  }
  Touch();
  if (!control.stdin_data.empty() || control.stdin_eof) {
    RETURN_IF_ERROR(init_->WriteStdin(id, control.stdin_data, control.stdin_eof));
  }
  if (control.rows > 0 && control.cols > 0) RETURN_IF_ERROR(init_->Resize(id, control.rows, control.cols));
  if (control.signal > 0) RETURN_IF_ERROR(init_->Signal(id, control.signal));
  return absl::OkStatus();
}

}  // namespace sbx::agent
