#include "tests/integration/agent_runner.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tests/common/spawn.h"

namespace sbx::testing {

std::string AgentBin() { return SBX_AGENT_BIN; }
std::string ProbeBin() { return SBX_PROBE_BIN; }

namespace {

std::atomic<int> g_counter{0};

}  // namespace

pid_t StartAgent(const AgentInvocation& inv, int* out_fd, std::string* outcome_path) {
  *outcome_path = "/tmp/sbx-test-outcome-" + std::to_string(getpid()) + "-" + std::to_string(g_counter++) + ".json";
  unlink(outcome_path->c_str());
  std::vector<std::string> args = inv.prefix;
  args.push_back(AgentBin());
  args.push_back("run");
  args.push_back("--outcome-json");
  args.push_back(*outcome_path);
  if (inv.bind_probe) {
    args.push_back("--ro-bind");
    args.push_back(ProbeBin() + ":/probe");
  }
  args.insert(args.end(), inv.flags.begin(), inv.flags.end());
  args.push_back("--");
  args.insert(args.end(), inv.command.begin(), inv.command.end());

  // stderr apart from stdout: a file per run.
  SpawnOptions options;
  options.args = std::move(args);
  options.env = inv.env;
  options.stdin_pipe = true;
  options.stdout_pipe = true;
  options.stderr_path = *outcome_path + ".stderr";
  options.die_with_test = false;
  const Spawned spawned = Spawn(options);
  if (spawned.pid < 0) {
    // Never a pid of -1 to the caller: kill(-1, ...) would signal every process.
    fprintf(stderr, "StartAgent: could not start %s\n", options.args[0].c_str());
    abort();
  }
  *out_fd = spawned.stdout_fd;
  if (!inv.stdin_data.empty()) {
    ssize_t unused = write(spawned.stdin_fd, inv.stdin_data.data(), inv.stdin_data.size());
    (void)unused;
  }
  close(spawned.stdin_fd);
  return spawned.pid;
}

AgentRun WaitAgent(pid_t pid, int out_fd, const std::string& outcome_path) {
  AgentRun run;
  char buf[65536];
  for (;;) {
    ssize_t n = read(out_fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    run.out.append(buf, static_cast<size_t>(n));
  }
  close(out_fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  {
    std::ifstream err(outcome_path + ".stderr");
    std::stringstream ss;
    ss << err.rdbuf();
    run.err = ss.str();
  }
  std::ifstream f(outcome_path);
  if (f) {
    std::stringstream ss;
    ss << f.rdbuf();
    run.outcome = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  }
  unlink(outcome_path.c_str());
  unlink((outcome_path + ".stderr").c_str());
  return run;
}

AgentRun RunAgent(const AgentInvocation& inv) {
  int out_fd;
  std::string outcome;
  pid_t pid = StartAgent(inv, &out_fd, &outcome);
  return WaitAgent(pid, out_fd, outcome);
}

std::string Field(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "<missing>";
}

std::vector<std::string> SessionCgroups() {
  return CgroupDirs([](std::string_view name) { return name.starts_with("run-"); });
}

int MountCount() {
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) ++n;
  return n;
}

}  // namespace sbx::testing
