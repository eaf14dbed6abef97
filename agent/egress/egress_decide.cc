// The egress proxy's decision for a request (egress_proxy.h, "Decision"): resolving, checking the rules and
// the ceiling, holding a destination for a human (the ask gate), and connecting to the checked addresses.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/egress/egress_proxy.h"
#include "agent/egress/egress_proxy_impl.h"
#include "agent/egress/ip_util.h"
#include "net/http1_parser.h"

namespace sbx::agent {

using egress_internal::IpFromSockaddr;
using egress_internal::Phase;
using egress_internal::SockaddrFromIp;
using egress_internal::SockaddrLen;
using http1::IpToString;

void EgressProxy::Impl::BeginResolve(Conn& c) {
  c.phase = Phase::kResolving;
  SetDeadline(c, Clock::now() + options_.connect_timeout);
  if (c.req.address) return Decide(c, {SockaddrFromIp(*c.req.address, c.req.port)});
  EgressPolicy::Verdict verdict = policy_.MayResolve(c.req.host, c.req.port);
  if (verdict.allowed && ceiling_) {
    verdict = ceiling_->MayResolve(c.req.host, c.req.port);
    if (!verdict.allowed) {
      verdict.reason = absl::StrCat("outside the host policy's rules: ", verdict.reason);
      verdict.rule = absl::StrCat("host policy: ", verdict.rule);
    }
  }
  if (!verdict.allowed) {
    c.rule = verdict.rule;
    return Respond(c, 403, Action::kDenied, verdict.reason);
  }
  absl::MutexLock lock(&resolve_mu_);
  jobs_.emplace_back(c.id, c.req.host);
}

void EgressProxy::Impl::ProcessResolved() {
  std::deque<Resolved> done;
  {
    absl::MutexLock lock(&resolve_mu_);
    done.swap(resolved_);
  }
  for (Resolved& r : done) {
    auto it = conns_.find(r.id);
    if (it == conns_.end() || it->second->dead || it->second->phase != Phase::kResolving) continue;
    Conn& c = *it->second;
    if (!r.result.ok()) {
      Respond(c, 502, Action::kFailed,
              absl::StrCat("cannot resolve ", c.req.host, ": ", r.result.status().message()));
    } else if (r.result->empty()) {
      Respond(c, 502, Action::kFailed, absl::StrCat("cannot resolve ", c.req.host, ": no addresses"));
    } else {
      Decide(c, *r.result);
    }
    if (!c.dead) Pump(c);
  }
}

const absl::StatusOr<std::vector<IpNetwork>>& EgressProxy::Impl::HostNetworks() {
  const Clock::time_point now = Clock::now();
  if (!host_networks_read_ || now - *host_networks_read_ >= kHostAddressesMaxAge || !host_networks_.ok()) {
    host_networks_ = ReadHostNetworks();
    host_networks_read_ = now;
  }
  return host_networks_;
}

void EgressProxy::Impl::Decide(Conn& c, const std::vector<sockaddr_storage>& resolved) {
  const absl::StatusOr<std::vector<IpNetwork>>& host = HostNetworks();
  if (!host.ok()) {
    // Fail closed: without the host's addresses no destination can be shown not to be the host.
    return Respond(c, 502, Action::kFailed,
                   absl::StrCat("cannot read the host's own addresses (", host.status().message(), ")"));
  }
  EgressPolicy::Verdict verdict = policy_.Check(c.req.host, c.req.address.has_value(), c.req.port, resolved, *host);
  if ((verdict.allowed || verdict.ask) && ceiling_) {
    // The host's rules over the request's (see "Ceiling"): the lower of the two decisions stands.
    const EgressPolicy::Verdict host_verdict =
        ceiling_->Check(c.req.host, c.req.address.has_value(), c.req.port, resolved, *host);
    if (!host_verdict.allowed && !host_verdict.ask) {
      verdict = host_verdict;
      verdict.reason = absl::StrCat("outside the host policy's rules: ", host_verdict.reason);
      verdict.rule = absl::StrCat("host policy: ", host_verdict.rule);
    } else if (verdict.allowed && host_verdict.ask) {
      verdict = host_verdict;
    }
  }
  c.rule = verdict.rule;
  if (!verdict.allowed && !verdict.ask) return Respond(c, 403, Action::kDenied, verdict.reason);
  c.addresses.clear();
  for (const sockaddr_storage& ss : resolved) {
    const sockaddr_storage a = SockaddrFromIp(*IpFromSockaddr(ss), c.req.port);
    const bool seen = std::any_of(c.addresses.begin(), c.addresses.end(),
                                  [&](const sockaddr_storage& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; });
    if (!seen) c.addresses.push_back(a);
  }
  if (verdict.ask) return Hold(c);
  AuditAllowed(c);
  StartConnect(c);
}

void EgressProxy::Impl::StartConnect(Conn& c) {
  c.phase = Phase::kConnecting;
  c.next_address = 0;
  TryConnect(c);
}

void EgressProxy::Impl::AuditAllowed(const Conn& c) {
  if (!options_.audit) return;
  const std::string call_id = options_.current_call_id ? options_.current_call_id() : "";
  std::string key = absl::StrCat(c.destination, "\n", call_id);
  if (allowed_audited_.count(key) != 0 || allowed_audited_.size() >= kMaxAllowedAuditKeys) return;
  allowed_audited_.insert(std::move(key));
  EgressAudit a;
  a.destination = c.destination;
  a.action = "egress_allowed";
  a.rule = c.rule;
  a.call_id = call_id;
  a.detail = absl::StrCat("allowed by \"", c.rule, "\"");
  Emit(std::move(a));
}

void EgressProxy::Impl::TryConnect(Conn& c) {
  for (; c.next_address < c.addresses.size(); ++c.next_address) {
    const sockaddr_storage ss = options_.connect_address_for_testing
                                    ? options_.connect_address_for_testing(c.addresses[c.next_address])
                                    : c.addresses[c.next_address];
    const int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      c.connect_error = std::strerror(errno);
      continue;
    }
    c.upstream.Reset(fd);
    c.upstream_events = 0;
    if (connect(fd, reinterpret_cast<const sockaddr*>(&ss), SockaddrLen(ss)) == 0) return Connected(c);
    if (errno == EINPROGRESS) return;  // Pump registers EPOLLOUT
    c.connect_error = absl::StrCat(IpToString(*IpFromSockaddr(ss)), ": ", std::strerror(errno));
    ResetUpstream(c);
  }
  Respond(c, 502, Action::kFailed, absl::StrCat("cannot connect (", c.connect_error, ")"));
}

void EgressProxy::Impl::FinishConnect(Conn& c) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(c.upstream.get(), SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err == 0) return Connected(c);
  c.connect_error = absl::StrCat(IpToString(*IpFromSockaddr(c.addresses[c.next_address])), ": ", std::strerror(err));
  ResetUpstream(c);
  ++c.next_address;
  TryConnect(c);
}

void EgressProxy::Impl::Connected(Conn& c) {
  allowed_.fetch_add(1, std::memory_order_relaxed);
  const int one = 1;
  setsockopt(c.upstream.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  c.phase = Phase::kRelay;
  c.last_activity = Clock::now();
  SetDeadline(c, c.last_activity + options_.idle_timeout);
  if (c.req.connect) {
    c.down.Append(http1::kConnectEstablished);
    c.down_own = http1::kConnectEstablished.size();
    CheckTunnel(c);
  }
}

// ---- the ask gate

void EgressProxy::Impl::Hold(Conn& c) {
  timers_.erase({c.deadline, c.id});  // the hook's deadline bounds the wait, not connect_timeout
  if (!options_.ask_hook) {
    return Respond(c, 403, Action::kDenied,
                   absl::StrCat(c.destination, " needs a human's approval (rule \"", c.rule,
                                "\") and this proxy has nobody to ask"));
  }
  const std::string key = absl::StrCat(c.destination, "\n", c.rule);
  if (auto it = question_by_key_.find(key); it != question_by_key_.end()) {
    questions_[it->second].conns.push_back(c.id);
    c.phase = Phase::kAsking;
    c.question = it->second;
    return;
  }
  if (questions_.size() >= options_.max_pending_asks) {
    return Respond(c, 403, Action::kDenied,
                   absl::StrCat(options_.max_pending_asks,
                                " destinations are already waiting for a human's approval (max_pending_asks)"));
  }
  c.phase = Phase::kAsking;
  const uint64_t qid = next_question_++;
  c.question = qid;
  Question& q = questions_[qid];
  q.key = key;
  q.destination = c.destination;
  q.rule = c.rule;
  q.call_id = options_.current_call_id ? options_.current_call_id() : "";
  q.conns.push_back(c.id);
  question_by_key_[key] = qid;
  EgressAsk ask;
  ask.destination = c.destination;
  ask.rule = c.rule;
  ask.call_id = q.call_id;
  ask.summary = c.req.connect ? absl::StrCat("CONNECT ", c.destination)
                              : absl::StrCat(c.destination, ": ", c.request_line);
  asked_.fetch_add(1, std::memory_order_relaxed);
  // `q` may not survive the hook (it only posts to the inbox, but keep no reference across a callback).
  std::string request_id = options_.ask_hook(
      ask, [inbox = inbox_, qid](EgressAnswer answer) { inbox->Post(qid, std::move(answer)); });
  auto it = questions_.find(qid);
  if (it == questions_.end()) return;
  it->second.request_id = std::move(request_id);
  if (inbox_->Has(qid)) return;  // decided at once (an earlier session-scoped decision): nobody was asked
  EgressAudit a;
  a.destination = it->second.destination;
  a.action = "egress_asked";
  a.rule = it->second.rule;
  a.call_id = it->second.call_id;
  a.request_id = it->second.request_id;
  a.detail = absl::StrCat("waiting for a human's approval: ", ask.summary);
  Emit(std::move(a));
}

void EgressProxy::Impl::Withdraw(const Conn& c) {
  auto it = questions_.find(c.question);
  if (it == questions_.end()) return;
  std::erase(it->second.conns, c.id);
  if (!it->second.conns.empty()) return;
  const std::string request_id = std::move(it->second.request_id);
  question_by_key_.erase(it->second.key);
  questions_.erase(it);
  if (options_.ask_cancel && !request_id.empty()) options_.ask_cancel(request_id);
}

void EgressProxy::Impl::ProcessAnswers() {
  std::deque<std::pair<uint64_t, EgressAnswer>> answers;
  {
    absl::MutexLock lock(&inbox_->mu);
    answers.swap(inbox_->answers);
  }
  for (auto& [qid, answer] : answers) {
    auto it = questions_.find(qid);
    if (it == questions_.end()) continue;  // answered twice: the first answer stands
    Question q = std::move(it->second);
    questions_.erase(it);
    question_by_key_.erase(q.key);
    AnswerQuestion(q, answer);
  }
}

void EgressProxy::Impl::AnswerQuestion(const Question& q, const EgressAnswer& answer) {
  std::vector<Conn*> waiting;
  for (uint64_t id : q.conns) {
    auto it = conns_.find(id);
    if (it != conns_.end() && !it->second->dead && it->second->phase == Phase::kAsking) {
      waiting.push_back(it->second.get());
    }
  }
  EgressAudit a;
  a.destination = q.destination;
  a.rule = q.rule;
  a.call_id = q.call_id;
  a.request_id = q.request_id;
  const std::string connections =
      absl::StrCat(waiting.size(), waiting.size() == 1 ? " connection" : " connections", " waiting");
  switch (answer.decision) {
    case EgressAnswer::Decision::kApproved:
      a.action = "egress_approved";
      a.detail = absl::StrCat("approved (", connections, ")");
      break;
    case EgressAnswer::Decision::kRejected:
      a.action = "egress_rejected";
      a.detail = absl::StrCat(answer.reason.empty() ? "rejected" : answer.reason, " (", connections, ")");
      break;
    case EgressAnswer::Decision::kTimedOut:
      a.action = "egress_timed_out";
      a.detail = absl::StrCat(answer.reason.empty() ? "no decision in time" : answer.reason, " (", connections, ")");
      break;
  }
  Emit(std::move(a));
  for (Conn* c : waiting) {
    if (answer.decision == EgressAnswer::Decision::kApproved) {
      approved_.fetch_add(1, std::memory_order_relaxed);
      SetDeadline(*c, Clock::now() + options_.connect_timeout);
      StartConnect(*c);
    } else {
      const bool timed_out = answer.decision == EgressAnswer::Decision::kTimedOut;
      Respond(*c, 403, timed_out ? Action::kTimedOut : Action::kRejected,
              answer.reason.empty() ? (timed_out ? "no decision in time" : "rejected") : answer.reason);
    }
    if (!c->dead) Pump(*c);
  }
}

}  // namespace sbx::agent
