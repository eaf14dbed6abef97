// FleetAgent: fleet mode. Leases sandbox requests from the control plane's WorkerGateway within the agent's
// free capacity, runs each as a session of the SessionManager, streams its events over one Attach stream per
// session (resumed by seq after a reconnect) and carries out the commands that come back, renews leases by
// heartbeat (a revoked or lapsed lease cancels its session), and delivers every outcome at least once through
// the durable outbox (agent/outbox.h).
//
// Exactly-once reporting across crashes: a lease is journaled ("lease" record) before its session starts; the
// outcome is journaled ("outcome" record) and the lease record acknowledged in that order once it ends; the
// outcome record is acknowledged when the control plane took the report. At start-up, a lease record still
// pending is a session that died with the previous agent: it is reported failed, reason agent_restart, and
// its leftover cgroup is removed. A lease id seen before (running, journaled, or done in this process) is not
// run again; a finished lease (its outcome acknowledged) is recorded in the outbox ("finished" record, kept 24 h
// and at most the newest 20,000), so that a re-grant, also after a restart, is answered with its outcome.
//
// A damaged outbox (agent/outbox.h) is salvaged unless fleet.outbox_damage is REFUSE: readable records are
// recovered, and the leases the damage hid are reported failed, reason outbox_damaged, once the control plane
// names them. Reconcile: every heartbeat answer lists the leases the control plane believes this agent holds;
// one the agent neither runs nor has an outcome for is reported failed (agent_restart, or outbox_damaged), once
// the Lease call that may still carry its grant has returned.
//
// Lease storms: a LeaseResponse with more grants than the free capacity asked for plus kLeaseSurplus is
// refused whole: nothing of it is journaled or run, and its lease ids go back in the next heartbeats'
// refused_lease_ids (worker.proto).
//
// Capacity: a lease holds one slot of the SessionManager's capacity from the moment it is accepted until the
// control plane acknowledged its outcome, so the control plane never sees more outstanding leases than the
// agent's capacity.
//
// Threads: the lease loop, the heartbeat loop, the outcome reporter, and per lease a pump (session start,
// outcome), a streamer (the Attach stream, reconnected with backoff), the stream's reader and watchdog, and a
// driver while the request's start calls run. The pump journals the outcome when the session ends, whatever
// the stream does; every stream operation has a deadline (fleet.stream_op_timeout_ms); heartbeats and
// reports use a channel of their own and never wait for a stream.
#ifndef SBX_AGENT_FLEET_FLEET_AGENT_H_
#define SBX_AGENT_FLEET_FLEET_AGENT_H_

#include <atomic>
#include <chrono>
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
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "agent/fleet/agent_config.h"
#include "agent/obs/metrics.h"
#include "agent/fleet/outbox.h"
#include "agent/session/approvals.h"
#include "agent/session/session_manager.h"
#include "agent/fleet/worker_client.h"
#include "duvo/sandbox/v1/worker.grpc.pb.h"

namespace sbx::agent {

class FleetAgent {
 public:
  struct Options {
    FleetSettings fleet;
    std::string outbox_dir;                          // e.g. <state_dir>/outbox
    SessionManager* sessions = nullptr;              // not owned
    Metrics* metrics = nullptr;                      // may be null
  };

  // Opens the outbox (taking its lock), reports the sessions a previous agent lost, and starts leasing.
  // Errors: the outbox (locked by another agent, corrupt), the channel (unreadable TLS files).
  static absl::StatusOr<std::unique_ptr<FleetAgent>> Start(Options options);
  ~FleetAgent();  // Drain(0) if not drained

  // SIGTERM: stops leasing, gives running sessions `grace` to finish, cancels the rest, and waits (at most
  // `flush`, for the canceled sessions' outcomes to be journaled and then for every outcome to be reported;
  // streams are canceled). Outcomes not delivered by then stay in the outbox for the next start. Returns how
  // many outcomes are still undelivered.
  size_t Drain(std::chrono::milliseconds grace, std::chrono::milliseconds flush = std::chrono::seconds(10));

  // SIGHUP: labels, lease wait, heartbeat interval, backoff, max request size and the token file take effect
  // for the next calls. The control plane address and TLS need a restart (logged).
  void Reload(const FleetSettings& fleet);

  // For metrics: leases held (until their outcome is acknowledged), outcomes in the outbox.
  size_t leases_held() const;
  size_t undelivered_outcomes() const;

 private:
  struct Lease;          // one lease's state (fleet_internal.h)
  struct Attach;         // one Attach call (fleet_stream.cc)
  struct RecoveryScan;   // the outbox as it was at start (fleet_agent.cc)
  enum class AttachEnd { kComplete, kStalled, kBroken };
  explicit FleetAgent(Options options);

  // Start's steps (fleet_agent.cc): the outbox (returns the lease a torn tail cut short), the channels, and
  // recovery of what a previous agent left in the outbox.
  absl::StatusOr<std::optional<std::string>> OpenOutbox();
  absl::Status Connect();
  absl::Status Recover(const std::optional<std::string>& torn_lease);
  absl::Status RecoverFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status RecoverUnreadableOutcomes() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ReportLostLeases(const RecoveryScan& scan, const std::optional<std::string>& torn_lease, size_t* lost)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  size_t HoldUndelivered() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Leasing (fleet_lease.cc).
  void LeaseLoop(std::stop_token stop);
  void Accept(const duvo::sandbox::v1::LeaseGrant& grant, bool over_capacity);
  bool FirstGrant(const duvo::sandbox::v1::LeaseGrant& grant);
  std::shared_ptr<Lease> ValidateGrant(const duvo::sandbox::v1::LeaseGrant& grant, bool over_capacity);
  void RunLease(Lease* lease);  // the pump
  // The lease's request as a CreateRequest (labelled with the lease id).
  static duvo::sandbox::v1::CreateRequest CreateRequestOf(const Lease& lease);
  absl::StatusOr<std::shared_ptr<Session>> CreateSession(Lease* lease);
  // A session from a warm pool: its own session id is journaled and held for the lease.
  void AdoptPooledSession(Lease* lease, const std::string& session_id);
  void JournalApprovals(Lease* lease);
  void AwaitSessionEnd(Lease* lease);
  void DriveStartCalls(Lease* lease);

  // The Attach stream (fleet_stream.cc): the streamer's loop, and one stream's life: false when it broke
  // (retry), true when every event went out and the session ended.
  void StreamLoop(Lease* lease);
  bool StreamOnce(Lease* lease, std::optional<std::chrono::milliseconds>* retry_after);
  // The hello, and the resume point the control plane answers with (nullopt: the stream failed, finished).
  std::optional<uint64_t> Resume(Attach* call, const FleetSettings& fleet,
                                 std::optional<std::chrono::milliseconds>* retry_after);
  // The stream's reader: acknowledgements and commands.
  void ReadControl(Attach* call);
  // The stream's writer: the session's events after `next`.
  AttachEnd SendEvents(Attach* call, uint64_t next, std::chrono::milliseconds op_timeout);

  void HeartbeatLoop(std::stop_token stop);
  void ReportLoop(std::stop_token stop);
  // Drain's steps.
  void StopLeasing();
  size_t DeliverOutbox(std::chrono::steady_clock::time_point flush_until);
  // Commands over Attach (fleet_agent.cc). The ...Locked ones run with lease->cmd_mu held; their
  // ABSL_EXCLUSIVE_LOCKS_REQUIRED(lease->cmd_mu) is on their definitions, as Lease is incomplete here.
  // Answers a command with its command_error.
  using CommandFail = std::function<void(absl::StatusCode, std::string)>;
  // Uploads: one chunk written, or the upload finished with `status`.
  void WriteUploadChunkLocked(Lease* lease, const std::string& id, const duvo::sandbox::v1::UploadPart& chunk);
  void FinishUploadLocked(Lease* lease, const std::string& id, const absl::Status& status);
  // A gated upload's decision: its held chunks are written, or it ends with the decision's error.
  void OnUploadDecided(Lease* lease, const std::string& id, const duvo::sandbox::v1::HumanDecision& decision);
  // An upload command's chunk: takes cmd_mu for HandleUploadChunkLocked, then asks the gate's question.
  void HandleUploadCommand(Lease* lease, const std::string& id, const duvo::sandbox::v1::UploadPart& chunk,
                           const CommandFail& fail);
  void HandleUploadChunkLocked(Lease* lease, const std::string& id, const duvo::sandbox::v1::UploadPart& chunk,
                               const CommandFail& fail, std::optional<GateAsk>* ask_out);
  void HandleCommand(Lease* lease, const duvo::sandbox::v1::SessionCommand& command,
                     const std::function<void(const duvo::sandbox::v1::AgentMessage&)>& send);
  // Journals the outcome (and acks the lease record), then wakes the reporter.
  void JournalOutcome(Lease* lease, const duvo::sandbox::v1::Outcome& outcome);
  // The free capacity to advertise: the session manager's, less the report-only holds (report_held_).
  uint32_t FreeCapacity() const;
  uint32_t FreeCapacityLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reject(const std::string& lease_id, const std::string& message);
  // Journals `report` as the lease's outcome to deliver, holding a reserved slot until it is acknowledged
  // (rejections, re-reports of finished leases, reconciled leases). False when the journal refused it.
  bool JournalReport(const duvo::sandbox::v1::ReportOutcomeRequest& report);
  // The control plane acknowledged the outcome record `rec` (of `report`): records the lease as finished, then
  // acks the outcome record, and ages out old finished records.
  void RecordFinished(const OutboxRecord& rec, const duvo::sandbox::v1::ReportOutcomeRequest& report);
  // Drops finished leases past their age or count from finished_; returns their record ids to ack.
  std::vector<uint64_t> AgeOutFinishedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Refuses a whole LeaseResponse (a storm): its ids go in the next heartbeats' refused_lease_ids.
  void RefuseWhole(const duvo::sandbox::v1::LeaseResponse& response, uint32_t free);
  // Reports held leases the agent does not know (HeartbeatResponse.held_lease_ids).
  void Reconcile(const duvo::sandbox::v1::HeartbeatResponse& response);
  FleetSettings settings() const;
  void Count(std::string_view event);
  // Sleeps up to `d`, returning early (false) when `stop` is requested.
  bool SleepFor(std::chrono::milliseconds d, const std::stop_token& stop);
  // Waits on cv_ until `done()` (called with mu_ held), `stop` is requested, or `d` passed.
  template <typename Done>
  void WaitFor(const std::stop_token& stop, std::chrono::milliseconds d, Done done) ABSL_LOCKS_EXCLUDED(mu_);
  // Waits on cv_ (mu_ held) until `done()` or `deadline`.
  template <typename Done>
  void WaitLocked(std::chrono::steady_clock::time_point deadline, Done done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::unique_ptr<Outbox> outbox_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<grpc::Channel> stream_channel_;  // Attach streams only (worker_client.h)
  std::unique_ptr<duvo::sandbox::v1::WorkerGateway::Stub> stub_;
  std::unique_ptr<TokenFile> token_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // leases ending, outcomes journaled or delivered
  FleetSettings fleet_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Lease>> leases_ ABSL_GUARDED_BY(mu_);  // running, by lease id
  // Lease ids seen by this process or pending in the outbox (bounded: the oldest are forgotten).
  std::set<std::string> known_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> known_order_ ABSL_GUARDED_BY(mu_);
  // Capacity held by lease id until its outcome is acknowledged: the session id to delete then, or "" for a
  // lease without a session (rejected, or lost with a previous agent), which holds a reservation.
  std::map<std::string, std::string> held_ ABSL_GUARDED_BY(mu_);
  // The held leases that never had a session nor a reservation: a report of a lease rejected, lost with a
  // previous agent, named by the control plane and unknown here, or finished before. They hold no session
  // slot (a grant that arrives while they are pending must not be refused for capacity it was granted
  // within), but they count against the free capacity the agent advertises, so an agent that cannot report
  // takes no more work than it can account for.
  std::set<std::string> report_held_ ABSL_GUARDED_BY(mu_);
  uint64_t journaled_ ABSL_GUARDED_BY(mu_) = 0;  // outcomes journaled, to wake the reporter
  uint64_t delivered_ ABSL_GUARDED_BY(mu_) = 0;  // outcomes taken out of the outbox, to wake a drain
  // Finished leases (their outcome acknowledged), from the outbox's "finished" records, by lease id; and by
  // record id, oldest first, for aging out.
  struct Finished {
    uint64_t record_id = 0;
    int64_t unix_ms = 0;
    duvo::sandbox::v1::ReportOutcomeRequest report;
  };
  std::map<std::string, Finished> finished_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::string> finished_order_ ABSL_GUARDED_BY(mu_);
  // Lease calls, numbered from 1: the one in flight (0: none; set until its grants were all accepted) and how
  // many have returned with their grants handled. A held lease the agent does not know waits for the call in
  // flight when it was named (suspects_) before it is reported.
  uint64_t lease_call_open_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t lease_calls_done_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t lease_calls_started_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, uint64_t> suspects_ ABSL_GUARDED_BY(mu_);
  // Refused grants: to send in heartbeats (until one is answered OK), and remembered (bounded) so that the
  // control plane naming them as held is not reconciled.
  std::deque<std::string> refusing_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> refused_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> refused_order_ ABSL_GUARDED_BY(mu_);
  // Salvaged damage: the lease ids it hid where readable, and whether it may have hidden others (then the
  // leases the first heartbeat answer names that the agent does not know are taken to be hidden by it).
  std::set<std::string> damage_hid_ ABSL_GUARDED_BY(mu_);
  bool damage_unreadable_ ABSL_GUARDED_BY(mu_) = false;
  bool reconciled_once_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> draining_{false};
  std::atomic<bool> canceling_{false};  // the drain's grace is over: sessions still starting are canceled too
  std::atomic<bool> drained_{false};
  absl::Mutex lease_ctx_mu_;
  grpc::ClientContext* lease_ctx_ ABSL_GUARDED_BY(lease_ctx_mu_) = nullptr;  // the long poll in flight

  std::jthread reporter_;
  std::jthread heartbeat_;
  std::jthread leaser_;  // last: stopped first
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_FLEET_FLEET_AGENT_H_
