// What the benchmark programs share: percentiles, the machine's CPU meter, and starting commands (tests/common/spawn.h, Boost.Process)
// quietly, in the background, or capturing their stdout.
#ifndef SBX_TESTS_BENCH_BENCH_UTIL_H_
#define SBX_TESTS_BENCH_BENCH_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "tests/common/spawn.h"

namespace sbx::bench {

// The p-th percentile (0..1) of `v`; 0.5 is the median.
inline double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

inline double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

// CPU time the whole machine has spent busy since boot (user, nice, system, irq, softirq, steal from
// /proc/stat), in seconds. The difference over a phase is what the phase cost, whoever paid it: the agent,
// its jails, the kernel's namespace and cgroup work, the control-plane double, the benchmark itself. On a
// quiet machine that is the physical cost of the work, which wall-clock figures on 2 shared cores are not.
inline double MachineBusySeconds() {
  FILE* f = fopen("/proc/stat", "r");
  if (f == nullptr) return 0;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  const int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &user, &nice, &system, &idle, &iowait,
                       &irq, &softirq, &steal);
  fclose(f);
  if (n < 8) return 0;
  return static_cast<double>(user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Starts argv with stdout (and, when `quiet_stderr`, stderr) on /dev/null, or stdout into `stdout_fd` when
// it is >= 0 (or a pipe, whose read end goes to *stdout_pipe). Exits the benchmark when it cannot start. Both
// sides of a comparison start this way: Boost.Process under vfork, as posix_spawn does, so that no start pays
// for copying this process's page tables.
inline pid_t Spawn(const std::vector<std::string>& argv, bool quiet_stderr = false, int stdout_fd = -1,
                   int* stdout_pipe = nullptr) {
  sbx::testing::SpawnOptions options;
  options.args = argv;
  options.stdout_fd = stdout_fd;
  options.stdout_pipe = stdout_pipe != nullptr;
  options.stderr_inherit = !quiet_stderr;
  options.vfork = true;
  const sbx::testing::Spawned spawned = sbx::testing::Spawn(options);
  if (spawned.pid < 0) {
    fprintf(stderr, "%s: could not be started\n", argv[0].c_str());
    exit(1);
  }
  if (stdout_pipe != nullptr) *stdout_pipe = spawned.stdout_fd;
  return spawned.pid;
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
  int out = -1;
  const pid_t pid = Spawn(argv, false, -1, &out);
  std::string text;
  char buf[4096];
  ssize_t n;
  while ((n = read(out, buf, sizeof(buf))) > 0) text.append(buf, static_cast<size_t>(n));
  close(out);
  Wait(pid);
  return text;
}

}  // namespace sbx::bench

#endif  // SBX_TESTS_BENCH_BENCH_UTIL_H_
