// Session::Start, in named steps: the policy becomes a serving jail (its seccomp records held until the
// session exists), the init handshake starts the kind's driver (the desktop's display, the browser), the
// egress proxy is wired to the session's rules, approvals and event log, and session_started is seq 1.
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/run/outcome_json.h"
#include "agent/session/session.h"
#include "base/status.h"
#include "wire/init_protocol.pb.h"

namespace sbx::agent {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

// Carries the jail's seccomp records (on the supervisor's thread) to its session, which exists only once the
// jail has started: what comes before waits here, a few at most.
struct SeccompRelay {
  absl::Mutex mu;
  // Set once the session exists.
  std::function<void(const sandbox::SeccompAudit&)> deliver ABSL_GUARDED_BY(mu);
  std::vector<sandbox::SeccompAudit> pending ABSL_GUARDED_BY(mu);  // until then, up to 64
  // The call the last recorded denial was attributed to: a seccomp_suppressed count follows recorded
  // denials (it is emitted when the bucket refills, perhaps after the next call started) and counts those.
  std::string last_denial_call_id ABSL_GUARDED_BY(mu);  // used by `deliver` only
};

namespace {

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

// The policy as a serving jail's options (FromParent: the launcher clones it); its seccomp records go to
// `relay`.
sandbox::JailOptions ServingJailOptions(const Session::Options& options, std::shared_ptr<SeccompRelay> relay) {
  sandbox::JailOptions jail_options;
  jail_options.serve = true;
  jail_options.init_path = options.init_path;
  jail_options.cgroups = options.cgroups;
  jail_options.name = SessionCgroupName(options.id);
  jail_options.warnings = options.warnings;
  jail_options.pids_poll_interval = std::chrono::milliseconds(250);
  jail_options.cpu_background = options.pooled;
  jail_options.seccomp_audit = [relay](const sandbox::SeccompAudit& a) {
    absl::MutexLock lock(&relay->mu);
    if (relay->deliver) {
      relay->deliver(a);
    } else if (relay->pending.size() < 64) {
      relay->pending.push_back(a);
    }
  };
  return jail_options;
}

// The init handshake for a desktop: sandbox-init starts the display; its size goes into `options`.
absl::Status StartDesktopInJail(sandbox::InitClient* init, Session::Options* options) {
  absl::StatusOr<sandbox::DesktopInfo> display =
      init->DesktopStart(options->desktop.width(), options->desktop.height(), options->desktop.window_manager());
  if (!display.ok()) return Annotate(display.status(), "starting the desktop");
  options->display_width = display->width;
  options->display_height = display->height;
  return absl::OkStatus();
}

// The init handshake for a browser: sandbox-init starts Chromium and loads the storage state, if any.
absl::Status StartBrowserInJail(const sandbox::Policy& policy, sandbox::InitClient* init,
                                const Session::Options& options) {
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
  return absl::OkStatus();
}

// A decision on a held destination as the egress proxy's answer.
EgressAnswer EgressAnswerOf(const pb::HumanDecision& d) {
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
  return answer;
}

}  // namespace

std::string SessionCgroupName(const std::string& session_id) { return absl::StrCat("session-", session_id); }

absl::StatusOr<std::shared_ptr<Session>> Session::Start(const sandbox::Policy& policy, Options options) {
  const auto start = Clock::now();
  auto seccomp_relay = std::make_shared<SeccompRelay>();
  if (options.launcher == nullptr) return absl::InternalError("session: no jail launcher");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::Jail> jail,
                   options.launcher->Start(policy, ServingJailOptions(options, seccomp_relay)));
  auto init = std::make_unique<sandbox::InitClient>(jail->TakeControlFd());
  if (options.kind == pb::DESKTOP) RETURN_IF_ERROR(StartDesktopInJail(init.get(), &options));
  if (options.kind == pb::BROWSER) RETURN_IF_ERROR(StartBrowserInJail(policy, init.get(), options));
  std::shared_ptr<Session> session(new Session(std::move(options), std::move(jail), std::move(init)));
  if (policy.spec().network == sandbox::NetworkMode::kEgress) RETURN_IF_ERROR(session->StartEgressProxy(policy));
  session->AppendStarted(start, seccomp_relay.get());
  if (session->options_.metrics != nullptr) {
    session->options_.metrics->SessionStarted(std::chrono::duration<double>(Clock::now() - start).count());
  }
  session->watcher_ = std::jthread([raw = session.get()] { raw->WatchJail(); });
  return session;
}

absl::Status Session::StartEgressProxy(const sandbox::Policy& policy) {
  // The proxy listens on the jail's loopback and connects out from the agent's namespace, to the
  // policy's allowed destinations only (agent/egress/egress_proxy.h): the request's rules when it had its own
  // (inside the host's, which the proxy checks too), else the host policy's.
  EgressProxyOptions eo;
  RETURN_IF_ERROR(EgressRulesInto(policy, &eo));
  ASSIGN_OR_RETURN(UniqueFd listen_fd, jail_->ListenInNetns(policy.spec().egress_proxy_port));
  eo.deny = options_.egress_deny;
  eo.resolver_threads = 1;
  eo.audit = [this](const EgressAudit& a) { OnEgressAudit(a); };
  eo.current_call_id = [this] { return LastCallId(); };
  // The ask gate: a held destination is a HumanRequest of kind EGRESS in the session's approvals. The proxy
  // is destroyed before the approvals (~Session), and an answer after that goes nowhere (the proxy's inbox
  // is closed).
  eo.ask_hook = [this](const EgressAsk& a, EgressAnswerFn done) { return AskEgress(a, std::move(done)); };
  eo.ask_cancel = [this](const std::string& request_id) {
    approvals().Cancel(request_id, "the sandbox closed the connection that waited for it");
  };
  ASSIGN_OR_RETURN(egress_, EgressProxy::Start(std::move(listen_fd), std::move(eo)));
  return absl::OkStatus();
}

absl::Status Session::EgressRulesInto(const sandbox::Policy& policy, EgressProxyOptions* eo) {
  pb::EffectiveEgress& effective = effective_egress_;
  if (const std::optional<SessionEgress>& req = options_.egress; req.has_value()) {
    ASSIGN_OR_RETURN(eo->allow, ParseEgressRules(req->allow));
    ASSIGN_OR_RETURN(eo->ask, ParseEgressRules(req->ask));
    EgressCeiling ceiling;
    ASSIGN_OR_RETURN(ceiling.allow, ParseEgressRules(req->ceiling_allow));
    ASSIGN_OR_RETURN(ceiling.ask, ParseEgressRules(req->ceiling_ask));
    if (req->default_ask == pb::EgressRequest::ASK) {
      // Default ASK: whatever the host's rules would let through (allowed or asked) is asked about; the
      // ceiling keeps everything else refused.
      eo->ask.insert(eo->ask.end(), ceiling.allow.begin(), ceiling.allow.end());
      eo->ask.insert(eo->ask.end(), ceiling.ask.begin(), ceiling.ask.end());
    }
    eo->ceiling = std::move(ceiling);
    effective.mutable_allow()->Add(req->allow.begin(), req->allow.end());
    effective.mutable_ask()->Add(req->ask.begin(), req->ask.end());
    effective.set_default_(req->default_ask);
    effective.set_source(pb::EffectiveEgress::REQUEST);
  } else {
    ASSIGN_OR_RETURN(eo->allow, ParseEgressRules(policy.spec().egress_allow));
    ASSIGN_OR_RETURN(eo->ask, ParseEgressRules(policy.spec().egress_ask));
    effective.mutable_allow()->Add(policy.spec().egress_allow.begin(), policy.spec().egress_allow.end());
    effective.mutable_ask()->Add(policy.spec().egress_ask.begin(), policy.spec().egress_ask.end());
    effective.set_default_(pb::EgressRequest::DENY);
    effective.set_source(pb::EffectiveEgress::HOST);
  }
  return absl::OkStatus();
}

void Session::OnEgressAudit(const EgressAudit& a) {
  // Events stay in memory for the session's life, and a workload can be denied in a loop: past a
  // number of audits, one more says so and the rest are only counted (egress metrics, the proxy's log).
  // egress_allowed has a limit of its own, so a page that loads from many hosts cannot use up the
  // one that reports denials.
  constexpr uint64_t kMaxAudits = 1000;
  const bool allowed = a.action == "egress_allowed";
  const uint64_t n = (allowed ? allowed_audits_ : audits_).fetch_add(1) + 1;
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
  events_.Append(std::move(event));
}

std::string Session::AskEgress(const EgressAsk& a, EgressAnswerFn done) {
  // A session-scoped approval covers its action ("egress:host:port"), so later connections there go through
  // unasked (Approvals decides them at once).
  GateAsk ask;
  ask.kind = pb::HumanRequest::EGRESS;
  ask.call_id = a.call_id;
  ask.rule = a.rule;
  ask.action = absl::StrCat("egress:", a.destination);
  ask.destination = a.destination;
  // A plain HTTP request line can carry a token in its query: secret_patterns apply.
  ask.question = gates().Redact(absl::StrCat("Let the sandbox connect to ", a.summary, "?"));
  return approvals().Ask(std::move(ask), [done = std::move(done)](const pb::HumanDecision& d) {
    done(EgressAnswerOf(d));
  });
}

void Session::AppendStarted(Clock::time_point start, SeccompRelay* relay) {
  pb::Event started;
  started.mutable_session_started()->set_kind(options_.kind);
  started.mutable_session_started()->set_start_latency_us(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  events_.Append(std::move(started));
  // Only now, so that session_started stays seq 1 (Chromium's start is denied a few calls; their audits
  // waited in `pending`). Attributed to the newest tool call, as egress audits are (the init protocol does not
  // tell which process an exec is). NOTE: the supervisor stops before the jail goes (~Session resets jail_
  // first).
  absl::MutexLock relay_lock(&relay->mu);
  relay->deliver = [this, relay](const sandbox::SeccompAudit& a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    // NOTE: called with relay->mu held (the jail's seccomp_audit callback, or the loop below).
    std::string call_id;
    if (a.kind == sandbox::SeccompAudit::Kind::kSuppressed && !relay->last_denial_call_id.empty()) {
      call_id = relay->last_denial_call_id;
    } else {
      call_id = LastCallId();
    }
    if (a.kind != sandbox::SeccompAudit::Kind::kSuppressed) relay->last_denial_call_id = call_id;
    events_.Append(SeccompAuditEvent(a, call_id));
  };
  for (const sandbox::SeccompAudit& a : relay->pending) relay->deliver(a);
  relay->pending.clear();
}

}  // namespace sbx::agent
