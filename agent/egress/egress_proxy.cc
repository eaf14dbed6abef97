// The egress proxy's event loop (egress_proxy.h): its threads, accepting, the connection lifecycle, timeouts
// and reading the request header. The rule decision, the ask gate and connecting are in egress_decide.cc,
// the relay in egress_relay.cc, the rules in egress_rules.cc.
#include "agent/egress/egress_proxy.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "agent/egress/egress_proxy_impl.h"
#include "agent/egress/ip_util.h"
#include "base/status.h"
#include "net/http1_parser.h"

namespace sbx::agent {
namespace egress_internal {

const char* ActionName(Action a) {
  switch (a) {
    case Action::kDenied:
      return "egress_denied";
    case Action::kNested:
      return "egress_nested_connect";
    case Action::kBadRequest:
      return "egress_bad_request";
    case Action::kFailed:
      return "egress_failed";
    case Action::kRejected:
      return "egress_rejected";
    case Action::kTimedOut:
      return "egress_timed_out";
  }
  return "egress_unknown";
}

}  // namespace egress_internal

using egress_internal::kAcceptPause;
using egress_internal::kLinger;
using egress_internal::kListenTag;
using egress_internal::kMaxAcceptsPerWake;
using egress_internal::kRelayBufferBytes;
using egress_internal::kWakeTag;
using egress_internal::milliseconds;
using egress_internal::Phase;
using egress_internal::Transient;
using http1::BodyFramer;
using http1::CheckPartialHead;
using http1::HostPort;
using http1::HttpError;
using http1::ParseHead;
using http1::Printable;

EgressProxy::Impl::Impl(UniqueFd listen, UniqueFd epoll, UniqueFd wake, EgressProxyOptions options)
    : options_(std::move(options)),
      policy_(options_.allow, options_.deny, options_.ask),
      listen_(std::move(listen)),
      epoll_(std::move(epoll)),
      wake_(std::move(wake)),
      scratch_(kRelayBufferBytes) {
  if (options_.ceiling) ceiling_.emplace(options_.ceiling->allow, options_.deny, options_.ceiling->ask);
  inbox_->wake_fd = wake_.get();
}

EgressProxy::Impl::~Impl() {
  {
    absl::MutexLock lock(&inbox_->mu);
    inbox_->closed = true;  // answers from now on go nowhere (the eventfd closes after this)
  }
  loop_.request_stop();
  Wake();
  if (loop_.joinable()) loop_.join();
  {
    absl::MutexLock lock(&resolve_mu_);
    resolvers_stopping_ = true;
  }
  for (std::jthread& t : resolvers_) t.request_stop();
  for (std::jthread& t : resolvers_) {
    if (t.joinable()) t.join();
  }
}

void EgressProxy::Impl::StartThreads() {
  for (size_t i = 0; i < options_.resolver_threads; ++i) {
    resolvers_.emplace_back([this](std::stop_token stop) { ResolveLoop(stop); });
  }
  loop_ = std::jthread([this](std::stop_token stop) { Run(stop); });
}

EgressProxy::Stats EgressProxy::Impl::stats() const {
  Stats s;
  s.allowed = allowed_.load(std::memory_order_relaxed);
  s.denied = denied_.load(std::memory_order_relaxed);
  s.failed = failed_.load(std::memory_order_relaxed);
  s.bad_requests = bad_requests_.load(std::memory_order_relaxed);
  s.overloaded = overloaded_.load(std::memory_order_relaxed);
  s.asked = asked_.load(std::memory_order_relaxed);
  s.approved = approved_.load(std::memory_order_relaxed);
  s.rejected = rejected_.load(std::memory_order_relaxed);
  s.bytes_up = bytes_up_.load(std::memory_order_relaxed);
  s.bytes_down = bytes_down_.load(std::memory_order_relaxed);
  s.active = active_.load(std::memory_order_relaxed);
  return s;
}

void EgressProxy::Impl::Wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_.get(), &one, sizeof(one));  // EAGAIN: already pending
}

void EgressProxy::Impl::ResolveLoop(std::stop_token stop) {
  while (!stop.stop_requested()) {
    std::pair<uint64_t, std::string> job;
    {
      absl::MutexLock lock(&resolve_mu_);
      resolve_mu_.Await(absl::Condition(this, &Impl::ResolverHasWork));
      if (jobs_.empty()) return;  // stopping
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    absl::StatusOr<std::vector<sockaddr_storage>> result = options_.resolve(job.second);
    {
      absl::MutexLock lock(&resolve_mu_);
      resolved_.push_back({job.first, std::move(result)});
    }
    Wake();
  }
}

void EgressProxy::Impl::CancelResolve(uint64_t id) {
  absl::MutexLock lock(&resolve_mu_);
  std::erase_if(jobs_, [id](const auto& job) { return job.first == id; });
}

void EgressProxy::Impl::Run(std::stop_token stop) {
  epoll_event events[64];
  while (!stop.stop_requested()) {
    Clock::time_point next = Clock::time_point::max();
    if (!timers_.empty()) next = timers_.begin()->first;
    if (accept_paused_) next = std::min(next, accept_resume_);
    int timeout = -1;
    if (next != Clock::time_point::max()) {
      const auto wait = std::chrono::ceil<milliseconds>(next - Clock::now()).count();
      timeout = static_cast<int>(std::clamp<int64_t>(wait, 0, 60000));
    }
    const int n = epoll_wait(epoll_.get(), events, 64, timeout);
    if (n < 0 && errno != EINTR) break;  // only on a bug (EBADF, EINVAL)
    for (int i = 0; i < n; ++i) Dispatch(events[i].data.u64, events[i].events);
    const Clock::time_point now = Clock::now();
    if (accept_paused_ && now >= accept_resume_) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = kListenTag;
      epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, listen_.get(), &ev);
      accept_paused_ = false;
    }
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const uint64_t id = timers_.begin()->second;
      timers_.erase(timers_.begin());
      auto it = conns_.find(id);
      if (it == conns_.end() || it->second->dead) continue;
      OnTimeout(*it->second, now);
      if (!it->second->dead) Pump(*it->second);
    }
    for (uint64_t id : dead_) conns_.erase(id);
    dead_.clear();
  }
  for (auto& [id, conn] : conns_) Close(*conn);
  conns_.clear();
  dead_.clear();
}

void EgressProxy::Impl::Dispatch(uint64_t tag, uint32_t events) {
  if (tag == kListenTag) return Accept();
  if (tag == kWakeTag) {
    uint64_t count;
    [[maybe_unused]] ssize_t n = ::read(wake_.get(), &count, sizeof(count));
    ProcessResolved();
    return ProcessAnswers();
  }
  auto it = conns_.find(tag >> 1);
  if (it == conns_.end() || it->second->dead) return;
  Conn& c = *it->second;
  const bool readable = events & (EPOLLIN | EPOLLHUP | EPOLLERR);
  const bool writable = events & (EPOLLOUT | EPOLLHUP | EPOLLERR);
  if ((tag & 1) == 0) {  // client
    switch (c.phase) {
      case Phase::kHeader:
        if (readable) ReadHead(c);
        break;
      case Phase::kRelay:
        if (readable && (c.client_events & EPOLLIN)) ReadClient(c);
        if (!c.dead && writable && (c.client_events & EPOLLOUT)) WriteClient(c);
        break;
      case Phase::kFinish:
        if (!c.down.empty()) {
          if (writable) WriteClient(c);
        } else if (readable) {
          DrainClient(c);
        }
        break;
      case Phase::kAsking:
        // Only EPOLLRDHUP (or a hang-up) is registered: the client left while held. Its answer, when it
        // comes, finds no connection.
        return Close(c);
      default:
        break;
    }
  } else {  // upstream
    if (c.phase == Phase::kConnecting) {
      if (readable || writable) FinishConnect(c);
    } else if (c.phase == Phase::kRelay) {
      if (readable && (c.upstream_events & EPOLLIN)) ReadUpstream(c);
      if (!c.dead && writable && (c.upstream_events & EPOLLOUT)) WriteUpstream(c);
    }
  }
  if (!c.dead) Pump(c);
}

void EgressProxy::Impl::Accept() {
  for (int i = 0; i < kMaxAcceptsPerWake; ++i) {
    const int fd = accept4(listen_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays queued; retry later instead of spinning.
      epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, listen_.get(), nullptr);
      accept_paused_ = true;
      accept_resume_ = Clock::now() + kAcceptPause;
      return;
    }
    UniqueFd client(fd);
    if (conns_.size() - dead_.size() >= options_.max_connections) {
      Overloaded(std::move(client));
      continue;
    }
    overload_audited_ = false;
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // not TCP (a test's unix socket): ignored
    auto conn = std::make_unique<Conn>();
    Conn& c = *conn;
    c.id = next_id_++;
    c.client = std::move(client);
    c.last_activity = Clock::now();
    conns_.emplace(c.id, std::move(conn));
    active_.fetch_add(1, std::memory_order_relaxed);
    SetDeadline(c, c.last_activity + options_.header_timeout);
    UpdateInterest(c);
  }
}

void EgressProxy::Impl::Overloaded(UniqueFd client) {
  overloaded_.fetch_add(1, std::memory_order_relaxed);
  if (!overload_audited_) {
    overload_audited_ = true;
    Audit(nullptr, "egress_overloaded", "",
          absl::StrCat(options_.max_connections, " connections are open (max_connections); refusing more"));
  }
  const std::string answer = http1::ErrorResponse(503, "egress proxy: too many connections");
  [[maybe_unused]] ssize_t n = send(client.get(), answer.data(), answer.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  shutdown(client.get(), SHUT_WR);
}

void EgressProxy::Impl::Close(Conn& c) {
  if (c.dead) return;
  if (c.phase == Phase::kAsking) Withdraw(c);
  c.dead = true;
  timers_.erase({c.deadline, c.id});
  if (c.phase == Phase::kResolving) CancelResolve(c.id);
  c.client.Reset();
  c.upstream.Reset();
  c.client_events = c.upstream_events = 0;
  dead_.push_back(c.id);
  active_.fetch_sub(1, std::memory_order_relaxed);
}

void EgressProxy::Impl::ResetUpstream(Conn& c) {
  c.upstream.Reset();  // closing removes it from the epoll set
  c.upstream_events = 0;
}

void EgressProxy::Impl::SetDeadline(Conn& c, Clock::time_point when) {
  timers_.erase({c.deadline, c.id});
  c.deadline = when;
  timers_.insert({when, c.id});
}

void EgressProxy::Impl::Audit(const Conn* c, const char* action, std::string destination, std::string detail) {
  EgressAudit a;
  a.destination = c ? c->destination : std::move(destination);
  a.action = action;
  a.detail = std::move(detail);
  if (c) a.rule = c->rule;
  if (options_.current_call_id) a.call_id = options_.current_call_id();
  Emit(std::move(a));
}

void EgressProxy::Impl::Emit(EgressAudit a) {
  if (options_.audit) options_.audit(a);
}

void EgressProxy::Impl::Respond(Conn& c, int status, Action action, std::string detail) {
  switch (action) {
    case Action::kDenied:
    case Action::kNested:
      denied_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Action::kBadRequest:
      bad_requests_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Action::kFailed:
      failed_.fetch_add(1, std::memory_order_relaxed);
      break;
    case Action::kRejected:
    case Action::kTimedOut:
      denied_.fetch_add(1, std::memory_order_relaxed);
      rejected_.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  const bool answered = action == Action::kRejected || action == Action::kTimedOut;
  const std::string body =
      absl::StrCat("egress proxy: ", c.destination.empty() ? "" : absl::StrCat(c.destination, ": "),
                   answered ? absl::StrCat(ActionName(action), ": ") : "", detail);
  // A human's answer is audited once per question (AnswerQuestion), not per connection waiting on it.
  if (!answered) Audit(&c, ActionName(action), "", std::move(detail));
  if (c.response_started || c.phase == Phase::kFinish) return Close(c);
  if (c.phase == Phase::kResolving) CancelResolve(c.id);
  // In a tunnel the rest of the 200 may still be unsent: the answer follows it.
  if (!(c.phase == Phase::kRelay && c.req.connect)) c.down.Clear();
  c.down.Append(http1::ErrorResponse(status, body));
  ResetUpstream(c);
  c.up.Clear();
  c.head.clear();
  c.phase = Phase::kFinish;
  SetDeadline(c, Clock::now() + kLinger);
}

void EgressProxy::Impl::OnTimeout(Conn& c, Clock::time_point now) {
  switch (c.phase) {
    case Phase::kHeader:
      return Respond(c, 408, Action::kBadRequest,
                     absl::StrCat("request header not complete within ", options_.header_timeout.count(), " ms"));
    case Phase::kResolving:
    case Phase::kConnecting:
      return Respond(c, 504, Action::kFailed,
                     absl::StrCat(c.phase == Phase::kResolving ? "resolving " : "connecting to ", c.req.host,
                                  " took longer than ", options_.connect_timeout.count(), " ms"));
    case Phase::kRelay:
      if (c.last_activity + options_.idle_timeout > now)
        return SetDeadline(c, c.last_activity + options_.idle_timeout);
      if (!c.req.connect && !c.response_started) {
        return Respond(c, 504, Action::kFailed,
                       absl::StrCat("no response within ", options_.idle_timeout.count(), " ms"));
      }
      return Close(c);
    case Phase::kFinish:
      return Close(c);
    case Phase::kAsking:
      return;  // no timer is set while held: the hook's deadline bounds it
  }
}

void EgressProxy::Impl::ReadHead(Conn& c) {
  const size_t room = options_.max_header_bytes - c.head.size();
  const ssize_t n = recv(c.client.get(), scratch_.data(), std::min(room, scratch_.size()), 0);
  if (n < 0) {
    if (!Transient(errno)) Close(c);
    return;
  }
  if (n == 0) return Close(c);  // gone before a whole header: nobody to answer
  const size_t old = c.head.size();
  c.head.append(scratch_.data(), static_cast<size_t>(n));
  if (std::optional<HttpError> e = CheckPartialHead(c.head)) {
    return Respond(c, e->status, Action::kBadRequest, std::move(e->detail));
  }
  const std::optional<size_t> head_end = http1::FindHeadEnd(c.head, old);
  if (!head_end) {
    if (c.head.size() >= options_.max_header_bytes) {
      return Respond(c, 431, Action::kBadRequest,
                     absl::StrCat("request header larger than ", options_.max_header_bytes, " bytes"));
    }
    return;
  }
  if (std::optional<HttpError> e = ParseHead(std::string_view(c.head).substr(0, *head_end), &c.req)) {
    return Respond(c, e->status, Action::kBadRequest, std::move(e->detail));
  }
  c.destination = HostPort(c.req.host, c.req.port);
  if (!c.req.connect) c.request_line = Printable(http1::FirstLine(c.head), 300);
  const std::string leftover = c.head.substr(*head_end);
  std::string().swap(c.head);
  if (c.req.connect) {
    c.up.Append(leftover);
  } else {
    c.up.Append(c.req.upstream_head);
    std::string().swap(c.req.upstream_head);
    c.body = BodyFramer(c.req.body, c.req.content_length);
    const size_t k = c.body.Feed(leftover);
    if (c.body.error()) return Respond(c, 400, Action::kBadRequest, "malformed chunked request body");
    c.up.Append(std::string_view(leftover).substr(0, k));
  }
  BeginResolve(c);
}

EgressProxy::EgressProxy(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
EgressProxy::~EgressProxy() = default;

EgressProxy::Stats EgressProxy::stats() const { return impl_->stats(); }

absl::StatusOr<std::unique_ptr<EgressProxy>> EgressProxy::Start(UniqueFd listen_fd, EgressProxyOptions options) {
  if (!listen_fd.valid()) return absl::InvalidArgumentError("egress proxy: no listening socket");
  int accepting = 0;
  socklen_t len = sizeof(accepting);
  if (getsockopt(listen_fd.get(), SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0) {
    return Annotate(ErrnoToStatus(errno, "getsockopt(SO_ACCEPTCONN)"), "egress proxy: the listen fd");
  }
  if (!accepting) return absl::InvalidArgumentError("egress proxy: the listen fd is not a listening socket");
  if (options.max_connections == 0) return absl::InvalidArgumentError("egress proxy: max_connections is 0");
  if (options.resolver_threads == 0 || options.resolver_threads > 64) {
    return absl::InvalidArgumentError("egress proxy: resolver_threads must be 1 to 64");
  }
  if (options.max_header_bytes < 1024) {
    return absl::InvalidArgumentError("egress proxy: max_header_bytes must be at least 1024");
  }
  if (options.connect_timeout.count() <= 0 || options.idle_timeout.count() <= 0 ||
      options.header_timeout.count() <= 0) {
    return absl::InvalidArgumentError("egress proxy: timeouts must be positive");
  }
  if (!options.resolve) options.resolve = egress_internal::GetAddrInfo;

  const int flags = fcntl(listen_fd.get(), F_GETFL);
  if (flags < 0 || fcntl(listen_fd.get(), F_SETFL, flags | O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "egress proxy: fcntl(O_NONBLOCK) on the listen fd");
  }
  UniqueFd epoll(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return ErrnoToStatus(errno, "egress proxy: epoll_create1");
  UniqueFd wake(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake) return ErrnoToStatus(errno, "egress proxy: eventfd");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kListenTag;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, listen_fd.get(), &ev) != 0) {
    return ErrnoToStatus(errno, "egress proxy: epoll_ctl(listen fd)");
  }
  ev.data.u64 = kWakeTag;
  if (epoll_ctl(epoll.get(), EPOLL_CTL_ADD, wake.get(), &ev) != 0) {
    return ErrnoToStatus(errno, "egress proxy: epoll_ctl(eventfd)");
  }
  auto impl = std::make_unique<Impl>(std::move(listen_fd), std::move(epoll), std::move(wake), std::move(options));
  impl->StartThreads();
  return std::unique_ptr<EgressProxy>(new EgressProxy(std::move(impl)));
}

}  // namespace sbx::agent
