// SessionManager: the agent's sessions by id. Creates them within the configured capacity (with
// idempotency keys), finds, lists, cancels and deletes them, and ends idle ones. Holds no global state:
// the Daemon owns it.
#ifndef SBX_AGENT_SESSION_SESSION_MANAGER_H_
#define SBX_AGENT_SESSION_SESSION_MANAGER_H_

#include <chrono>
#include <deque>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/session/session.h"
#include "agent/session/timer.h"
#include "duvo/sandbox/v1/sandboxes.pb.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/jail_launcher.h"
#include "sandbox/policy/policy.h"

namespace sbx::agent {

class CgroupLedger;

// Sessions kept started per kind for Create to take (AgentConfig.warm_files, warm_desktops, warm_browsers).
// They count against max_sessions, but a pooled session gives its slot to any session that needs it.
struct WarmPools {
  uint32_t files = 0, desktops = 0, browsers = 0;
  // The pool size for `kind` (0 for a kind without a pool).
  uint32_t For(duvo::sandbox::v1::SessionKind kind) const;
  uint32_t total() const { return files + desktops + browsers; }
};

class SessionManager {
 public:
  struct Options {
    uint32_t max_sessions = 64;
    std::chrono::milliseconds default_ttl{std::chrono::hours(1)};
    std::chrono::milliseconds default_idle_timeout{std::chrono::minutes(15)};
    std::string init_path;
    const sandbox::CgroupLayout* cgroups = nullptr;
    std::vector<std::string> warnings;  // rootless limitations, copied into every outcome
    // The host's ceiling per kind. Kinds without a policy are refused (UNIMPLEMENTED).
    std::map<int, sandbox::Policy> policies;  // key: duvo::sandbox::v1::SessionKind
    // Ended sessions are forgotten this long after their end unless deleted first.
    std::chrono::milliseconds keep_ended{std::chrono::minutes(10)};
    Metrics* metrics = nullptr;  // not owned; may be null
    // Not owned; may be null. Records each session before its cgroup exists (a crash leaves none behind).
    CgroupLedger* ledger = nullptr;
    // Sessions kept started per kind for Create to take; they count against max_sessions.
    WarmPools warm;
    // The egress proxy's off-limits networks (AgentConfig.egress_deny_cidrs), for every session.
    std::vector<IpNetwork> egress_deny;
  };

  explicit SessionManager(Options options);
  ~SessionManager();  // cancels every session

  // Starts a session. Same idempotency key + same request: the first session; another request: ABORTED.
  // Past capacity: RESOURCE_EXHAUSTED. A policy wider than the kind's ceiling: PERMISSION_DENIED.
  absl::StatusOr<duvo::sandbox::v1::Session> Create(const duvo::sandbox::v1::CreateRequest& request);
  // Create with the session id chosen by the caller (fleet mode journals it before the jail exists).
  // With `from_reservation`, the session takes a slot Reserve() held (no capacity check) and keeps counting
  // against capacity after it ends, until Delete; when it fails to start, the reservation is held again.
  // NOTE: a request that keeps the host's policy and the defaults is served from its kind's warm pool when
  // it can: the session then has the pooled session's id, not `session_id` (use the returned one).
  absl::StatusOr<duvo::sandbox::v1::Session> CreateWithId(const duvo::sandbox::v1::CreateRequest& request,
                                                         const std::string& session_id,
                                                         bool from_reservation = false);
  // Fleet mode: sets aside the pooled session CreateWithId would take for `request`, before the lease's record
  // is journaled, so that the record names the session the lease runs in (no second journal write on the
  // lease path). Call it holding a reservation (Reserve, TryReserve): the session's slot becomes the
  // reservation's. Then CreateWithId(request, <the id>, true) takes it, or Unclaim ends it. Its id, or
  // nullopt when the request does not qualify or the pool is empty.
  std::optional<std::string> ClaimWarm(const duvo::sandbox::v1::CreateRequest& request);
  void Unclaim(const std::string& id);
  // Holds one slot of capacity (fleet mode: from a lease's acceptance until its outcome is acknowledged).
  void Reserve();
  // Reserve, if a slot is free now (a pooled session's slot counts as free); false when none is.
  bool TryReserve();
  void Unreserve();
  absl::StatusOr<std::shared_ptr<Session>> Find(const std::string& id) const;
  std::vector<duvo::sandbox::v1::Session> List(const std::map<std::string, std::string>& selector) const;
  absl::StatusOr<duvo::sandbox::v1::Session> Cancel(const std::string& id);
  absl::Status Delete(const std::string& id);
  // Cancels every session (drain) and waits for their outcomes.
  void CancelAll(const std::string& reason);

  size_t active() const;
  uint32_t capacity() const;
  // Sessions that could start now: capacity minus running and starting ones (a pooled session's slot is
  // free: a request of its kind takes the session, any other takes its slot).
  uint32_t free_capacity() const;
  // Pooled sessions of `kind` ready to be taken.
  uint32_t warm_count(duvo::sandbox::v1::SessionKind kind) const;
  // The kinds this agent has a policy for.
  std::vector<duvo::sandbox::v1::SessionKind> kinds() const;
  // SIGHUP: new capacity, defaults and per-kind policies for sessions created from now on; running sessions
  // keep theirs.
  // The warm pools are rebuilt with `warm` sessions under the new policies (the pooled ones end).
  void Reload(uint32_t max_sessions, std::chrono::milliseconds default_ttl,
              std::chrono::milliseconds default_idle_timeout, std::map<int, sandbox::Policy> policies,
              WarmPools warm);

 private:
  void Reap();  // idle timeouts and forgetting ended sessions
  // Keeps warm_ sessions of each kind started; replaces one that ended or aged in the pool.
  void KeepWarm();
  // One round of KeepWarm under the lock: retires ended, aged and surplus pooled sessions into `retired`
  // and picks the kind to start next (nullopt: none).
  std::optional<duvo::sandbox::v1::SessionKind> PrunePoolLocked(std::vector<std::shared_ptr<Session>>* retired)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Stopping() const;
  // A pooled session for `request` (one that keeps the host's policy and the defaults), taken from its
  // kind's warm pool and made a session; nullopt when the request does not qualify or the pool is empty.
  std::optional<duvo::sandbox::v1::Session> TakeWarmLocked(const duvo::sandbox::v1::CreateRequest& request,
                                                           const std::string& request_bytes, bool from_reservation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The pooled session `pooled` made the session of `request`: labels, CPU, idempotency, reservation.
  duvo::sandbox::v1::Session AdoptPooledLocked(std::shared_ptr<Session> pooled,
                                               const duvo::sandbox::v1::CreateRequest& request,
                                               const std::string& request_bytes, bool from_reservation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The index in warm_ of a live pooled session for `request`, or -1 (a request that does not keep the
  // host's policy and the defaults never takes one).
  int FindWarmLocked(const duvo::sandbox::v1::CreateRequest& request) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts a session (no idempotency, no capacity check): the common part of Create and the warm pool.
  // `pooled`: for the warm pool (Session::Options::pooled).
  absl::StatusOr<std::shared_ptr<Session>> StartSession(const duvo::sandbox::v1::CreateRequest& request,
                                                        const std::string& session_id, bool pooled = false);

  const Options options_;
  // Declared before the sessions: destroyed after them, so no jail outlives the thread that cloned it.
  sandbox::JailLauncher launcher_;
  // The agent's one timer, shared by its sessions (Session::Options::timer); destroyed after them too.
  Timer timer_;
  mutable absl::Mutex mu_;
  // Reloadable copies of options_.
  uint32_t max_sessions_ ABSL_GUARDED_BY(mu_);
  std::chrono::milliseconds default_ttl_ ABSL_GUARDED_BY(mu_), default_idle_timeout_ ABSL_GUARDED_BY(mu_);
  std::map<int, sandbox::Policy> policies_ ABSL_GUARDED_BY(mu_);
  WarmPools warm_sizes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  struct Idempotent {
    std::string request_bytes;
    std::string session_id;
  };
  std::map<std::string, Idempotent> idempotency_ ABSL_GUARDED_BY(mu_);
  uint32_t starting_ ABSL_GUARDED_BY(mu_) = 0;  // Creates in flight
  uint32_t reserved_ ABSL_GUARDED_BY(mu_) = 0;  // Reserve() slots
  std::set<std::string> held_ids_ ABSL_GUARDED_BY(mu_);  // count until deleted, even ended
  struct Pooled {
    std::shared_ptr<Session> session;
    std::chrono::steady_clock::time_point at;  // when it joined the pool
  };
  std::deque<Pooled> warm_ ABSL_GUARDED_BY(mu_);  // every kind's, oldest first
  uint32_t warming_ ABSL_GUARDED_BY(mu_) = 0;     // pool sessions being started
  // ClaimWarm's sessions by id, until CreateWithId takes them (their slots are reservations meanwhile).
  std::map<std::string, std::shared_ptr<Session>> claimed_ ABSL_GUARDED_BY(mu_);
  // Set when a pooled session is taken or the pools change: the warmer refills at once, not at its next
  // round.
  bool pool_changed_ ABSL_GUARDED_BY(mu_) = false;
  // A take defers the refill this long: the start of its replacement (clone, mounts, cgroup writes) would
  // compete with the taken session's first call for the CPU and the kernel's cgroup and mount locks.
  static constexpr std::chrono::milliseconds kRefillDelay{50};
  std::chrono::steady_clock::time_point refill_after_ ABSL_GUARDED_BY(mu_);
  uint64_t pool_generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by Reload
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;         // the destructor stops the reaper and the warmer
  size_t UsedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::map<std::string, std::chrono::steady_clock::time_point> ended_at_ ABSL_GUARDED_BY(mu_);
  std::jthread reaper_;
  std::jthread warmer_;
};

// A new random session id: "s-" + 16 hex digits.
std::string NewSessionId();

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_SESSION_MANAGER_H_
