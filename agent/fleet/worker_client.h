// The agent's side of the control-plane connection in fleet mode: the channel (plaintext, TLS or mTLS), the
// bearer token (read from a file, re-read when it changes, never logged), and retry pacing (exponential
// backoff with full jitter, overridden by the control plane's RetryInfo or retry-after).
#ifndef SBX_AGENT_FLEET_WORKER_CLIENT_H_
#define SBX_AGENT_FLEET_WORKER_CLIENT_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <random>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/agent_config.h"

namespace sbx::agent {

// The bearer token in a file. Thread-safe. The file is stat'ed on every use and re-read when its inode,
// size or mtime changed, so a rotated token (a Kubernetes Secret update swaps a symlink) is picked up
// without a restart.
class TokenFile {
 public:
  explicit TokenFile(std::string path) : path_(std::move(path)) {}
  // The current token (surrounding whitespace trimmed). Empty path: no token (OK, empty).
  absl::StatusOr<std::string> Get();

 private:
  const std::string path_;
  absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
  ino_t ino_ ABSL_GUARDED_BY(mu_) = 0;
  off_t size_ ABSL_GUARDED_BY(mu_) = -1;
  struct timespec mtime_ ABSL_GUARDED_BY(mu_){};
};

// A channel to fleet.control_plane. TLS when fleet.tls is set (ca_file or the system roots; cert_file and
// key_file for mTLS; server_name overrides the name checked). Errors name the file that could not be read.
// kStreams: a channel of its own (its own connection) for the sessions' Attach streams, so that a control
// plane that stops reading a stream never holds back Lease, Heartbeat or ReportOutcome; without BDP probing,
// so that what gRPC reads ahead of the agent on a stream stays small (upload chunks are taken one at a time).
enum class WorkerChannelUse { kCalls, kStreams };
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeWorkerChannel(const FleetSettings& fleet,
                                                                 WorkerChannelUse use = WorkerChannelUse::kCalls);

// Adds "authorization: Bearer <token>" when there is a token, and a deadline.
absl::Status PrepareContext(TokenFile& token, grpc::ClientContext* context,
                            std::optional<std::chrono::milliseconds> timeout);

// The delay the control plane asked for: google.rpc.RetryInfo in the status details, else a "retry-after"
// trailer in (possibly fractional) seconds. nullopt when it named none.
std::optional<std::chrono::milliseconds> RetryDelay(const grpc::Status& status, const grpc::ClientContext& context);

// Exponential backoff with full jitter: the n-th delay is uniform in [0, min(max, initial * 2^n)].
class Backoff {
 public:
  Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max);
  // The delay before the next attempt; `asked` (from RetryDelay) wins when given, capped at 10 minutes.
  std::chrono::milliseconds Next(std::optional<std::chrono::milliseconds> asked = std::nullopt);
  void Reset() { attempt_ = 0; }
  int attempt() const { return attempt_; }

 private:
  std::chrono::milliseconds initial_, max_;
  int attempt_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_FLEET_WORKER_CLIENT_H_
