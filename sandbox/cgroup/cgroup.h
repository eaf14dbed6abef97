// Session cgroups: one per jail, with memory, pids and cpu limits, usage read back from the kernel, and a
// kill-everything teardown. cgroup v2 when the host has it (controllers on the unified hierarchy), v1
// otherwise (per-controller hierarchies: memory, pids, cpu, cpuacct, freezer). One interface (Cgroup) over
// both, as nsjail splits cgroup.cc and cgroup2.cc: cgroup.cc dispatches, cgroup_v1.cc and cgroup_v2.cc hold
// what differs, cgroup_layout.cc finds where they go, cgroupfs.{h,cc} is the file access they share.
#ifndef SBX_SANDBOX_CGROUP_CGROUP_H_
#define SBX_SANDBOX_CGROUP_CGROUP_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sbx::sandbox {

namespace cgroup_internal {
class DirMaker;
}  // namespace cgroup_internal

enum class CgroupVersion { kV1, kV2 };

// Where session cgroups go. Discovered from /proc/self/mountinfo + /proc/self/cgroup, or built by hand in
// tests (pointing at a temp directory that imitates cgroupfs).
struct CgroupLayout {
  CgroupVersion version = CgroupVersion::kV2;
  // v2: the directory under which session cgroups are created, e.g.
  // /sys/fs/cgroup/system.slice/sandbox-agent.service/sessions. Controllers are enabled in its subtree.
  std::string v2_parent;
  // v1: per-controller parent directories, e.g. /sys/fs/cgroup/memory/<own cgroup>/sandbox-agent.
  // Empty when that controller is not mounted (cpu/cpuacct/freezer are optional; memory and pids are not).
  std::string v1_memory;
  std::string v1_pids;
  std::string v1_cpu;
  std::string v1_cpuacct;
  std::string v1_freezer;
};

// Works out the layout from the given /proc/self/mountinfo and /proc/self/cgroup texts. Pure (no I/O), so it
// is unit-tested. `subdir` is the directory name used under our own cgroup ("sandbox-agent").
absl::StatusOr<CgroupLayout> CgroupLayoutFromProc(std::string_view mountinfo, std::string_view self_cgroup,
                                                  std::string_view subdir);

// Reads /proc/self/{mountinfo,cgroup}, computes the layout and prepares the parent directories (mkdir;
// on v2 enables +memory +pids +cpu in the subtrees, moving this process into a leaf "<own>/agent" when the
// "no internal processes" rule requires it). PermissionDenied names the path when we may not write there
// (rootless without delegation).
absl::StatusOr<CgroupLayout> PrepareCgroupLayout(std::string_view subdir = "sandbox-agent");

struct CgroupLimits {
  uint64_t memory_max_bytes = 0;  // 0 = no limit
  uint32_t pids_max = 0;          // 0 = no limit
  // 0 = no limit; 1000 = one CPU (period 100 ms, quota 100 ms). Quota left unused may be banked up to one
  // more period's worth (v1 cpu.cfs_burst_us, v2 cpu.max.burst; kernel >= 5.14), so a short burst (a page
  // load) is not throttled mid-way while the long-run average still holds.
  uint32_t cpu_millicores = 0;
  bool cpu_background = false;    // SetCpuBackground(true) from the start
};

// Usage and limit hits, as the kernel counted them.
struct CgroupUsage {
  // v2 cpu.stat; v1 cpuacct. false without either (v1 without a cpuacct hierarchy): the caller falls back to
  // the jail's rusage, which misses what the kernel killed and released when init died.
  bool cpu_known = false;
  uint64_t cpu_user_us = 0;
  uint64_t cpu_sys_us = 0;
  // v2: memory.peak (kernel >= 5.19), else memory.current when read; v1: memory.max_usage_in_bytes.
  uint64_t memory_peak_bytes = 0;
  uint64_t oom_kills = 0;          // v2: memory.events oom_kill; v1: memory.oom_control oom_kill
  uint64_t pids_max_events = 0;    // pids.events "max"
};

// One session's cgroup (in each v1 hierarchy, or one v2 directory). Move-only; the destructor kills every
// process left in it and removes it.
class Cgroup {
 public:
  // Creates `<parent>/<name>` and writes the limits. Fails if it already exists.
  static absl::StatusOr<Cgroup> Create(const CgroupLayout& layout, std::string_view name,
                                       const CgroupLimits& limits);

  // Takes over `<parent>/<name>` left behind by an agent that died (crash recovery), to Remove() it: the
  // directories of that name that exist in each hierarchy. NotFound when none does.
  static absl::StatusOr<Cgroup> Adopt(const CgroupLayout& layout, std::string_view name);

  Cgroup(Cgroup&& other) noexcept;
  Cgroup& operator=(Cgroup&& other) noexcept;
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;
  ~Cgroup();

  // Moves `pid` into the cgroup (every v1 hierarchy, or the v2 directory).
  absl::Status AddProcess(pid_t pid) const;

  // v1: the `tasks` file of each hierarchy, for the jail child to join by writing "0" to each itself.
  // NOTE: a task that moves *itself* this way skips the global threadgroup lock, whose RCU grace period
  // otherwise costs a start ~10 ms whenever no migration ran in the last few milliseconds (writing any
  // other pid, or to cgroup.procs, takes that lock). Empty on v2, where clone3(CLONE_INTO_CGROUP) places
  // the child.
  std::vector<std::string> V1SelfJoinFiles() const;

  // v2: an O_DIRECTORY fd of the cgroup for clone3(CLONE_INTO_CGROUP); -1 on v1.
  int v2_dir_fd() const { return v2_dir_fd_; }

  absl::StatusOr<CgroupUsage> ReadUsage() const;

  // Background: the cgroup runs only on CPU nothing else wants (cpu.idle 1, SCHED_IDLE for the whole group,
  // kernel >= 5.15; before that the least weight: v2 cpu.weight 1, v1 cpu.shares 2). Off: the defaults
  // again. Does nothing without the cpu controller.
  absl::Status SetCpuBackground(bool background) const;

  // pids.events "max": cheap enough to poll every few tens of milliseconds.
  absl::StatusOr<uint64_t> ReadPidsMaxEvents() const;

  // SIGKILLs every process in the cgroup: v2 cgroup.kill (freeze + kill when the kernel lacks it),
  // v1 freezer FROZEN, SIGKILL each pid in cgroup.procs, THAWED.
  absl::Status KillAll() const;

  // Kills, waits (bounded, ~2 s) until no process is left, and removes the directories. Idempotent.
  absl::Status Remove();

  // The directories this cgroup owns (for tests and error messages).
  const std::string& memory_path() const { return memory_path_; }  // v2: the single directory
  const std::string& pids_path() const { return pids_path_; }

 private:
  Cgroup() = default;
  // What differs between the versions (cgroup_v1.cc, cgroup_v2.cc); the public functions dispatch on version_.
  absl::Status CreateV1(const CgroupLayout& layout, const CgroupLimits& limits, cgroup_internal::DirMaker* dirs);
  absl::Status CreateV2(const CgroupLayout& layout, const CgroupLimits& limits, cgroup_internal::DirMaker* dirs);
  absl::Status ReadUsageV1(CgroupUsage* usage) const;
  absl::Status ReadUsageV2(CgroupUsage* usage) const;
  absl::Status KillAllV1() const;
  absl::Status KillAllV2() const;

  CgroupVersion version_ = CgroupVersion::kV2;
  std::string memory_path_;   // v2: the cgroup directory
  std::string pids_path_;     // v2: same as memory_path_
  std::string cpu_path_;      // v1 only; may be empty
  std::string cpuacct_path_;  // v1 only; may be empty
  std::string freezer_path_;  // v1 only; may be empty
  int v2_dir_fd_ = -1;
  bool removed_ = true;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_CGROUP_CGROUP_H_
