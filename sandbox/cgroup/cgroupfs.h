// The pieces the cgroup v1 and v2 code (cgroup_v1.cc, cgroup_v2.cc) and the layout discovery
// (cgroup_layout.cc) share: text parsing of cgroupfs files, raw cgroupfs file access, and killing and
// waiting for the processes of a cgroup. Internal to sandbox/cgroup.
#ifndef SBX_SANDBOX_CGROUP_CGROUPFS_H_
#define SBX_SANDBOX_CGROUP_CGROUPFS_H_

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sbx::sandbox::cgroup_internal {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

inline constexpr uint64_t kCpuPeriodUs = 100000;
inline constexpr size_t kMaxFileBytes = size_t{4} << 20;  // cgroup.procs of a big cgroup stays far below this
inline constexpr auto kFreezeTimeout = milliseconds(1000);
inline constexpr auto kEmptyTimeout = milliseconds(2000);
inline constexpr auto kRmdirBusyTimeout = milliseconds(1000);


// ---------------------------------------------------------------------------------------------------------
// Text helpers (std::string_view only; Debian's absl::string_view is another type).

std::string_view Trim(std::string_view s);

std::vector<std::string_view> Split(std::string_view s, char sep, bool skip_empty);

std::vector<std::string_view> Words(std::string_view s);

bool Contains(const std::vector<std::string_view>& v, std::string_view x);

std::optional<uint64_t> ParseU64(std::string_view s);

// The value of the line "<key> <value>" in a flat-keyed cgroup file (cpu.stat, memory.events, pids.events,
// memory.oom_control, cpuacct.stat).
std::optional<uint64_t> KeyedValue(std::string_view text, std::string_view key);

// "/a/b/c" -> "/a/b".
std::string Dirname(const std::string& path);

// A single path component that cannot climb out of its parent.
absl::Status ValidateComponent(std::string_view name, std::string_view what);

// ---------------------------------------------------------------------------------------------------------
// cgroupfs file access: raw POSIX, one write(2) per command.

// `status` with a hint about delegation when it is a permission error.
absl::Status WithPermissionHint(absl::Status status);

bool Exists(const std::string& path);

absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `data` with a single write(2): cgroupfs treats each write as one command. `err` (optional) gets the
// errno of a failure, for callers that react to a specific one (EBUSY, ENOENT).
absl::Status WriteFile(const std::string& path, std::string_view data, int* err = nullptr);

absl::Status WriteIfExists(const std::string& path, std::string_view data);

absl::StatusOr<uint64_t> ReadU64(const std::string& path);

absl::StatusOr<uint64_t> ReadKeyed(const std::string& path, std::string_view key);

// mkdir -p.
absl::Status MkdirAll(const std::string& path);

// The pids in `dir`/cgroup.procs; an absent directory has none. Entries of 0 (processes outside our pid
// namespace) are dropped: kill(0) would hit our own process group.
absl::StatusOr<std::vector<pid_t>> ReadPids(const std::string& dir);

// SIGKILLs every process listed in the given directories. Returns how many were listed.
absl::StatusOr<size_t> KillListed(const std::vector<std::string>& dirs);

// Short sleeps that grow from 1 ms to 10 ms.
void Backoff(int* round);

// Keeps killing until no process is listed (a process may fork while we read); bounded.
absl::Status KillUntilEmpty(const std::vector<std::string>& dirs);

// Waits (bounded) until no process is listed in `dirs`.
absl::Status WaitEmpty(const std::vector<std::string>& dirs);

// Polls `path` until it reads `want` (after trimming). False on timeout.
absl::StatusOr<bool> WaitForContent(const std::string& path, std::string_view want);

// Polls v2 cgroup.events until "frozen 1". False on timeout.
absl::StatusOr<bool> WaitV2Frozen(const std::string& dir);

// rmdir, retried while the kernel still reports EBUSY (bounded).
absl::Status RmdirBounded(const std::string& dir);

// The distinct non-empty directories, in order (v1 hierarchies may be co-mounted, e.g. "cpu,cpuacct").
std::vector<std::string> UniqueDirs(std::initializer_list<const std::string*> paths);

// Makes `<parent>/<name>` for Cgroup::Create, once per hierarchy (co-mounted v1 controllers share the
// directory), and remembers what it made, so that a failed Create removes it again.
class DirMaker {
 public:
  explicit DirMaker(std::string_view name) : name_(name) {}
  // Sets *dir to `<parent>/<name>` and makes it; does nothing for an empty `parent` (an absent hierarchy).
  absl::Status Make(const std::string& parent, std::string* dir);
  // Removes what Make made, last first (nothing can have joined the new directories yet: rmdir succeeds).
  void RemoveAll();

 private:
  std::string_view name_;
  std::vector<std::string> created_;
};

// Enables the controllers in `own` and in `parent` (a child of `own`), moving processes out of `own` into
// the leaf "<own>/agent" when the no-internal-processes rule refuses it (cgroup_v2.cc).
absl::Status PrepareV2(const std::string& parent);

}  // namespace sbx::sandbox::cgroup_internal

#endif  // SBX_SANDBOX_CGROUP_CGROUPFS_H_
