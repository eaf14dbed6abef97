// The one record sandbox-init writes on fd 3 when the workload ends (or could not be executed). Fixed size;
// the agent checks the size and magic before trusting any field. The streaming init protocol of the daemon
// replaces this channel.
#ifndef SBX_SANDBOX_INIT_INIT_REPORT_H_
#define SBX_SANDBOX_INIT_INIT_REPORT_H_

#include <cstdint>

namespace sbx::sandbox {

inline constexpr uint32_t kInitReportMagic = 0x53425852;  // "SBXR"
inline constexpr int kInitReportFd = 3;

struct InitReport {
  enum Kind : uint32_t { kExited = 1, kSignaled = 2, kExecFailed = 3 };
  uint32_t magic = kInitReportMagic;
  uint32_t kind = 0;
  int32_t value = 0;  // exit code (kExited), signal (kSignaled), errno (kExecFailed)
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_INIT_INIT_REPORT_H_
