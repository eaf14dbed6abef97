// Metrics: the agent's counters in Prometheus text format, served on 127.0.0.1:9464/metrics by
// MetricsServer. Thread-safe.
#ifndef SBX_AGENT_OBS_METRICS_H_
#define SBX_AGENT_OBS_METRICS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

namespace sbx::agent {

class Metrics {
 public:
  Metrics();
  void SessionStarted(double start_latency_seconds);
  void ToolCall(std::string_view tool, std::string_view result);  // result: "ok" or a gRPC code name
  void Outcome(std::string_view status, std::string_view reason);
  void BytesStreamed(uint64_t bytes);
  void SetActiveSessions(std::function<size_t()> fn);
  // Sessions started and waiting in the warm pools, per kind ("file", "desktop", "browser"; AgentConfig
  // warm_files, warm_desktops, warm_browsers).
  void SetWarmSessions(std::function<size_t(std::string_view kind)> fn);
  // Fleet mode: a counted event (leased, rejected, duplicate, revoked, expired, reported, and
  // "<method>_error" for failed control-plane calls), and the gauges of leases held (until their outcome is
  // acknowledged) and outcomes waiting in the outbox.
  void FleetEvent(std::string_view event);
  void SetFleetGauges(std::function<size_t()> leases_held, std::function<size_t()> outbox_pending);

  // The exposition text (version 0.0.4).
  std::string Render() const;

 private:
  mutable absl::Mutex mu_;
  std::function<size_t()> active_ ABSL_GUARDED_BY(mu_);
  std::function<size_t(std::string_view)> warm_ ABSL_GUARDED_BY(mu_);
  std::vector<double> bucket_bounds_;                                  // seconds
  std::vector<uint64_t> bucket_counts_ ABSL_GUARDED_BY(mu_);
  double latency_sum_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t latency_count_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::pair<std::string, std::string>, uint64_t> tool_calls_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, uint64_t> outcomes_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> bytes_streamed_{0};
  std::map<std::string, uint64_t> fleet_events_ ABSL_GUARDED_BY(mu_);
  std::function<size_t()> leases_held_ ABSL_GUARDED_BY(mu_);
  std::function<size_t()> outbox_pending_ ABSL_GUARDED_BY(mu_);
};

// A minimal HTTP/1.0 server for GET /metrics on one address (loopback by default). One thread, owned.
class MetricsServer {
 public:
  // `address` is "host:port" (IPv4); port 0 picks a free one.
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(std::string_view address, const Metrics* metrics);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  void Serve(std::stop_token stop);
  const Metrics* metrics_ = nullptr;
  UniqueFd listen_fd_;
  int port_ = 0;
  std::jthread thread_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_OBS_METRICS_H_
