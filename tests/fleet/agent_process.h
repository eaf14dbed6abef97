// A real `sandbox-agent serve` in fleet mode as a subprocess, pointed at a control-plane double. Its directory
// (config, state with the outbox, socket, log) survives Kill9()+Start(), as a host's disk survives an agent
// crash.
#ifndef SBX_TESTS_FLEET_AGENT_PROCESS_H_
#define SBX_TESTS_FLEET_AGENT_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "duvo/sandbox/v1/worker.pb.h"

namespace sbx::testing {

class AgentProcess {
 public:
  struct Options {
    std::string control_plane;             // "127.0.0.1:<port>"
    std::string agent_id = "agent-1";
    uint32_t max_sessions = 8;
    std::string metrics_address = "off";
    std::vector<std::string> config_lines;  // more top-level textproto lines
    std::vector<std::string> fleet_lines;   // more lines inside fleet { }
  };
  explicit AgentProcess(Options options);
  ~AgentProcess();  // SIGKILL if running; removes its directory

  // Writes the config and starts the agent; true once its local socket answers.
  bool Start();
  void Kill9();
  // SIGTERM; waits (up to `limit`) and returns the exit status (128+N for a signal, -1 on timeout).
  int Terminate(std::chrono::milliseconds limit, std::chrono::milliseconds* took = nullptr);
  void Hup();
  bool Alive();
  // Rewrites the config file (for SIGHUP tests).
  void WriteConfig();
  Options& options() { return options_; }

  const std::string& dir() const { return dir_; }
  std::string state_dir() const { return dir_ + "/state"; }
  std::string Log() const;
  pid_t pid() const { return pid_; }

 private:
  Options options_;
  std::string dir_;
  pid_t pid_ = -1;
};

// A TCP port on 127.0.0.1 that was free a moment ago.
int FreePort();

// A request that runs `argv` and ends the session when it exits.
duvo::sandbox::v1::SandboxRequest ExecRequest(std::vector<std::string> argv, bool end_after_calls = true);

// What a session left on the host: its cgroup directories ("session-<id>" in any hierarchy), processes in
// such cgroups. Empty when nothing.
std::string Leftovers(const std::string& session_id);

std::string AgentBin();
std::string ProbeBin();

}  // namespace sbx::testing

#endif  // SBX_TESTS_FLEET_AGENT_PROCESS_H_
