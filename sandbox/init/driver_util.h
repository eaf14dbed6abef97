// Small helpers sandbox-init's drivers (desktop.cc, cdp.cc) share: a monotonic clock in milliseconds, a sleep
// that survives signals, and wording for errno values and wait statuses.
#ifndef SBX_SANDBOX_INIT_DRIVER_UTIL_H_
#define SBX_SANDBOX_INIT_DRIVER_UTIL_H_

#include <sys/wait.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

namespace sbx::init::internal {

inline int64_t NowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

inline void SleepMs(int ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

inline std::string ErrnoMessage(const std::string& what, int err) { return what + ": " + strerror(err); }

// "exited with status N", "was killed by signal NAME".
inline std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("was killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
}

}  // namespace sbx::init::internal

#endif  // SBX_SANDBOX_INIT_DRIVER_UTIL_H_
