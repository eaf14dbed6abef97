#include "agent/obs/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

std::string Escape(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

Metrics::Metrics()
    : bucket_bounds_{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}, bucket_counts_(bucket_bounds_.size(), 0) {}

void Metrics::SessionStarted(double s) {
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < bucket_bounds_.size(); ++i) {
    if (s <= bucket_bounds_[i]) ++bucket_counts_[i];
  }
  latency_sum_ += s;
  ++latency_count_;
}

void Metrics::ToolCall(std::string_view tool, std::string_view result) {
  absl::MutexLock lock(&mu_);
  ++tool_calls_[{std::string(tool), std::string(result)}];
}

void Metrics::Outcome(std::string_view status, std::string_view reason) {
  absl::MutexLock lock(&mu_);
  ++outcomes_[{std::string(status), std::string(reason)}];
}

void Metrics::BytesStreamed(uint64_t bytes) { bytes_streamed_ += bytes; }

void Metrics::SetActiveSessions(std::function<size_t()> fn) {
  absl::MutexLock lock(&mu_);
  active_ = std::move(fn);
}

void Metrics::SetWarmSessions(std::function<size_t(std::string_view kind)> fn) {
  absl::MutexLock lock(&mu_);
  warm_ = std::move(fn);
}

void Metrics::FleetEvent(std::string_view event) {
  absl::MutexLock lock(&mu_);
  ++fleet_events_[std::string(event)];
}

void Metrics::SetFleetGauges(std::function<size_t()> leases_held, std::function<size_t()> outbox_pending) {
  absl::MutexLock lock(&mu_);
  leases_held_ = std::move(leases_held);
  outbox_pending_ = std::move(outbox_pending);
}

std::string Metrics::Render() const {
  absl::MutexLock lock(&mu_);
  std::string out;
  absl::StrAppend(&out, "# HELP sandbox_agent_sessions_active Sessions whose jail is running.\n",
                  "# TYPE sandbox_agent_sessions_active gauge\n", "sandbox_agent_sessions_active ",
                  active_ ? active_() : 0, "\n");
  // sandbox_agent_warm_browsers is the browser pool's gauge from before the other kinds had pools.
  absl::StrAppend(&out, "# HELP sandbox_agent_warm_browsers Browser sessions started and waiting in the warm pool.\n",
                  "# TYPE sandbox_agent_warm_browsers gauge\n", "sandbox_agent_warm_browsers ",
                  warm_ ? warm_("browser") : 0, "\n");
  absl::StrAppend(&out, "# HELP sandbox_agent_warm_sessions Sessions started and waiting in the warm pools, per kind.\n",
                  "# TYPE sandbox_agent_warm_sessions gauge\n");
  for (const char* kind : {"file", "desktop", "browser"}) {
    absl::StrAppend(&out, "sandbox_agent_warm_sessions{kind=\"", kind, "\"} ", warm_ ? warm_(kind) : 0, "\n");
  }
  absl::StrAppend(&out, "# HELP sandbox_agent_session_start_seconds Create to jail running.\n",
                  "# TYPE sandbox_agent_session_start_seconds histogram\n");
  for (size_t i = 0; i < bucket_bounds_.size(); ++i) {
    absl::StrAppend(&out, "sandbox_agent_session_start_seconds_bucket{le=\"", bucket_bounds_[i], "\"} ",
                    bucket_counts_[i], "\n");
  }
  absl::StrAppend(&out, "sandbox_agent_session_start_seconds_bucket{le=\"+Inf\"} ", latency_count_, "\n",
                  "sandbox_agent_session_start_seconds_sum ", latency_sum_, "\n",
                  "sandbox_agent_session_start_seconds_count ", latency_count_, "\n");
  absl::StrAppend(&out, "# HELP sandbox_agent_tool_calls_total Tool calls by tool and result.\n",
                  "# TYPE sandbox_agent_tool_calls_total counter\n");
  for (const auto& [key, n] : tool_calls_) {
    absl::StrAppend(&out, "sandbox_agent_tool_calls_total{tool=\"", Escape(key.first), "\",result=\"",
                    Escape(key.second), "\"} ", n, "\n");
  }
  absl::StrAppend(&out, "# HELP sandbox_agent_outcomes_total Session outcomes by status and reason.\n",
                  "# TYPE sandbox_agent_outcomes_total counter\n");
  for (const auto& [key, n] : outcomes_) {
    absl::StrAppend(&out, "sandbox_agent_outcomes_total{status=\"", Escape(key.first), "\",reason=\"",
                    Escape(key.second), "\"} ", n, "\n");
  }
  absl::StrAppend(&out, "# HELP sandbox_agent_bytes_streamed_total Output and file bytes sent to clients.\n",
                  "# TYPE sandbox_agent_bytes_streamed_total counter\n", "sandbox_agent_bytes_streamed_total ",
                  bytes_streamed_.load(), "\n");
  if (leases_held_) {
    absl::StrAppend(&out, "# HELP sandbox_agent_fleet_leases_held Leases held until their outcome is acknowledged.\n",
                    "# TYPE sandbox_agent_fleet_leases_held gauge\n", "sandbox_agent_fleet_leases_held ",
                    leases_held_(), "\n");
    absl::StrAppend(&out, "# HELP sandbox_agent_fleet_outbox_pending Outcomes in the outbox not yet acknowledged.\n",
                    "# TYPE sandbox_agent_fleet_outbox_pending gauge\n", "sandbox_agent_fleet_outbox_pending ",
                    outbox_pending_ ? outbox_pending_() : 0, "\n");
    absl::StrAppend(&out, "# HELP sandbox_agent_fleet_events_total Fleet-mode events by kind.\n",
                    "# TYPE sandbox_agent_fleet_events_total counter\n");
    for (const auto& [event, n] : fleet_events_) {
      absl::StrAppend(&out, "sandbox_agent_fleet_events_total{event=\"", Escape(event), "\"} ", n, "\n");
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(std::string_view address,
                                                                    const Metrics* metrics) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon == std::string_view::npos || !absl::SimpleAtoi(ToAbsl(address.substr(colon + 1)), &port) ||
      port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics_address: '", ToAbsl(address), "' is not host:port"));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const std::string host(address.substr(0, colon));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("metrics_address: '", host, "' is not an IPv4 address"));
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->metrics_ = metrics;
  server->listen_fd_.Reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!server->listen_fd_) return ErrnoToStatus(errno, "metrics: socket");
  int one = 1;
  setsockopt(server->listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(server->listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) {
    return ErrnoToStatus(errno, absl::StrCat("metrics: bind ", ToAbsl(address)));
  }
  if (listen(server->listen_fd_.get(), 16) < 0) return ErrnoToStatus(errno, "metrics: listen");
  socklen_t len = sizeof(addr);
  getsockname(server->listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  server->port_ = ntohs(addr.sin_port);
  server->thread_ = std::jthread([raw = server.get()](std::stop_token stop) { raw->Serve(stop); });
  return server;
}

MetricsServer::~MetricsServer() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::Serve(std::stop_token stop) {
  while (!stop.stop_requested()) {
    pollfd pfd{listen_fd_.get(), POLLIN, 0};
    if (poll(&pfd, 1, 200) <= 0) continue;
    UniqueFd conn(accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) continue;
    timeval tv{1, 0};
    setsockopt(conn.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(conn.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char buf[2048];
    ssize_t n = read(conn.get(), buf, sizeof(buf) - 1);
    if (n <= 0) continue;
    buf[n] = '\0';
    std::string response;
    if (strncmp(buf, "GET /metrics ", 13) == 0 || strncmp(buf, "GET /metrics?", 13) == 0) {
      const std::string body = metrics_->Render();
      response = absl::StrCat("HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: ",
                              body.size(), "\r\n\r\n", body);
    } else {
      response = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    }
    size_t done = 0;
    while (done < response.size()) {
      ssize_t w = write(conn.get(), response.data() + done, response.size() - done);
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
  }
}

}  // namespace sbx::agent
