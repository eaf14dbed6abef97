// MountPlan: the policy's filesystem turned into the flat list of steps the jail child executes (binds,
// tmpfs, files, symlinks, then /proc, /dev and the init binary), with every path precomputed and owned here.
#ifndef SBX_SANDBOX_MOUNT_PLAN_H_
#define SBX_SANDBOX_MOUNT_PLAN_H_

#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "sandbox/jail_child.h"
#include "sandbox/policy/policy.h"

namespace sbx::sandbox {

// Where sandbox-init appears inside every jail (a read-only bind of the host binary).
inline constexpr char kInitPathInJail[] = "/.sandbox/init";

class MountPlan {
 public:
  // `init_host_path` is bound read-only at kInitPathInJail. Tmpfs mounts are owned by uid/gid (the
  // workload's inside ids).
  static absl::StatusOr<MountPlan> Build(const Policy& policy, std::string_view init_host_path, uint32_t uid,
                                         uint32_t gid);

  MountPlan(MountPlan&&) = default;
  MountPlan& operator=(MountPlan&&) = default;

  const std::vector<internal::MountOp>& ops() const { return ops_; }
  const char* newroot_tmpfs_options() const { return newroot_options_.c_str(); }

  // "bind /usr -> /usr (read-only)": names op `index` in error messages.
  std::string Describe(size_t index) const;

 private:
  MountPlan() = default;
  const char* Keep(std::string s);
  // Makes the read-only bind `op` of `host_src` an overlay (see MountOp::overlay_*), unless the path
  // cannot be written in overlay options.
  void SetReadOnlyOverlay(internal::MountOp& op, const std::string& host_src);
  void Add(internal::MountOp op, std::string description);
  // Build's steps, in order: the policy's mounts (file_bytes: what the kFile mounts need on the root
  // tmpfs), /proc, /dev, sandbox-init.
  absl::Status AddPolicyMount(const MountSpec& spec, const std::string& owner, uint64_t* file_bytes);
  void AddProc();
  void AddDev(const std::string& owner);
  void AddInit(std::string_view init_host_path);

  std::deque<std::string> strings_;  // stable addresses for the const char* in ops_
  std::vector<internal::MountOp> ops_;
  std::vector<std::string> descriptions_;
  std::string newroot_options_;
  std::map<std::string, std::string> overlay_stages_;  // host parent directory -> its stage
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_MOUNT_PLAN_H_
