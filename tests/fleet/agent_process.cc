#include "tests/fleet/agent_process.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "tests/common/host_state.h"
#include "tests/common/spawn.h"

namespace sbx::testing {

namespace pb = ::duvo::sandbox::v1;

std::string AgentBin() { return SBX_AGENT_BIN; }
std::string ProbeBin() { return SBX_PROBE_BIN; }

AgentProcess::AgentProcess(Options options) : options_(std::move(options)) {
  char dir[] = "/tmp/sbx-fleet-XXXXXX";
  if (mkdtemp(dir) != nullptr) dir_ = dir;
}

AgentProcess::~AgentProcess() {
  Kill9();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

void AgentProcess::WriteConfig() {
  std::ofstream f(dir_ + "/agent.textproto");
  f << "state_dir: \"" << state_dir() << "\"\n";
  f << "unix_socket: \"" << dir_ << "/agent.sock\"\n";
  f << "metrics_address: \"" << options_.metrics_address << "\"\n";
  f << "max_sessions: " << options_.max_sessions << "\n";
  for (const std::string& line : options_.config_lines) f << line << "\n";
  f << "fleet {\n";
  f << "  control_plane: \"" << options_.control_plane << "\"\n";
  f << "  agent_id: \"" << options_.agent_id << "\"\n";
  f << "  heartbeat_interval_ms: 200\n";
  f << "  lease_wait_ms: 2000\n";
  f << "  backoff_initial_ms: 50\n";
  f << "  backoff_max_ms: 1000\n";
  for (const std::string& line : options_.fleet_lines) f << "  " << line << "\n";
  f << "}\n";
}

bool AgentProcess::Start() {
  if (dir_.empty()) return false;
  WriteConfig();
  const std::string socket = dir_ + "/agent.sock";
  std::vector<std::string> args = {AgentBin(), "serve", "--config", dir_ + "/agent.textproto"};
  pid_ = SpawnLogged(args, dir_ + "/agent.log", /*append=*/true);  // a restart appends to the log
  if (pid_ < 0) return false;
  for (int i = 0; i < 1000; ++i) {
    struct stat st;
    if (stat(socket.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      auto channel = grpc::CreateChannel("unix:" + socket, grpc::InsecureChannelCredentials());
      if (channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(2))) return true;
    }
    if (!Alive()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

bool AgentProcess::Alive() {
  if (pid_ <= 0) return false;
  int status;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void AgentProcess::Kill9() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

int AgentProcess::Terminate(std::chrono::milliseconds limit, std::chrono::milliseconds* took) {
  if (pid_ <= 0) return -1;
  const auto start = std::chrono::steady_clock::now();
  kill(pid_, SIGTERM);
  int status = 0;
  while (std::chrono::steady_clock::now() - start < limit) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      if (took != nullptr) {
        *took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
      }
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return -1;
}

void AgentProcess::Hup() {
  if (pid_ > 0) kill(pid_, SIGHUP);
}

std::string AgentProcess::Log() const {
  std::ifstream f(dir_ + "/agent.log");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int FreePort() {
  // Below the ephemeral range (32768+): no outgoing connection of a parallel test takes it between this check
  // and the agent's bind, and a port handed out once in this process is never handed out again (bind(0)
  // twice in a row may give the same port, and two listeners of one agent then collide).
  static std::mutex mu;
  static std::set<int> handed;
  static std::mt19937 rng(static_cast<unsigned>(getpid()) ^ static_cast<unsigned>(time(nullptr)));
  std::lock_guard lock(mu);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const int port = 20000 + static_cast<int>(rng() % 12000);
    if (handed.count(port) != 0) continue;
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    close(fd);
    if (free) {
      handed.insert(port);
      return port;
    }
  }
  return 0;
}

pb::SandboxRequest ExecRequest(std::vector<std::string> argv, bool end_after_calls) {
  pb::SandboxRequest r;
  r.set_kind(pb::FILE);
  pb::Exec* exec = r.add_calls()->mutable_exec();
  for (auto& a : argv) exec->add_argv(std::move(a));
  r.set_end_after_calls(end_after_calls);
  return r;
}

std::string Leftovers(const std::string& session_id) {
  std::string out;
  if (session_id.empty()) return out;
  for (const std::string& d : CgroupDirs([&](std::string_view name) { return name == "session-" + session_id; })) {
    out += "cgroup " + d + "\n";
  }
  // Any process whose cgroup path names the session.
  DIR* proc = opendir("/proc");
  while (proc != nullptr) {
    dirent* e = readdir(proc);
    if (e == nullptr) break;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/cgroup");
    std::stringstream ss;
    ss << f.rdbuf();
    if (ss.str().find(session_id) != std::string::npos) out += std::string("process ") + e->d_name + "\n";
  }
  if (proc != nullptr) closedir(proc);
  return out;
}

}  // namespace sbx::testing
