// The host uid/gid range one jail maps its ids onto, so that a jail never gets host root and two concurrent
// jails never share a host uid.
#ifndef SBX_SANDBOX_ID_RANGE_H_
#define SBX_SANDBOX_ID_RANGE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "base/unique_fd.h"

namespace sbx::sandbox {

inline constexpr uint32_t kIdsPerJail = 65536;
inline constexpr uint32_t kDefaultHostIdBase = 1u << 30;  // 1073741824: far above login and subuid ranges
inline constexpr uint32_t kDefaultIdSlots = 4096;
// Where the slot lock files live. Every agent on a host must use the same directory: the DaemonSet mounts the
// host's /run/sandbox-agent/ids here (deploy/k8s/daemonset.yaml), the systemd unit keeps it across restarts.
inline constexpr char kDefaultIdLockDir[] = "/run/sandbox-agent/ids";

// A leased id range. As root: inside ids 0..65535 map to host [base, base + 65536), where base is
// host_base + slot * 65536 and the slot is held by flock(LOCK_EX) on "<lock_dir>/<host_base>/<slot>.lock"
// for as long as this object lives. A lock file is per host (mount namespace aside, it is the same inode for
// every agent that shares the directory), where the abstract unix sockets used before were per network
// namespace, so two agents in two pods could lease the same range. The kernel drops the lock when the fd
// closes (also when the process dies): a crashed agent leaves the file but no lock, and the file is reused.
// Files are never removed, so every lessee locks the same inode. The fd is O_CLOEXEC and no jail inherits it
// (the jail child also closes every fd it does not need). Rootless: only the caller's own uid and gid can be
// mapped (onto the workload's inside uid/gid).
class IdRange {
 public:
  // Leases a free slot as root, or describes the caller's single ids when not root. `lock_dir` (and
  // <lock_dir>/<host_base>) is created 0755 when missing, and must be a directory owned by root that no
  // one else can write (anyone who could create the lock files could hold every slot).
  static absl::StatusOr<IdRange> Acquire(uint32_t host_base = kDefaultHostIdBase,
                                         uint32_t slots = kDefaultIdSlots,
                                         std::string_view lock_dir = kDefaultIdLockDir);

  bool rootless() const { return rootless_; }
  uint32_t host_uid_base() const { return host_uid_; }
  uint32_t host_gid_base() const { return host_gid_; }
  int slot() const { return slot_; }

  // The /proc/<pid>/uid_map and gid_map contents for a workload running as inside uid/gid.
  std::string UidMap(uint32_t inside_uid) const;
  std::string GidMap(uint32_t inside_gid) const;

 private:
  IdRange() = default;
  bool rootless_ = false;
  uint32_t host_uid_ = 0;
  uint32_t host_gid_ = 0;
  int slot_ = -1;
  UniqueFd lock_;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_ID_RANGE_H_
