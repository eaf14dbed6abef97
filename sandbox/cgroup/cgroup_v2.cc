// cgroup v2 (one unified directory per session): preparing the delegated parent, creating a session's
// directory with its limits, reading usage, and killing everything in it (cgroup.kill, or the freezer).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/cgroup/cgroupfs.h"

namespace sbx::sandbox {
namespace cgroup_internal {

namespace {

// FailedPrecondition naming the required controllers (memory, pids) that `controllers_text`, read from
// `controllers_path`, lacks: "cgroup v2: controller(s) ... <where> <path> ("...")<tail>".
absl::Status RequireMemoryAndPids(const std::string& controllers_path, const std::string& controllers_text,
                                  std::string_view where, std::string_view tail) {
  const std::vector<std::string_view> controllers = Words(controllers_text);
  std::vector<std::string> missing;
  for (const char* c : {"memory", "pids"}) {
    if (!Contains(controllers, c)) missing.emplace_back(c);
  }
  if (missing.empty()) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("cgroup v2: controller(s) ", absl::StrJoin(missing, ", "), " ",
                                                    ToAbsl(where), " ", controllers_path, " (\"",
                                                    ToAbsl(Trim(controllers_text)), "\")", ToAbsl(tail)));
}

}  // namespace

absl::Status PrepareV2(const std::string& parent) {
  const std::string own = Dirname(parent);
  const std::string own_controllers_path = own + "/cgroup.controllers";
  ASSIGN_OR_RETURN(std::string own_controllers_text, ReadFile(own_controllers_path));
  RETURN_IF_ERROR(RequireMemoryAndPids(own_controllers_path, own_controllers_text, "not available in",
                                       ": the parent cgroup does not delegate them"));
  const std::vector<std::string_view> own_controllers = Words(own_controllers_text);
  const std::string enable = Contains(own_controllers, "cpu") ? "+memory +pids +cpu" : "+memory +pids";

  RETURN_IF_ERROR(MkdirAll(parent));

  const std::string own_subtree = own + "/cgroup.subtree_control";
  int err = 0;
  absl::Status status = WriteFile(own_subtree, enable, &err);
  if (err == EBUSY) {
    // No internal processes: a cgroup with controllers enabled for its children may not hold processes
    // itself. Move every process of our cgroup (us first) into a leaf and retry.
    const std::string leaf = own + "/agent";
    if (mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
      return WithPermissionHint(ErrnoToStatus(errno, "mkdir " + leaf));
    }
    const std::string leaf_procs = leaf + "/cgroup.procs";
    RETURN_IF_ERROR(WithPermissionHint(WriteFile(leaf_procs, "0")));
    ASSIGN_OR_RETURN(std::vector<pid_t> others, ReadPids(own));
    for (pid_t pid : others) {
      absl::Status moved = WriteFile(leaf_procs, std::to_string(pid), &err);
      if (!moved.ok() && err != ESRCH) {
        return Annotate(moved, "moving the processes of " + own + " into a leaf");
      }
    }
    status = WriteFile(own_subtree, enable);
  }
  RETURN_IF_ERROR(WithPermissionHint(status));

  RETURN_IF_ERROR(WithPermissionHint(WriteFile(parent + "/cgroup.subtree_control", enable)));

  const std::string parent_controllers_path = parent + "/cgroup.controllers";
  ASSIGN_OR_RETURN(std::string parent_controllers_text, ReadFile(parent_controllers_path));
  RETURN_IF_ERROR(RequireMemoryAndPids(parent_controllers_path, parent_controllers_text, "missing from",
                                       " after enabling them"));
  return absl::OkStatus();
}

}  // namespace cgroup_internal

using cgroup_internal::DirMaker;
using cgroup_internal::Exists;
using cgroup_internal::KillListed;
using cgroup_internal::KillUntilEmpty;
using cgroup_internal::ReadKeyed;
using cgroup_internal::ReadU64;
using cgroup_internal::WaitV2Frozen;
using cgroup_internal::WriteFile;
using cgroup_internal::WriteIfExists;
using cgroup_internal::kCpuPeriodUs;
absl::Status Cgroup::CreateV2(const CgroupLayout& layout, const CgroupLimits& limits, DirMaker* dirs) {
  if (layout.v2_parent.empty()) return absl::InvalidArgumentError("cgroup v2 layout without a parent");
  RETURN_IF_ERROR(dirs->Make(layout.v2_parent, &memory_path_));
  pids_path_ = memory_path_;
  const std::string& dir = memory_path_;
  if (limits.memory_max_bytes > 0) {
    RETURN_IF_ERROR(WriteFile(dir + "/memory.max", std::to_string(limits.memory_max_bytes)));
  }
  RETURN_IF_ERROR(WriteIfExists(dir + "/memory.swap.max", "0"));
  if (limits.pids_max > 0) RETURN_IF_ERROR(WriteFile(dir + "/pids.max", std::to_string(limits.pids_max)));
  // NOTE: cpu is optional; without the controller (no cpu.max) the cpu limit is not enforced.
  if (limits.cpu_millicores > 0 && Exists(dir + "/cpu.max")) {
    const uint64_t quota = uint64_t{limits.cpu_millicores} * kCpuPeriodUs / 1000;
    RETURN_IF_ERROR(WriteFile(dir + "/cpu.max", absl::StrCat(quota, " ", kCpuPeriodUs)));
    RETURN_IF_ERROR(WriteIfExists(dir + "/cpu.max.burst", std::to_string(quota)));
  }
  if (limits.cpu_background) RETURN_IF_ERROR(SetCpuBackground(true));
  v2_dir_fd_ = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (v2_dir_fd_ < 0) return ErrnoToStatus(errno, "open " + dir);
  return absl::OkStatus();
}

absl::Status Cgroup::ReadUsageV2(CgroupUsage* usage) const {
  const std::string& dir = memory_path_;
  ASSIGN_OR_RETURN(usage->cpu_user_us, ReadKeyed(dir + "/cpu.stat", "user_usec"));
  ASSIGN_OR_RETURN(usage->cpu_sys_us, ReadKeyed(dir + "/cpu.stat", "system_usec"));
  usage->cpu_known = true;
  const std::string peak = dir + "/memory.peak";  // kernel >= 5.19
  ASSIGN_OR_RETURN(usage->memory_peak_bytes, ReadU64(Exists(peak) ? peak : dir + "/memory.current"));
  ASSIGN_OR_RETURN(usage->oom_kills, ReadKeyed(dir + "/memory.events", "oom_kill"));
  return absl::OkStatus();
}

absl::Status Cgroup::KillAllV2() const {
  const std::string& dir = memory_path_;
  int err = 0;
  absl::Status status = WriteFile(dir + "/cgroup.kill", "1", &err);
  if (status.ok() || err != ENOENT) return status;
  // Kernel < 5.14: freeze so nothing forks while we kill, kill what is listed, thaw so the kills land.
  RETURN_IF_ERROR(WriteFile(dir + "/cgroup.freeze", "1"));
  absl::StatusOr<bool> frozen = WaitV2Frozen(dir);
  absl::Status killed = frozen.ok() ? KillListed({dir}).status() : frozen.status();
  absl::Status thawed = WriteFile(dir + "/cgroup.freeze", "0");
  RETURN_IF_ERROR(killed);
  RETURN_IF_ERROR(thawed);
  if (*frozen) return absl::OkStatus();
  return KillUntilEmpty({dir});
}

}  // namespace sbx::sandbox
