// cgroup v1 (one hierarchy per controller: memory, pids, cpu, cpuacct, freezer): creating a session's
// directories with their limits, reading usage, and killing everything in them (the freezer).
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

using cgroup_internal::DirMaker;
using cgroup_internal::Exists;
using cgroup_internal::KeyedValue;
using cgroup_internal::KillListed;
using cgroup_internal::KillUntilEmpty;
using cgroup_internal::ReadFile;
using cgroup_internal::ReadKeyed;
using cgroup_internal::ReadU64;
using cgroup_internal::UniqueDirs;
using cgroup_internal::WaitForContent;
using cgroup_internal::WriteFile;
using cgroup_internal::WriteIfExists;
using cgroup_internal::kCpuPeriodUs;
absl::Status Cgroup::CreateV1(const CgroupLayout& layout, const CgroupLimits& limits, DirMaker* dirs) {
  if (layout.v1_memory.empty() || layout.v1_pids.empty()) {
    return absl::InvalidArgumentError("cgroup v1 layout without a memory or pids hierarchy");
  }
  RETURN_IF_ERROR(dirs->Make(layout.v1_memory, &memory_path_));
  const std::string& mem = memory_path_;
  if (limits.memory_max_bytes > 0) {
    const std::string bytes = std::to_string(limits.memory_max_bytes);
    RETURN_IF_ERROR(WriteFile(mem + "/memory.limit_in_bytes", bytes));
    // memory+swap at the same value, so the workload cannot escape into swap. memsw must be >= the memory
    // limit at all times, hence this order.
    RETURN_IF_ERROR(WriteIfExists(mem + "/memory.memsw.limit_in_bytes", bytes));
  }
  RETURN_IF_ERROR(WriteIfExists(mem + "/memory.swappiness", "0"));
  // memory.oom_control keeps its default: the kernel OOM-kills inside the cgroup.

  RETURN_IF_ERROR(dirs->Make(layout.v1_pids, &pids_path_));
  if (limits.pids_max > 0) {
    RETURN_IF_ERROR(WriteFile(pids_path_ + "/pids.max", std::to_string(limits.pids_max)));
  }

  // NOTE: cpu is optional; without its hierarchy the cpu limit is not enforced.
  RETURN_IF_ERROR(dirs->Make(layout.v1_cpu, &cpu_path_));
  if (!cpu_path_.empty() && limits.cpu_millicores > 0) {
    RETURN_IF_ERROR(WriteFile(cpu_path_ + "/cpu.cfs_period_us", std::to_string(kCpuPeriodUs)));
    const uint64_t quota = uint64_t{limits.cpu_millicores} * kCpuPeriodUs / 1000;
    RETURN_IF_ERROR(WriteFile(cpu_path_ + "/cpu.cfs_quota_us", std::to_string(quota)));
    RETURN_IF_ERROR(WriteIfExists(cpu_path_ + "/cpu.cfs_burst_us", std::to_string(quota)));
  }
  if (limits.cpu_background) RETURN_IF_ERROR(SetCpuBackground(true));
  // NOTE: cpuacct stays even as a hierarchy of its own (a mkdir, a join and an rmdir per start): the jail's
  // rusage is no substitute. When init dies the kernel kills the rest of the pid namespace and, with
  // SIGCHLD ignored, releases them unaccounted: a workload killed at its time limit would show ~0 CPU.
  RETURN_IF_ERROR(dirs->Make(layout.v1_cpuacct, &cpuacct_path_));
  RETURN_IF_ERROR(dirs->Make(layout.v1_freezer, &freezer_path_));
  return absl::OkStatus();
}

absl::Status Cgroup::ReadUsageV1(CgroupUsage* usage) const {
  if (!cpuacct_path_.empty()) {
    usage->cpu_known = true;
    const std::string user = cpuacct_path_ + "/cpuacct.usage_user";  // nanoseconds, kernel >= 4.16
    if (Exists(user)) {
      ASSIGN_OR_RETURN(uint64_t user_ns, ReadU64(user));
      ASSIGN_OR_RETURN(uint64_t sys_ns, ReadU64(cpuacct_path_ + "/cpuacct.usage_sys"));
      usage->cpu_user_us = user_ns / 1000;
      usage->cpu_sys_us = sys_ns / 1000;
    } else {
      const std::string stat = cpuacct_path_ + "/cpuacct.stat";  // USER_HZ ticks
      const long ticks_per_s = sysconf(_SC_CLK_TCK);
      const uint64_t hz = ticks_per_s > 0 ? static_cast<uint64_t>(ticks_per_s) : 100;
      ASSIGN_OR_RETURN(uint64_t user_ticks, ReadKeyed(stat, "user"));
      ASSIGN_OR_RETURN(uint64_t sys_ticks, ReadKeyed(stat, "system"));
      usage->cpu_user_us = user_ticks * 1000000 / hz;
      usage->cpu_sys_us = sys_ticks * 1000000 / hz;
    }
  }
  ASSIGN_OR_RETURN(usage->memory_peak_bytes, ReadU64(memory_path_ + "/memory.max_usage_in_bytes"));
  ASSIGN_OR_RETURN(std::string oom_control, ReadFile(memory_path_ + "/memory.oom_control"));
  usage->oom_kills = KeyedValue(oom_control, "oom_kill").value_or(0);  // the line exists since kernel 4.13
  return absl::OkStatus();
}

absl::Status Cgroup::KillAllV1() const {
  const std::vector<std::string> dirs =
      UniqueDirs({&memory_path_, &pids_path_, &cpu_path_, &cpuacct_path_, &freezer_path_});
  if (!freezer_path_.empty()) {
    const std::string state = freezer_path_ + "/freezer.state";
    RETURN_IF_ERROR(WriteFile(state, "FROZEN"));
    absl::StatusOr<bool> frozen = WaitForContent(state, "FROZEN");
    absl::Status killed = frozen.ok() ? KillListed(dirs).status() : frozen.status();
    absl::Status thawed = WriteFile(state, "THAWED");
    RETURN_IF_ERROR(killed);
    RETURN_IF_ERROR(thawed);
    if (*frozen) return absl::OkStatus();
    // Freezing did not complete (e.g. a task stuck in the kernel): fall back to killing until empty.
  }
  return KillUntilEmpty(dirs);
}

}  // namespace sbx::sandbox
