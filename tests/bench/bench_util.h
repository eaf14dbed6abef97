// What the benchmark programs share: percentiles, and starting commands (posix_spawn) quietly, in the
// background, or capturing their stdout.
#ifndef SBX_TESTS_BENCH_BENCH_UTIL_H_
#define SBX_TESTS_BENCH_BENCH_UTIL_H_

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

extern char** environ;

namespace sbx::bench {

// The p-th percentile (0..1) of `v`; 0.5 is the median.
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

inline double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

// Starts argv with stdout (and, when `quiet_stderr`, stderr) on /dev/null, or stdout into `stdout_fd` when
// it is >= 0. Exits the benchmark when it cannot start.
inline pid_t Spawn(const std::vector<std::string>& argv, bool quiet_stderr = false, int stdout_fd = -1) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (stdout_fd >= 0) {
    posix_spawn_file_actions_adddup2(&actions, stdout_fd, 1);
  } else {
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  }
  if (quiet_stderr) posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid;
  if (posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) != 0) {
    perror(args[0]);
    exit(1);
  }
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

// Waits for `pid`; its exit status, or 128+N when signal N ended it.
inline int Wait(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// Runs argv with its output on /dev/null; returns its status.
inline int RunQuiet(const std::vector<std::string>& argv, bool quiet_stderr = false) {
  return Wait(Spawn(argv, quiet_stderr));
}

// Runs argv; returns its stdout.
inline std::string Capture(const std::vector<std::string>& argv) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) exit(1);
  const pid_t pid = Spawn(argv, false, fds[1]);
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  Wait(pid);
  return out;
}

}  // namespace sbx::bench

#endif  // SBX_TESTS_BENCH_BENCH_UTIL_H_
