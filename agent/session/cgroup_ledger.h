// CgroupLedger: the session cgroups an agent owns, recorded as empty marker files in a directory of its state
// dir (one per session, named by the session id) under an exclusive lock. An agent that dies leaves its jails'
// cgroups behind: the jails end with it (their control sockets close, so each init exits and takes its pid
// namespace along), but the directories stay. The next agent on the same state dir removes them at start,
// whatever the sessions were: local, leased or pooled.
#ifndef SBX_AGENT_SESSION_CGROUP_LEDGER_H_
#define SBX_AGENT_SESSION_CGROUP_LEDGER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sandbox/cgroup/cgroup.h"
#include "base/unique_fd.h"

namespace sbx::agent {

class CgroupLedger {
 public:
  // Opens (creating it, mode 0700) the ledger in `dir` and takes its lock: FailedPrecondition naming the lock
  // file when another agent holds it (one agent per state dir). Then removes, with every process left in it,
  // the cgroup of each session a previous agent recorded, and forgets it; *recovered counts them.
  // `cgroups` may be null (rootless, no cgroups): the records are only forgotten.
  static absl::StatusOr<std::unique_ptr<CgroupLedger>> Open(const std::string& dir,
                                                           const sandbox::CgroupLayout* cgroups, size_t* recovered);

  // Records a session before its cgroup is created.
  absl::Status Add(const std::string& session_id);
  // Forgets a session once its cgroup is removed (or was never made). Failures are logged.
  void Remove(const std::string& session_id);

  const std::string& dir() const { return dir_; }

 private:
  CgroupLedger(std::string dir, UniqueFd lock) : dir_(std::move(dir)), lock_(std::move(lock)) {}

  const std::string dir_;
  UniqueFd lock_;  // holds a POSIX write lock on the whole file; it ends with the agent process
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_CGROUP_LEDGER_H_
