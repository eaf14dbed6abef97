// Starts the real `sandbox-agent serve` as a subprocess on a private unix socket and gives tests a gRPC stub
// (written against StubInterface) and helpers for tool calls.
#ifndef SBX_TESTS_E2E_DAEMON_FIXTURE_H_
#define SBX_TESTS_E2E_DAEMON_FIXTURE_H_

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::testing {

// One running daemon. Killed (SIGTERM, then SIGKILL) and its socket directory removed on destruction.
class Daemon {
 public:
  struct Options {
    std::vector<std::string> config_lines;  // textproto lines for a config file
    std::vector<std::string> extra_args;
  };
  explicit Daemon(Options options);
  ~Daemon();

  bool ok() const { return pid_ > 0 && ready_; }
  const std::string& socket() const { return socket_; }
  std::string address() const { return "unix:" + socket_; }
  pid_t pid() const { return pid_; }
  const std::string& dir() const { return dir_; }
  // The daemon's stderr so far (its JSON log lines).
  std::string Log() const;
  // Sends SIGTERM and waits; returns the exit status.
  int Stop();
  bool Alive() const;
  // The daemon's /metrics text (Prometheus), fetched from the address its "serving" log line names; empty
  // when it cannot be had.
  std::string Metrics() const;
  // The value of an unlabelled gauge or counter in Metrics(), or -1 when absent.
  double Metric(const std::string& name) const;
  // Waits up to `timeout` for Metric(name) == value.
  bool WaitForMetric(const std::string& name, double value, std::chrono::milliseconds timeout) const;

  std::unique_ptr<duvo::sandbox::v1::Sandboxes::StubInterface> NewStub() const;

 private:
  std::string dir_;
  std::string socket_;
  mutable pid_t pid_ = -1;  // -1 once reaped
  bool ready_ = false;
};

// What one tool call returned: its events in order, the output by stream, and how it finished.
struct CallResult {
  grpc::Status status;
  std::vector<duvo::sandbox::v1::Event> events;
  std::string out;
  std::string err;
  duvo::sandbox::v1::ToolCallFinished finished;
  bool has_finished = false;
  std::chrono::steady_clock::time_point finished_at;
  std::string request_id;
};

// Creates a session of `kind` with the policy's defaults.
grpc::Status CreateSession(duvo::sandbox::v1::Sandboxes::StubInterface* stub, duvo::sandbox::v1::SessionKind kind,
                           duvo::sandbox::v1::Session* session);

CallResult RunCall(duvo::sandbox::v1::Sandboxes::StubInterface* stub, const std::string& session_id,
                   const duvo::sandbox::v1::ToolCall& call, const std::string& idempotency_key = "");
CallResult RunExec(duvo::sandbox::v1::Sandboxes::StubInterface* stub, const std::string& session_id,
                   std::vector<std::string> argv, const std::string& stdin_data = "");

// The policy file at `path` with its "network {\n  mode: NONE\n}" block made EGRESS with these allow and ask
// rules; "" when it has no such block.
std::string PolicyWithEgress(const std::string& path, const std::vector<std::string>& allow,
                             const std::vector<std::string>& ask = {});

// The audit events in session `id`'s event log so far.
std::vector<duvo::sandbox::v1::Audit> SessionAudits(duvo::sandbox::v1::Sandboxes::StubInterface* stub,
                                                    const std::string& id);

// Runs sandboxctl against `daemon` with `args`; returns its stdout and sets *rc to its exit status (-1 when a
// signal ended it). Its stderr is the test's.
std::string RunCtl(const Daemon& daemon, const std::vector<std::string>& args, int* rc);

// The cgroup directories, in every hierarchy under /sys/fs/cgroup, of session `id` ("session-<id>"), or of
// every session when `id` is empty.
std::vector<std::string> SessionCgroups(const std::string& id);

std::string AgentBin();
std::string CtlBin();

}  // namespace sbx::testing

#endif  // SBX_TESTS_E2E_DAEMON_FIXTURE_H_
