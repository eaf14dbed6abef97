// Test helper: what jails leave on the host, for the tests that check that nothing is left (jail-uid
// processes, cgroup directories).
#ifndef SBX_TESTS_COMMON_HOST_STATE_H_
#define SBX_TESTS_COMMON_HOST_STATE_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace sbx::testing {

// Pids of processes whose real uid is a jail's (every jail uid is >= 2^30).
std::vector<pid_t> JailUidProcesses();

// The directories under /sys/fs/cgroup, in every hierarchy and down to 9 levels, whose name `match` accepts;
// symlinks are not followed.
std::vector<std::string> CgroupDirs(const std::function<bool(std::string_view name)>& match);

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_HOST_STATE_H_
