// Start latency of a sandboxed /bin/true: `sandbox-agent run` against bubblewrap, side by side in one run.
// Prints both medians and their ratio, and runs per second sequentially and with 2 in parallel.
//
//   start_latency_bench [--runs N] [--agent PATH] [--agent-b PATH] [--bwrap PATH] [--nsjail PATH]
//
// --agent-b: a second sandbox-agent (e.g. a copy of another build's bin/, with its sandbox-init beside it)
// timed in the same interleaved loop, so that two builds are compared on one machine state; its median and
// both ratios are printed after ours. The machine is often shared: compare builds this way, not across runs.
//
// The anchor is `bwrap --unshare-all --die-with-parent` with equivalent read-only binds, /proc, /dev and
// /tmp. Ours additionally creates a session cgroup (memory, pids, cpu), loads a seccomp filter and maps a
// per-jail unprivileged uid range. When nsjail is on the machine (--nsjail, else `nsjail` in PATH), it is a
// second anchor that does what ours does: the file policy's cgroup limits (512 MiB, 256 pids, one CPU), a
// seccomp filter, an unprivileged uid/gid, the same binds and tmpfs. nsjail is not a Debian package; without
// it that column is skipped, and the output says so.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"

namespace {

using Clock = std::chrono::steady_clock;

// Runs `argv` `n` times in each of `threads` threads; returns runs per second.
double Throughput(const std::vector<std::string>& argv, int n, int threads) {
  const auto start = Clock::now();
  std::vector<std::jthread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < n; ++i) {
        if (sbx::bench::RunQuiet(argv) != 0) {
          fprintf(stderr, "a run failed: %s\n", argv[0].c_str());
          exit(1);
        }
      }
    });
  }
  workers.clear();
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  return n * threads / secs;
}

// The NSJAIL parent cgroups this run created (cgroup v1), removed at exit.
std::vector<std::string> created_cgroups;

// nsjail's argv for /bin/true with the limits ours applies by default, or {} when nsjail is absent. On a
// cgroup v1 host nsjail needs its parent cgroups (NSJAIL) to exist in each controller; they are created here.
std::vector<std::string> NsjailArgv(std::string path) {
  if (path.empty()) {
    for (const char* dir : {"/usr/local/bin/", "/usr/bin/", "/usr/sbin/"}) {
      if (access((std::string(dir) + "nsjail").c_str(), X_OK) == 0) path = std::string(dir) + "nsjail";
    }
  }
  if (path.empty() || access(path.c_str(), X_OK) != 0) return {};
  std::vector<std::string> argv = {path, "-Mo", "--really_quiet", "-u", "1000:200000:1", "-g", "1000:200000:1",
                                   "-R", "/usr", "-s", "usr/bin:/bin", "-s", "usr/lib:/lib", "-s",
                                   "usr/lib64:/lib64", "-s", "usr/sbin:/sbin", "-R", "/etc/ld.so.cache",
                                   "-m", "none:/tmp:tmpfs:size=67108864", "-m",
                                   "none:/workspace:tmpfs:size=67108864", "-D", "/workspace", "-H", "sandbox",
                                   "--cgroup_mem_max", "536870912", "--cgroup_pids_max", "256",
                                   "--cgroup_cpu_ms_per_sec", "1000", "--seccomp_string",
                                   "ERRNO(1) { ptrace, kexec_load, bpf, perf_event_open, add_key, keyctl } "
                                   "DEFAULT ALLOW"};
  if (access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0) {
    argv.insert(argv.begin() + 1, "--use_cgroupv2");
  } else {
    for (const char* c : {"memory", "pids", "cpu"}) {
      const std::string dir = std::string("/sys/fs/cgroup/") + c + "/NSJAIL";
      if (mkdir(dir.c_str(), 0755) == 0) created_cgroups.push_back(dir);
    }
  }
  argv.insert(argv.end(), {"--", "/bin/true"});
  return argv;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 200;
  std::string agent = SBX_AGENT_BIN;
  std::string bwrap = "/usr/bin/bwrap";
  std::string nsjail_path;
  std::string agent_b;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--agent")) agent = argv[i + 1];
    if (!strcmp(argv[i], "--agent-b")) agent_b = argv[i + 1];
    if (!strcmp(argv[i], "--bwrap")) bwrap = argv[i + 1];
    if (!strcmp(argv[i], "--nsjail")) nsjail_path = argv[i + 1];
  }
  if (access(bwrap.c_str(), X_OK) != 0) {
    fprintf(stderr, "bubblewrap not found at %s (apt-get install bubblewrap)\n", bwrap.c_str());
    return 1;
  }
  const std::vector<std::string> ours = {agent, "run", "--", "/bin/true"};
  const std::vector<std::string> anchor = {
      bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr",
      "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
      "--symlink", "usr/sbin", "/sbin", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
      "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/workspace", "--chdir", "/workspace",
      "--hostname", "sandbox", "--", "/bin/true"};
  const std::vector<std::string> nsjail = NsjailArgv(nsjail_path);
  std::vector<std::string> ours_b;
  if (!agent_b.empty()) ours_b = {agent_b, "run", "--", "/bin/true"};

  // Warm up both (page cache, dynamic loader).
  for (int i = 0; i < 10; ++i) {
    if (sbx::bench::RunQuiet(ours) != 0 || sbx::bench::RunQuiet(anchor) != 0 ||
        (!nsjail.empty() && sbx::bench::RunQuiet(nsjail) != 0) || (!ours_b.empty() && sbx::bench::RunQuiet(ours_b) != 0)) {
      fprintf(stderr, "warm-up run failed (are we root, is sandbox-agent built?)\n");
      return 1;
    }
  }
  // Interleave so both see the same machine state.
  std::vector<double> ours_ms, anchor_ms, nsjail_ms, ours_b_ms;
  for (int i = 0; i < runs; ++i) {
    auto t0 = Clock::now();
    sbx::bench::RunQuiet(ours);
    auto t1 = Clock::now();
    sbx::bench::RunQuiet(anchor);
    auto t2 = Clock::now();
    ours_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    anchor_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    if (!nsjail.empty()) {
      sbx::bench::RunQuiet(nsjail);
      nsjail_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t2).count());
    }
    if (!ours_b.empty()) {
      const auto t3 = Clock::now();
      sbx::bench::RunQuiet(ours_b);
      ours_b_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t3).count());
    }
  }
  const double m_ours = sbx::bench::Median(ours_ms), m_anchor = sbx::bench::Median(anchor_ms);
  printf("machine: %u cores\n", std::thread::hardware_concurrency());
  printf("start latency of /bin/true, %d runs each (interleaved)\n", runs);
  printf("  sandbox-agent run   median %.2f ms  p90 %.2f ms\n", m_ours, sbx::bench::Percentile(ours_ms, 0.9));
  printf("  bwrap --unshare-all median %.2f ms  p90 %.2f ms\n", m_anchor, sbx::bench::Percentile(anchor_ms, 0.9));
  printf("  ratio (ours / bwrap) %.2f\n", m_ours / m_anchor);
  if (!ours_b.empty()) {
    const double m_b = sbx::bench::Median(ours_b_ms);
    printf("  agent B (%s) median %.2f ms  p90 %.2f ms\n", agent_b.c_str(), m_b, sbx::bench::Percentile(ours_b_ms, 0.9));
    printf("  ratio (B / bwrap) %.2f  ratio (ours / B) %.2f\n", m_b / m_anchor, m_ours / m_b);
  }
  if (nsjail.empty()) {
    printf("  nsjail: not on this machine (not a Debian package: build github.com/google/nsjail and pass\n"
           "  --nsjail PATH), column skipped\n");
  } else {
    const double m_nsjail = sbx::bench::Median(nsjail_ms);
    printf("  nsjail (cgroup limits, seccomp, uid map) median %.2f ms  p90 %.2f ms\n", m_nsjail,
           sbx::bench::Percentile(nsjail_ms, 0.9));
    printf("  ratio (ours / nsjail) %.2f\n", m_ours / m_nsjail);
  }

  // Spaced starts, 100 ms apart: what a lone `run` sees. On cgroup v1 hosts the first cgroup migration after
  // a quiet spell waits for an RCU grace period (~10 ms here); back-to-back starts mostly miss it. On v2 the
  // jail is cloned straight into its cgroup and there is no migration.
  std::vector<double> ours_spaced, anchor_spaced;
  for (int i = 0; i < std::max(runs / 10, 10); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto t0 = Clock::now();
    sbx::bench::RunQuiet(ours);
    auto t1 = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto t2 = Clock::now();
    sbx::bench::RunQuiet(anchor);
    auto t3 = Clock::now();
    ours_spaced.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    anchor_spaced.push_back(std::chrono::duration<double, std::milli>(t3 - t2).count());
  }
  printf("spaced starts (100 ms apart), %zu runs each\n", ours_spaced.size());
  printf("  sandbox-agent run   median %.2f ms\n", sbx::bench::Median(ours_spaced));
  printf("  bwrap --unshare-all median %.2f ms\n", sbx::bench::Median(anchor_spaced));
  printf("  ratio (ours / bwrap) %.2f\n", sbx::bench::Median(ours_spaced) / sbx::bench::Median(anchor_spaced));

  const int n = std::max(runs / 2, 20);
  // The machine's busy CPU over each sequential phase: what one start costs, whoever pays it (the tool, the
  // jail's processes, the kernel's namespace, mount and cgroup work).
  double busy = sbx::bench::MachineBusySeconds();
  const double ours_seq = Throughput(ours, n, 1);
  const double ours_cpu_ms = (sbx::bench::MachineBusySeconds() - busy) * 1000 / n;
  busy = sbx::bench::MachineBusySeconds();
  const double anchor_seq = Throughput(anchor, n, 1);
  const double anchor_cpu_ms = (sbx::bench::MachineBusySeconds() - busy) * 1000 / n;
  const double ours_par = Throughput(ours, n, 2), anchor_par = Throughput(anchor, n, 2);
  printf("runs per second, sequential: sandbox-agent %.0f  bwrap %.0f  ratio %.2f\n", ours_seq, anchor_seq,
         ours_seq / anchor_seq);
  printf("runs per second, 2 parallel: sandbox-agent %.0f  bwrap %.0f  ratio %.2f\n", ours_par, anchor_par,
         ours_par / anchor_par);
  printf("CPU per run (the machine's, sequential): sandbox-agent %.2f ms  bwrap %.2f ms  ratio %.2f\n", ours_cpu_ms,
         anchor_cpu_ms, ours_cpu_ms / anchor_cpu_ms);
  for (const std::string& dir : created_cgroups) rmdir(dir.c_str());
  return 0;
}
