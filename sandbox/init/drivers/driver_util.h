// Helpers sandbox-init's drivers (desktop*.cc, cdp*.cc) share: a monotonic clock in milliseconds, a sleep that
// survives signals, wording for errno values and wait statuses (inline), and the child processes they start
// (Xvfb, a window manager, Chromium): spawning, reaping, and the tail of their output (driver_util.cc).
#ifndef SBX_SANDBOX_INIT_DRIVERS_DRIVER_UTIL_H_
#define SBX_SANDBOX_INIT_DRIVERS_DRIVER_UTIL_H_

#include <sys/wait.h>
#include <time.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

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

// The screen sizes the drivers accept (a display, a browser viewport): 64x64 up to 8K UHD's 7680x4320.
inline constexpr uint32_t kMinScreenWidth = 64, kMaxScreenWidth = 7680, kMinScreenHeight = 64, kMaxScreenHeight = 4320;

// False, with *error "the <what> WxH is outside 64x64..7680x4320", when the size is outside those bounds.
bool CheckScreenSize(const char* what, uint32_t width, uint32_t height, std::string* error);

// A close-on-exec memfd named `name` for a child's output (its tail explains a failure); -1 without memfd.
int OutputMemfd(const char* name);

// Starts `argv` (argv[0] a path) with `env` in a new session: signals unblocked and at their defaults
// (sandbox-init blocks all and ignores SIGPIPE), stdin /dev/null, stdout and stderr `out_fd` (/dev/null when
// -1), and each {source, target} of `fds` open as descriptor `target` (>= 3); every other descriptor is
// close-on-exec. Between fork and exec: raw syscalls only. Returns the pid, or -1 with *error (a failed exec
// is reported, and its child reaped).
pid_t SpawnInSession(const std::vector<std::string>& argv, const std::vector<std::string>& env, int out_fd,
                     const std::vector<std::pair<int, int>>& fds, std::string* error);

// Waits up to `ms` for `pid` (our child) to exit; true with *status if it did (or someone else reaped it).
bool WaitExit(pid_t pid, int ms, int* status);

// SIGTERM to the child's session (process group), SIGKILL after `grace_ms`, then reaps it; what it left in
// its group is SIGKILLed too. Returns its wait status (0 if someone else reaped it).
int KillAndReap(pid_t pid, int grace_ms);

// The last lines of a process's output (a memfd) for an error message: whitespace collapsed, lines joined
// with " | ", at most ~600 bytes, without the lines `skip` says are noise (when given).
std::string OutputTail(int fd, bool (*skip)(std::string_view line) = nullptr);

}  // namespace sbx::init::internal

#endif  // SBX_SANDBOX_INIT_DRIVERS_DRIVER_UTIL_H_
