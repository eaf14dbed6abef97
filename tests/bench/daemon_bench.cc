// Daemon benchmarks, each beside its anchor in the same run:
//  1. exec round trip of `true` in a warm session through the daemon (p50/p99, calls/s); anchor: a local
//     fork+exec+wait of /bin/true.
//  2. stdout streaming throughput of `head -c 1G /dev/zero` to a client; anchor:
//     `head -c 1G /dev/zero | cat > /dev/null` on the host. Also the CPU time the daemon (agent and
//     sandbox-init) and this client spent per GiB, to see where a slow run went.
//  3. idle density: N concurrent idle file sessions; agent RSS and host memory per session.
//  4. Create -> first exec of `true` done, for a file session from the warm pool (warm_files: 1) and a cold
//     one (a request with an explicit ttl, which never takes a pooled session), interleaved; Create alone too.
//
//   daemon_bench [--calls N] [--stream-bytes B] [--sessions N] [--runs N] [--starts N]
//                [--only exec|stream|density|start] [--agent PATH]
// --only runs one part (e.g. to profile the daemon during streaming alone); --runs is the streaming runs
// (5); --agent runs another build's sandbox-agent (with its sandbox-agentd and sandbox-init beside it),
// e.g. to compare two builds on the same machine.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"
#include "tests/bench/bench_util.h"
#include "tests/common/spawn.h"

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

namespace {

double Pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// "MemAvailable" etc. from /proc/meminfo, in KiB.
long MemInfo(const char* key) {
  std::ifstream f("/proc/meminfo");
  std::string k;
  long v;
  std::string unit;
  while (f >> k >> v >> unit) {
    if (k == std::string(key) + ":") return v;
  }
  return -1;
}

long RssKiB(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

// User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat.
double CpuSeconds(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::istringstream rest(stat.substr(close + 2));
  std::string field;
  double ticks = 0;
  // Fields 3.. after the name; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i >= 14) ticks += std::stod(field);
  }
  return ticks / sysconf(_SC_CLK_TCK);
}

// The parent pid of `pid` (field 4 of /proc/<pid>/stat), or -1.
pid_t ParentOf(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(stat.substr(close + 2));
  std::string state;
  pid_t ppid = -1;
  rest >> state >> ppid;
  return ppid;
}

// The sandbox-init (serving mode) below `agent`, as seen from here; -1 when there is none (or several).
pid_t SessionInit(pid_t agent) {
  pid_t found = -1;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(entry.path() / "cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (cmdline.find("sandbox-init") == std::string::npos || cmdline.find("--serve") == std::string::npos) continue;
    pid_t p = std::stoi(name);
    for (int depth = 0; depth < 16 && p > 1 && p != agent; ++depth) p = ParentOf(p);
    if (p != agent) continue;
    if (found != -1) return -1;
    found = std::stoi(name);
  }
  return found;
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

struct ExecOutcome {
  uint64_t bytes = 0;
  uint64_t dropped = 0;  // output the event log gave up before this client read it (its byte budget)
  bool ok = false;
};

ExecOutcome Exec(pb::Sandboxes::Stub& stub, const std::string& id, const std::vector<std::string>& argv) {
  grpc::ClientContext ctx;
  auto stream = stub.Call(&ctx);
  pb::CallRequest req;
  req.set_session_id(id);
  for (auto& a : argv) req.mutable_call()->mutable_exec()->add_argv(a);
  stream->Write(req);
  stream->WritesDone();
  pb::Event e;
  ExecOutcome out;
  while (stream->Read(&e)) {
    if (e.has_output()) out.bytes += e.output().data().size();
    if (e.has_output()) out.dropped += e.output().dropped_bytes();
    if (e.has_dropped()) out.dropped += e.dropped().bytes();
    if (e.has_tool_call_finished()) out.ok = e.tool_call_finished().has_result();
  }
  out.ok = out.ok && stream->Finish().ok();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 500;
  uint64_t stream_bytes = 1ull << 30;
  int sessions = 500;
  int runs = 5;
  int starts = 50;
  std::string only;
  std::string agent_bin = SBX_AGENT_BIN;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--calls")) calls = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--stream-bytes")) stream_bytes = strtoull(argv[i + 1], nullptr, 10);
    if (!strcmp(argv[i], "--sessions")) sessions = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--runs")) runs = std::max(1, atoi(argv[i + 1]));
    if (!strcmp(argv[i], "--starts")) starts = std::max(1, atoi(argv[i + 1]));
    if (!strcmp(argv[i], "--only")) only = argv[i + 1];
    if (!strcmp(argv[i], "--agent")) agent_bin = argv[i + 1];
  }
  if (!only.empty() && only != "exec" && only != "stream" && only != "density" && only != "start") {
    fprintf(stderr, "--only %s: expected exec, stream, density or start\n", only.c_str());
    return 2;
  }
  const auto part = [&only](const char* name) { return only.empty() || only == name; };
  char dir[] = "/tmp/sbx-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  const std::string socket = std::string(dir) + "/agent.sock";
  const std::string config = std::string(dir) + "/agent.textproto";
  // The default file policy, with an output budget large enough for the
  // streaming run.
  {
    std::ifstream in(SBX_FILE_POLICY);
    std::stringstream policy;
    policy << in.rdbuf();
    std::string text = policy.str();
    const std::string from = "output_max_bytes: 67108864";
    const size_t at = text.find(from);
    if (at == std::string::npos) {
      fprintf(stderr, "%s: no '%s' line to raise\n", SBX_FILE_POLICY, from.c_str());
      return 1;
    }
    text.replace(at, from.size(), "output_max_bytes: " + std::to_string(2 * stream_bytes + (1 << 20)));
    std::ofstream(std::string(dir) + "/file.textproto") << text;
  }
  std::ofstream(config) << "unix_socket: \"" << socket << "\"\nmetrics_address: \"off\"\nmax_sessions: " << sessions + 4
                        << "\npolicy_dir: \"" << dir << "\"\nstate_dir: \"" << dir << "/state\"\nwarm_files: 1\n";
  // The daemon's log goes to a file: it would drown the figures.
  const std::string log = std::string(dir) + "/agent.log";
  const pid_t agent = sbx::testing::SpawnLogged({agent_bin, "serve", "--config", config}, log, /*append=*/false);
  if (agent < 0) {
    fprintf(stderr, "cannot start %s\n", agent_bin.c_str());
    return 1;
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  auto channel = grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args);
  for (int i = 0; i < 500; ++i) {
    struct stat st;
    if (stat(socket.c_str(), &st) == 0 &&
        channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(1))) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  pb::Sandboxes::Stub stub(channel);
  printf("machine: %u cores\n", std::thread::hardware_concurrency());

  pb::Session warm;
  {
    grpc::ClientContext ctx;
    if (!stub.Create(&ctx, pb::CreateRequest(), &warm).ok()) {
      fprintf(stderr, "cannot create a session (root? built?)\n");
      kill(agent, SIGKILL);
      return 1;
    }
  }
  // 1. exec round trip.
  for (int i = 0; i < 20; ++i) Exec(stub, warm.id(), {"true"});
  if (part("exec")) {
    std::vector<double> rtt, local;
    const auto t0 = Clock::now();
    for (int i = 0; i < calls; ++i) {
      auto a = Clock::now();
      if (!Exec(stub, warm.id(), {"true"}).ok) fprintf(stderr, "exec failed\n");
      rtt.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    for (int i = 0; i < calls; ++i) {
      auto a = Clock::now();
      sbx::bench::Wait(sbx::bench::Spawn({"/bin/true"}));
      local.push_back(std::chrono::duration<double, std::milli>(Clock::now() - a).count());
    }
    printf("exec round trip of `true` in a warm session, %d calls\n", calls);
    printf("  through the daemon  p50 %.2f ms  p99 %.2f ms  %.0f calls/s\n", Pct(rtt, 0.5), Pct(rtt, 0.99),
           calls / secs);
    printf("  local fork+exec     p50 %.2f ms  p99 %.2f ms\n", Pct(local, 0.5), Pct(local, 0.99));
    printf("  ratio (p50)         %.2f\n", Pct(rtt, 0.5) / Pct(local, 0.5));
  }

  // 2. streaming throughput: --runs runs each (5), interleaved; medians (the 2-core machine is noisy).
  if (part("stream")) {
    const std::string count = std::to_string(stream_bytes);
    std::vector<double> ours_gbs, host_gbs, agent_cpu, init_cpu, client_cpu;
    const pid_t init = SessionInit(agent);  // the warm session's sandbox-init
    uint64_t received = 0, dropped = 0;  // over all runs: the live client must get every byte
    for (int run = 0; run < runs; ++run) {
      const double agent_cpu0 = CpuSeconds(agent), client_cpu0 = SelfCpuSeconds();
      const double init_cpu0 = init > 0 ? CpuSeconds(init) : 0;
      auto s0 = Clock::now();
      ExecOutcome streamed = Exec(stub, warm.id(), {"head", "-c", count, "/dev/zero"});
      const double stream_secs = std::chrono::duration<double>(Clock::now() - s0).count();
      received += streamed.bytes;
      dropped += streamed.dropped;
      const double gib = static_cast<double>(stream_bytes) / (1 << 30);
      agent_cpu.push_back((CpuSeconds(agent) - agent_cpu0) / gib);
      client_cpu.push_back((SelfCpuSeconds() - client_cpu0) / gib);
      if (init > 0) init_cpu.push_back((CpuSeconds(init) - init_cpu0) / gib);
      if (streamed.bytes != stream_bytes || !streamed.ok) {
        fprintf(stderr, "stream run %d: %llu of %llu bytes, %llu dropped by the event log, %s\n", run, static_cast<unsigned long long>(streamed.bytes), static_cast<unsigned long long>(stream_bytes),
                static_cast<unsigned long long>(streamed.dropped), streamed.ok ? "ended ok" : "did not end ok");
      }
      ours_gbs.push_back(streamed.bytes / stream_secs / 1e9);
      auto h0 = Clock::now();
      sbx::bench::Wait(sbx::bench::Spawn({"/bin/sh", "-c", "head -c " + count + " /dev/zero | cat > /dev/null"}));
      host_gbs.push_back(stream_bytes / std::chrono::duration<double>(Clock::now() - h0).count() / 1e9);
    }
    printf("stdout streaming, %llu bytes, %d runs each\n", static_cast<unsigned long long>(stream_bytes), runs);
    printf("  through the daemon  median %.2f GB/s (min %.2f, max %.2f)\n", Pct(ours_gbs, 0.5), Pct(ours_gbs, 0),
           Pct(ours_gbs, 1));
    printf("  live client         %llu of %llu bytes received, %llu dropped (all runs)\n",
           static_cast<unsigned long long>(received), static_cast<unsigned long long>(stream_bytes * runs),
           static_cast<unsigned long long>(dropped));
    printf("  head | cat on host  median %.2f GB/s\n", Pct(host_gbs, 0.5));
    printf("  ratio (medians)     %.2f\n", Pct(ours_gbs, 0.5) / Pct(host_gbs, 0.5));
    if (init > 0) {
      printf("  CPU per GiB         agent %.2f s, sandbox-init %.2f s, this client %.2f s (medians)\n",
             Pct(agent_cpu, 0.5), Pct(init_cpu, 0.5), Pct(client_cpu, 0.5));
    } else {
      printf("  CPU per GiB         agent %.2f s, this client %.2f s (medians; sandbox-init not found)\n",
             Pct(agent_cpu, 0.5), Pct(client_cpu, 0.5));
    }
  }

  // 4. Create -> first exec, warm and cold, interleaved (before the density part fills the agent).
  if (part("start")) {
    std::vector<double> create_ms[2], first_ms[2];  // [0] cold, [1] warm
    int warm_misses = 0;
    for (int i = 0; i < 2 * starts; ++i) {
      const bool want_warm = i % 2 == 1;
      // The pool refills in the background (its session's start, some 10-20 ms at the lowest CPU priority).
      std::this_thread::sleep_for(std::chrono::milliseconds(want_warm ? 150 : 20));
      pb::CreateRequest req;
      if (!want_warm) req.set_ttl_ms(3600000);  // the default ttl, asked for: never served from the pool
      const int64_t before_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
      const auto t0 = Clock::now();
      pb::Session s;
      grpc::ClientContext ctx;
      if (!stub.Create(&ctx, req, &s).ok()) {
        fprintf(stderr, "create failed\n");
        continue;
      }
      const auto t1 = Clock::now();
      if (!Exec(stub, s.id(), {"true"}).ok) fprintf(stderr, "first exec failed\n");
      const auto t2 = Clock::now();
      const bool was_warm = s.created_unix_ms() < before_ms;
      if (want_warm && !was_warm) ++warm_misses;
      create_ms[was_warm].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      first_ms[was_warm].push_back(std::chrono::duration<double, std::milli>(t2 - t0).count());
      grpc::ClientContext dctx;
      pb::DeleteRequest del;
      del.set_session_id(s.id());
      pb::DeleteResponse deleted;
      (void)stub.Delete(&dctx, del, &deleted);
    }
    printf("file session Create -> first exec of `true` done, %d runs each, interleaved\n", starts);
    for (int warm = 1; warm >= 0; --warm) {
      printf("  %s  Create p50 %6.2f ms  p99 %6.2f ms   -> first exec p50 %6.2f ms  p99 %6.2f ms  (%zu runs)\n",
             warm ? "warm (from the pool)" : "cold                ", Pct(create_ms[warm], 0.5),
             Pct(create_ms[warm], 0.99), Pct(first_ms[warm], 0.5), Pct(first_ms[warm], 0.99), first_ms[warm].size());
    }
    if (warm_misses > 0) printf("  (%d warm runs found the pool empty and started cold)\n", warm_misses);
  }

  // 3. idle density.
  if (part("density")) {
    const long avail_before = MemInfo("MemAvailable");
    const long rss_before = RssKiB(agent);
    int created = 0;
    auto c0 = Clock::now();
    for (int i = 0; i < sessions; ++i) {
      grpc::ClientContext ctx;
      pb::Session s;
      if (stub.Create(&ctx, pb::CreateRequest(), &s).ok()) ++created;
    }
    const double create_secs = std::chrono::duration<double>(Clock::now() - c0).count();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const long avail_after = MemInfo("MemAvailable");
    const long rss_after = RssKiB(agent);
    printf("idle density: %d sessions created in %.1f s (%.1f ms each)\n", created, create_secs,
           1000 * create_secs / std::max(created, 1));
    printf("  agent RSS %ld KiB -> %ld KiB: %.0f KiB per session (target < 200)\n", rss_before, rss_after,
           static_cast<double>(rss_after - rss_before) / std::max(created, 1));
    printf("  host memory in use +%ld MiB: %.0f KiB per session (jail, init, cgroup, namespaces)\n",
           (avail_before - avail_after) / 1024, static_cast<double>(avail_before - avail_after) / std::max(created, 1));
  }

  kill(agent, SIGTERM);
  int status;
  waitpid(agent, &status, 0);
  unlink(config.c_str());
  unlink((std::string(dir) + "/file.textproto").c_str());
  unlink(log.c_str());
  std::error_code ec;
  std::filesystem::remove_all(std::string(dir) + "/state", ec);
  rmdir(dir);
  return 0;
}
