// A test double of the platform's control plane: serves duvo.sandbox.v1.WorkerGateway over real gRPC (on
// loopback by default) so that the fleet-mode agent can be tested against it in-process, and so that
// control-plane-double can serve it for local trials. It queues work, grants leases, answers heartbeats,
// carries commands and events on Attach streams, records outcomes, injects faults, and lets a test observe
// everything it received. State lives in the double, not in the gRPC server: Stop() and Restart() keep it.
//
// Thread-safe: every public function may be called from any thread while the server runs. Observations are
// snapshots. The double logs nothing.
#ifndef SBX_TESTS_FLEET_DOUBLE_CONTROL_PLANE_DOUBLE_H_
#define SBX_TESTS_FLEET_DOUBLE_CONTROL_PLANE_DOUBLE_H_

#include <grpcpp/server.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "duvo/sandbox/v1/worker.grpc.pb.h"

namespace sbx::testing {

struct DoubleOptions {
  // Where to listen. Port 0 picks a free port; Restart() reuses the port chosen at Start().
  std::string address = "127.0.0.1:0";
  // Non-empty: every RPC must carry "authorization: Bearer <token>", else UNAUTHENTICATED.
  std::string token;
  // Both set: serve TLS with this certificate chain and key (PEM).
  std::string server_cert_pem, server_key_pem;
  // Set (with TLS): mTLS; a client certificate is required and verified against these roots (PEM).
  std::string client_ca_pem;
  // The ttl of grants enqueued with ttl_ms = 0, and of their renewals.
  uint64_t lease_ttl_ms = 30000;
  // The largest message the server accepts.
  size_t max_receive_bytes = 16 << 20;
  // A granted lease neither renewed nor reported for its ttl plus this long expires (worker.proto, "a lease's
  // life"): the double records its outcome itself, FAILED, reason "lease_expired". 0: leases never expire.
  uint64_t expire_grace_ms = 5000;
  // An expired or refused lease's request is enqueued again as a new lease (a new lease id).
  bool requeue_ended = false;
};

// The double. Owns its gRPC server and every thread it starts (the Attach writers, joined before their stream
// ends). Not copyable.
//
// Semantics, per method:
// - Lease: long poll. Answers as soon as the queue holds work this agent may take, or after
//   min(wait_ms, 30 s) with no leases, or at once when the server stops. Grants FIFO: at most the sum of
//   capacity[].free, and at most max_sessions - (the agent's outstanding leases) when max_sessions > 0. A
//   request whose kind is listed in capacity[] also needs free capacity of that kind (a queued request that
//   does not fit is skipped and stays queued, later ones may be granted); one whose kind is not listed, or
//   that does not parse (EnqueueRaw), only needs total capacity, so that the agent can reject it.
// - Heartbeat: first, each refused_lease_ids entry granted to this agent and not ended ends, refused (it is no
//   longer outstanding; requeue_ended enqueues its request again as a new lease); others are ignored. Then per
//   lease id: Revoke()d -> revoked (its reason); StopRenewing()d -> omitted; never granted -> revoked, reason
//   "unknown lease"; otherwise renewed with the lease's ttl (from now). held_lease_ids: every lease granted to
//   this agent and not ended, in lease id order of creation.
// - Expiry: a granted lease not ended whose ttl plus expire_grace_ms passed since its grant or last renewal
//   ends, expired: its outcome is recorded as FAILED, reason "lease_expired" (agent_id ""; outcome_reports
//   stays 0, and the agent's own later report counts as a repeat). The clock stops while the server is
//   stopped: Restart() gives every such lease its ttl again.
// - Attach: the first message must be a hello (else INVALID_ARGUMENT; a lease never granted: NOT_FOUND). The
//   double answers resume{after_seq = highest contiguous seq it holds}, then every command sent for the lease
//   so far, in order, then later ones as SendCommand() adds them. After each event it sends ack_seq (the
//   highest contiguous seq held; batched when events come faster than it writes). Events it already holds are
//   ignored. command_error messages are recorded.
// - ReportOutcome: idempotent by lease_id. The first report is recorded and its events merged by seq; later
//   ones are only counted. Always OK (unless a fault or auth says otherwise); a lease id the double never
//   made is recorded all the same (a LeaseView with grants = 0).
// Every RPC is first checked against the token (when set), then against FailNext() faults.
class ControlPlaneDouble {
 public:
  enum class Method { kLease, kHeartbeat, kAttach, kReportOutcome };

  // What the double knows about one lease.
  struct LeaseView {
    std::string lease_id;
    std::string agent_id;    // the agent it was last granted to ("" before the first grant)
    std::string session_id;  // from the latest Attach hello, else from the first outcome report
    std::string request;     // the LeaseGrant.request bytes
    uint64_t ttl_ms = 0;
    int grants = 0;           // times granted (duplicates from GrantAgain included)
    int outcome_reports = 0;  // ReportOutcome calls for it (all, repeats included)
    std::optional<duvo::sandbox::v1::ReportOutcomeRequest> outcome;  // the first report
    std::optional<duvo::sandbox::v1::ReportOutcomeRequest> last_report;  // the latest report
    // Deduplicated by seq, in seq order, merged from Attach streams and the first ReportOutcome.
    std::vector<duvo::sandbox::v1::Event> events;
    uint64_t contiguous_seq = 0;  // every seq up to here is held (what resume/ack say)
    // Gaps seen: an Attach stream delivered, after its resume point R, a seq other than the previous seq it
    // delivered + 1 (starting at R; resent seqs <= R do not count); plus one when the first outcome's
    // last_seq is above contiguous_seq after its events were merged.
    int gaps = 0;
    int attaches = 0;  // Attach streams that got past the hello
    std::vector<duvo::sandbox::v1::CommandError> command_errors;
    int commands_sent = 0;  // SessionCommands written on Attach streams (resends included)
    // The clock's epoch until it happened.
    std::chrono::steady_clock::time_point enqueued, first_granted, outcome_at;
    bool refused = false;  // ended by the agent's refusal (HeartbeatRequest.refused_lease_ids)
    bool expired = false;  // ended by expiry (its outcome is the double's)
  };

  // What the double knows about one agent (by agent_id, from its Lease calls and grants).
  struct AgentView {
    uint32_t max_sessions = 0;         // from its latest Lease call
    uint32_t max_free_advertised = 0;  // the peak over its Lease calls of sum(capacity[].free)
    uint32_t warm_advertised = 0;      // sum(capacity[].warm) of its latest Lease call
    // capacity[].warm by kind (a duvo.sandbox.v1.SessionKind) of its latest Lease call.
    std::map<int, uint32_t> warm_by_kind;
    int max_outstanding = 0;           // the peak of `outstanding`
    // Leases granted to it and not yet reported (a duplicate grant of an outstanding lease does not add).
    int outstanding = 0;
    std::map<std::string, std::string> labels;  // from its latest Lease call
    int lease_calls = 0;
    // Lease calls of its being served right now (a long poll waiting for work counts until it returns).
    int lease_calls_open = 0;
    int heartbeats = 0;
    int refused_ids = 0;  // refused_lease_ids entries received (repeats included)
  };

  using EventHook = std::function<void(const std::string& lease_id, const duvo::sandbox::v1::Event& event)>;

  // Starts serving. Fails when the address cannot be bound or the TLS material is refused.
  static absl::StatusOr<std::unique_ptr<ControlPlaneDouble>> Start(DoubleOptions options);
  ~ControlPlaneDouble();  // stops serving
  ControlPlaneDouble(const ControlPlaneDouble&) = delete;
  ControlPlaneDouble& operator=(const ControlPlaneDouble&) = delete;

  int port() const { return port_; }
  std::string target() const;  // "<host>:<port>", e.g. "127.0.0.1:41234"

  // Shuts the server down now: every call and stream in flight ends (long polls are woken), the port is
  // closed. State is kept. Idempotent.
  void Stop();
  // Serves again on the same port with the same state. OK when already serving.
  absl::Status Restart();
  // Cancels every open Attach stream (the agent sees CANCELLED); the server keeps serving.
  void DropStreams();
  // Replaces the token every RPC must carry ("" disables the check).
  void SetToken(std::string token);

  // --- Work. Each returns the new lease id, "l-<n>" (n from 1). ttl_ms 0 = options.lease_ttl_ms.
  std::string Enqueue(const duvo::sandbox::v1::SandboxRequest& request, uint64_t ttl_ms = 0);
  // Any bytes as LeaseGrant.request (bad input for the agent).
  std::string EnqueueRaw(std::string request_bytes, uint64_t ttl_ms = 0);
  // Queues the same lease id and request again (a duplicate grant). No-op for an unknown id.
  void GrantAgain(const std::string& lease_id);
  // Like GrantAgain, but only the agent `agent_id` may take this grant: a control plane that sends a lease
  // again to the agent it gave it to (e.g. after that agent restarted). No-op for an unknown id.
  void GrantAgainTo(const std::string& lease_id, const std::string& agent_id);
  // A lease storm: makes `n` new leases of `request` that the next Lease call grants all at once, whatever
  // capacity it advertises. Returns their ids.
  std::vector<std::string> GrantStorm(int n, const duvo::sandbox::v1::SandboxRequest& request);

  // --- Faults.
  // Answers the next `count` calls of `m` (after auth) with `code`; when retry_after > 0 the status carries
  // google.rpc.RetryInfo{retry_delay} in grpc-status-details-bin and a "retry-after" trailer in seconds,
  // rounded up. Replaces any faults still pending for `m`.
  void FailNext(Method m, grpc::StatusCode code, int count,
                std::chrono::milliseconds retry_after = std::chrono::milliseconds(0));
  // The next `count` Lease calls that grant something record their grants (the leases are granted to the
  // agent) and then answer UNAVAILABLE instead: the response is lost on the wire.
  void LoseNextLeaseResponses(int count);
  // The next heartbeat that lists the lease answers it in `revoked` with this reason (and so do later ones).
  void Revoke(const std::string& lease_id, std::string reason);
  // Heartbeats no longer renew the lease (it is neither renewed nor revoked).
  void StopRenewing(const std::string& lease_id);
  // Delivers a command on the lease's Attach stream(s); queued until one is open. Every command is sent again
  // on each new Attach of that lease (the agent dedupes by command_id). No-op for an unknown id.
  void SendCommand(const std::string& lease_id, duvo::sandbox::v1::SessionCommand command);

  // Hostile streams (issue 17), for Attach streams opened after the call (open ones keep their behaviour).
  // kNoResume: the hello is read, then nothing: no resume point, no reads. kStopReading: the resume point is
  // sent, then the double neither reads the stream (the agent's writes back up behind flow control) nor
  // writes to it. Either lasts until the agent cancels the stream or the server stops. kNone: as documented
  // above.
  enum class AttachFault { kNone, kNoResume, kStopReading };
  void SetAttachFault(AttachFault fault);
  // Like SendCommand, but the SessionCommand is given as its serialized bytes and sent as they are, e.g. with
  // a string field that is not UTF-8 (which the agent's gRPC cannot parse). No-op for an unknown id.
  void SendRawCommand(const std::string& lease_id, const std::string& command_bytes);

  // --- Observations (snapshots).
  std::optional<LeaseView> Lease(const std::string& lease_id) const;
  std::vector<LeaseView> Leases() const;  // in lease id order of creation
  // True once `n` distinct leases have an outcome; false at the timeout.
  bool WaitForOutcomes(size_t n, std::chrono::milliseconds timeout) const;
  // True once pred() holds; false at the timeout. pred is called without the double's lock held (it may call
  // the observations), each time the double's state changes and at least every 20 ms.
  bool WaitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) const;
  std::map<std::string, AgentView> Agents() const;
  std::map<Method, int> Calls() const;  // calls per method that passed auth (faulted ones included)
  int unauthenticated() const;          // calls refused for a missing or wrong token
  int queued() const;                   // grants waiting in the queue
  // Called (on gRPC threads, possibly concurrently for different leases, without the double's lock) for each
  // event the double did not hold before, from Attach streams and outcome reports, once per seq. For
  // benchmarks. Replaces the previous hook; {} clears it. The hook must not call Stop() or Restart() (they
  // wait for the gRPC thread it runs on).
  void OnEvent(EventHook hook);
  // Called (on gRPC threads, possibly concurrently, without the double's lock) with every Heartbeat and
  // ReportOutcome request that passed auth and faults, repeats included, before the double acts on it: for
  // observers that need every report (conflicting outcomes, when a lease was last named). Replaces the
  // previous hook; {} clears it. Same restrictions as OnEvent's hook.
  using RequestHook = std::function<void(Method m, const google::protobuf::Message& request)>;
  void OnRequest(RequestHook hook);

 private:
  class Service;
  struct LeaseState;
  struct Fault {
    grpc::StatusCode code = grpc::StatusCode::OK;
    int remaining = 0;
    std::chrono::milliseconds retry_after{0};
  };
  struct Grant {
    std::string lease_id;
    std::string only_agent = {};  // GrantAgainTo: only this agent may take it ("" = any)
  };

  explicit ControlPlaneDouble(DoubleOptions options);
  absl::Status StartServer();

  // The RPC bodies (called by Service).
  grpc::Status DoLease(grpc::ServerContext* ctx, const duvo::sandbox::v1::LeaseRequest& request,
                       duvo::sandbox::v1::LeaseResponse* response);
  grpc::Status DoHeartbeat(grpc::ServerContext* ctx, const duvo::sandbox::v1::HeartbeatRequest& request,
                           duvo::sandbox::v1::HeartbeatResponse* response);
  grpc::Status DoAttach(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<duvo::sandbox::v1::ControlMessage, duvo::sandbox::v1::AgentMessage>* stream);
  grpc::Status DoReportOutcome(grpc::ServerContext* ctx,
                               const duvo::sandbox::v1::ReportOutcomeRequest& request);
  // Auth and faults, in that order; OK when the call may proceed. Counts the call.
  grpc::Status Admit(grpc::ServerContext* ctx, Method m);

  // Ends the lease (refused or expired): no longer outstanding, requeued per options.
  void EndLocked(LeaseState& lease, bool expired) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireLoop(std::stop_token stop);
  // Stores an event; true when it is new. Updates contiguous_seq.
  bool StoreEventLocked(LeaseState& lease, const duvo::sandbox::v1::Event& event)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The queued grants this agent may take now (indexes into queue_, FIFO).
  std::vector<size_t> GrantableLocked(const duvo::sandbox::v1::LeaseRequest& request)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  LeaseView ViewLocked(const LeaseState& lease) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++version_;
    cv_.SignalAll();
  }
  void CallHook(const std::string& lease_id, const std::vector<duvo::sandbox::v1::Event>& events);
  void CallRequestHook(Method m, const google::protobuf::Message& request);

  const DoubleOptions options_;
  std::string host_;  // the host part of options_.address
  int port_ = 0;      // chosen at Start(), reused by Restart()

  // Serializes Stop/Restart/destruction (the server's lifecycle), never held while mu_ waits on RPCs.
  absl::Mutex lifecycle_mu_;
  std::unique_ptr<Service> service_ ABSL_GUARDED_BY(lifecycle_mu_);
  std::unique_ptr<grpc::Server> server_ ABSL_GUARDED_BY(lifecycle_mu_);

  mutable absl::Mutex mu_;
  mutable absl::CondVar cv_;                    // signalled by BumpLocked()
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // wakes long polls and Attach writers
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;   // bumped on every state change (for WaitFor)
  std::string token_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Grant> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::unique_ptr<LeaseState>> leases_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> lease_order_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, AgentView> agents_ ABSL_GUARDED_BY(mu_);
  std::map<Method, Fault> faults_ ABSL_GUARDED_BY(mu_);
  std::map<Method, int> calls_ ABSL_GUARDED_BY(mu_);
  int unauthenticated_ ABSL_GUARDED_BY(mu_) = 0;
  size_t outcomes_ ABSL_GUARDED_BY(mu_) = 0;  // leases with an outcome
  std::set<grpc::ServerContext*> attach_contexts_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const EventHook> hook_ ABSL_GUARDED_BY(mu_);
  AttachFault attach_fault_ ABSL_GUARDED_BY(mu_) = AttachFault::kNone;
  std::shared_ptr<const RequestHook> request_hook_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> storm_ ABSL_GUARDED_BY(mu_);  // granted whole by the next Lease call
  int lose_lease_responses_ ABSL_GUARDED_BY(mu_) = 0;
  std::string EnqueueLocked(std::string request_bytes, uint64_t ttl_ms, bool queue) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::jthread expirer_;  // last: stopped first
};

}  // namespace sbx::testing

#endif  // SBX_TESTS_FLEET_DOUBLE_CONTROL_PLANE_DOUBLE_H_
