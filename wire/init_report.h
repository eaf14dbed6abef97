// The one record sandbox-init writes on fd 3 when the workload ends (or could not be executed). Fixed size;
// the agent checks the size and magic, and then weighs it against init's exit status and the cgroup's
// counters (sandbox/outcome.h): init runs as the workload's uid, so its word never beats the kernel's.
// The streaming init protocol of the daemon replaces this channel.
#ifndef SBX_WIRE_INIT_REPORT_H_
#define SBX_WIRE_INIT_REPORT_H_

#include <cstdint>

namespace sbx::sandbox {

inline constexpr uint32_t kInitReportMagic = 0x53425852;  // "SBXR"
inline constexpr int kInitReportFd = 3;

struct InitReport {
  enum Kind : uint32_t { kExited = 1, kSignaled = 2, kExecFailed = 3 };
  enum Flags : uint32_t {
    // The kernel has no Landlock: the workload ran without the domain that keeps it out of init (see
    // sandbox/init/landlock.h); only init's non-dumpable state protected it.
    kNotSeparated = 1,
  };
  uint32_t magic = kInitReportMagic;
  uint32_t kind = 0;
  int32_t value = 0;  // exit code (kExited), signal (kSignaled), errno (kExecFailed)
  uint32_t flags = 0;
};

}  // namespace sbx::sandbox

#endif  // SBX_WIRE_INIT_REPORT_H_
