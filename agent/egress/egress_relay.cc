// The egress proxy's relay (egress_proxy.h, "Protocol"): moving bytes both ways with backpressure, passing
// half-closes on, the nested-CONNECT check, and the epoll interest of each connection.
#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "agent/egress/egress_proxy.h"
#include "agent/egress/egress_proxy_impl.h"
#include "net/http1_parser.h"

namespace sbx::agent {

using egress_internal::kLinger;
using egress_internal::kRelayBufferBytes;
using egress_internal::Phase;
using egress_internal::Transient;

void EgressProxy::Impl::CheckTunnel(Conn& c) {
  std::string_view line;
  switch (http1::ClassifyTunnelStart(c.up.view(), c.client_eof, &line)) {
    case http1::TunnelStart::kBlank:
      if (c.client_eof) {
        c.tunnel_checked = true;
      } else if (c.up.size() >= kRelayBufferBytes) {
        Respond(c, 403, Action::kNested, "the tunnel opened with a buffer full of blank lines");
      }
      return;
    case http1::TunnelStart::kNotConnect:
      c.tunnel_checked = true;
      return;
    case http1::TunnelStart::kUndecided:
      return;
    case http1::TunnelStart::kConnect:
      Respond(c, 403, Action::kNested,
              absl::StrCat("a CONNECT request inside the tunnel is not allowed (\"", http1::Printable(line), "\")"));
      return;
  }
}

void EgressProxy::Impl::ReadClient(Conn& c) {
  const size_t room = kRelayBufferBytes - std::min(c.up.size(), kRelayBufferBytes);
  if (room == 0) return;
  const ssize_t n = recv(c.client.get(), scratch_.data(), room, 0);
  if (n < 0) {
    if (!Transient(errno)) Close(c);
    return;
  }
  if (n == 0) {
    c.client_eof = true;
    if (c.req.connect && !c.tunnel_checked) CheckTunnel(c);
    return;
  }
  c.last_activity = Clock::now();
  const std::string_view data(scratch_.data(), static_cast<size_t>(n));
  if (c.req.connect) {
    c.up.Append(data);
    if (!c.tunnel_checked) CheckTunnel(c);
    return;
  }
  const size_t k = c.body.Feed(data);
  if (c.body.error()) return Respond(c, 400, Action::kBadRequest, "malformed chunked request body");
  c.up.Append(data.substr(0, k));  // bytes after the body are dropped
}

void EgressProxy::Impl::WriteUpstream(Conn& c) {
  const std::string_view v = c.up.view();
  const ssize_t n = send(c.upstream.get(), v.data(), v.size(), MSG_NOSIGNAL);
  if (n < 0) {
    if (!Transient(errno)) UpstreamFailed(c, errno);
    return;
  }
  c.up.Consume(static_cast<size_t>(n));
  bytes_up_.fetch_add(static_cast<uint64_t>(n), std::memory_order_relaxed);
  c.last_activity = Clock::now();
}

void EgressProxy::Impl::ReadUpstream(Conn& c) {
  const size_t room = kRelayBufferBytes - std::min(c.down.size(), kRelayBufferBytes);
  if (room == 0) return;
  const ssize_t n = recv(c.upstream.get(), scratch_.data(), room, 0);
  if (n < 0) {
    if (!Transient(errno)) UpstreamFailed(c, errno);
    return;
  }
  if (n == 0) {
    c.upstream_eof = true;
    if (!c.req.connect && !c.response_started) {
      Respond(c, 502, Action::kFailed, "the server closed the connection without a response");
    }
    return;
  }
  c.response_started = true;
  c.last_activity = Clock::now();
  c.down.Append(std::string_view(scratch_.data(), static_cast<size_t>(n)));
}

void EgressProxy::Impl::UpstreamFailed(Conn& c, int err) {
  if (!c.req.connect && !c.response_started) {
    return Respond(c, 502, Action::kFailed, absl::StrCat("the server failed: ", std::strerror(err)));
  }
  Close(c);
}

void EgressProxy::Impl::WriteClient(Conn& c) {
  const std::string_view v = c.down.view();
  const ssize_t n = send(c.client.get(), v.data(), v.size(), MSG_NOSIGNAL);
  if (n < 0) {
    if (!Transient(errno)) Close(c);
    return;
  }
  const size_t sent = static_cast<size_t>(n);
  const size_t own = std::min(sent, c.down_own);
  c.down_own -= own;
  if (c.phase == Phase::kRelay) bytes_down_.fetch_add(sent - own, std::memory_order_relaxed);
  c.down.Consume(sent);
  c.last_activity = Clock::now();
}

void EgressProxy::Impl::DrainClient(Conn& c) {
  const ssize_t n = recv(c.client.get(), scratch_.data(), scratch_.size(), 0);
  if (n == 0 || (n < 0 && !Transient(errno))) Close(c);
}

void EgressProxy::Impl::Pump(Conn& c) {
  if (c.phase == Phase::kRelay) {
    if (!c.up.empty() && ForwardAllowed(c) && !(c.upstream_events & EPOLLOUT)) WriteUpstream(c);
    if (!c.dead && !c.down.empty() && !(c.client_events & EPOLLOUT)) WriteClient(c);
    if (c.dead || c.phase != Phase::kRelay) return Pump2(c);
    // Client done sending: pass it on (plain HTTP: only a body cut short; a complete one needs no EOF).
    if (c.client_eof && c.up.empty() && !c.upstream_shut && (c.req.connect || !c.body.done())) {
      shutdown(c.upstream.get(), SHUT_WR);
      c.upstream_shut = true;
    }
    if (c.upstream_eof && c.down.empty()) {
      if (!c.req.connect) {
        // The response is complete: close upstream, then the client (after draining it).
        ResetUpstream(c);
        c.phase = Phase::kFinish;
        SetDeadline(c, Clock::now() + kLinger);
      } else {
        if (!c.client_shut) {
          shutdown(c.client.get(), SHUT_WR);
          c.client_shut = true;
        }
        if (c.client_eof && c.up.empty()) return Close(c);
      }
    }
  }
  Pump2(c);
}

void EgressProxy::Impl::Pump2(Conn& c) {
  if (c.dead) return;
  if (c.phase == Phase::kFinish) {
    if (!c.down.empty() && !(c.client_events & EPOLLOUT)) WriteClient(c);
    if (c.dead) return;
    if (c.down.empty() && !c.client_shut) {
      shutdown(c.client.get(), SHUT_WR);
      c.client_shut = true;
    }
  }
  UpdateInterest(c);
}

void EgressProxy::Impl::UpdateInterest(Conn& c) {
  uint32_t ce = 0, ue = 0;
  switch (c.phase) {
    case Phase::kHeader:
      ce = EPOLLIN;
      break;
    case Phase::kResolving:
      break;
    case Phase::kAsking:
      ce = EPOLLRDHUP;  // only to see the client leave; its bytes wait in the socket until approved
      break;
    case Phase::kConnecting:
      ue = EPOLLOUT;
      break;
    case Phase::kRelay:
      if (!c.client_eof && c.up.size() < kRelayBufferBytes && (c.req.connect || !c.body.done())) ce |= EPOLLIN;
      if (!c.down.empty()) ce |= EPOLLOUT;
      if (!c.upstream_eof && c.down.size() < kRelayBufferBytes) ue |= EPOLLIN;
      if (!c.up.empty() && ForwardAllowed(c)) ue |= EPOLLOUT;
      break;
    case Phase::kFinish:
      ce = c.down.empty() ? EPOLLIN : EPOLLOUT;
      break;
  }
  SetInterest(c.client, c.id << 1, &c.client_events, ce);
  SetInterest(c.upstream, c.id << 1 | 1, &c.upstream_events, ue);
}

void EgressProxy::Impl::SetInterest(const UniqueFd& fd, uint64_t tag, uint32_t* current, uint32_t wanted) {
  if (!fd.valid()) {
    *current = 0;
    return;
  }
  if (*current == wanted) return;
  epoll_event ev{};
  ev.events = wanted;
  ev.data.u64 = tag;
  if (wanted == 0) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd.get(), nullptr);
  } else {
    epoll_ctl(epoll_.get(), *current == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd.get(), &ev);
  }
  *current = wanted;
}

}  // namespace sbx::agent
