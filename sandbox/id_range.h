// The host uid/gid range one jail maps its ids onto, so that a jail never gets host root and two concurrent
// jails never share a host uid.
#ifndef SBX_SANDBOX_ID_RANGE_H_
#define SBX_SANDBOX_ID_RANGE_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "sandbox/unique_fd.h"

namespace sbx::sandbox {

inline constexpr uint32_t kIdsPerJail = 65536;
inline constexpr uint32_t kDefaultHostIdBase = 1u << 30;  // 1073741824: far above login and subuid ranges
inline constexpr uint32_t kDefaultIdSlots = 4096;

// A leased id range. As root: inside ids 0..65535 map to host [base, base + 65536), where base is
// host_base + slot * 65536 and the slot is held by binding the abstract unix socket
// "@sandbox-agent/ids/<host_base>/<slot>" for as long as this object lives; the kernel frees it when the
// process dies, so a crashed agent leaves nothing to clean up on disk. Rootless: only the caller's own uid
// and gid can be mapped (onto the workload's inside uid/gid).
class IdRange {
 public:
  // Leases a free slot as root, or describes the caller's single ids when not root.
  static absl::StatusOr<IdRange> Acquire(uint32_t host_base = kDefaultHostIdBase,
                                         uint32_t slots = kDefaultIdSlots);

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
