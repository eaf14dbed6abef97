// Guarantee: when the host runs out of memory, the kernel's OOM killer picks a jail, never the agent. The
// agent lowers its own oom_score_adj (-900) and raises every jail's to the maximum (1000) from outside, and a
// workload cannot lower its own again.
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/init_trust_util.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::AnyOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string OomScoreAdj(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/oom_score_adj");
  std::string v;
  f >> v;
  return v;
}

// Waits until at least `n` jail-uid processes exist (init and its workload), up to 10 s.
std::vector<pid_t> WaitForJailProcesses(size_t n) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::vector<pid_t> pids = JailUidProcesses();
  while (pids.size() < n && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    pids = JailUidProcesses();
  }
  return pids;
}

// CAP_SYS_RESOURCE in this process's effective set: lowering an oom_score_adj needs it, and so does making a
// raised one stick (the kernel lets a process lower its own score back down to what the last writer without
// the capability left as the floor).
bool HaveCapSysResource() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> 24) & 1;
  }
  return false;
}

constexpr char kNoCapSysResource[] =
    "this machine's root lacks CAP_SYS_RESOURCE (see CapEff in /proc/self/status), which the agent needs to "
    "lower its own oom_score_adj and to keep a jail from lowering its own";

class OomPrefersJailsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "jails are built as root here (CI runs as root); this is uid " << geteuid();
  }

  // `sandbox-agent run` of the probe, looked at from outside while the jail runs.
  struct Seen {
    AgentRun run;
    std::string agent_score;
    std::vector<std::string> jail_scores;
  };
  // `keep`: the probe does not try to lower its score (see probes/oom_lower_self.cc).
  Seen RunProbeAndLook(bool keep = false) {
    AgentInvocation inv;
    inv.bind_probe = false;
    inv.flags = {"--ro-bind", std::string(SBX_ADV_PROBE_DIR) + "/oom_lower_self:/oom_lower_self"};
    inv.command = {"/oom_lower_self", "2000"};
    if (keep) inv.command.push_back("keep");
    int out_fd;
    std::string outcome;
    const pid_t agent = StartAgent(inv, &out_fd, &outcome);
    Seen seen;
    const std::vector<pid_t> jail = WaitForJailProcesses(2);
    seen.agent_score = OomScoreAdj(agent);
    for (pid_t pid : jail) seen.jail_scores.push_back(OomScoreAdj(pid));
    seen.run = WaitAgent(agent, out_fd, outcome);
    return seen;
  }
};

// Raising needs no privilege: every jail starts at 1000, seen from outside (init and the workload) and inside.
TEST_F(OomPrefersJailsTest, EveryRunsJailStartsAtTheTop) {
  Seen seen = RunProbeAndLook(/*keep=*/true);
  ASSERT_EQ(seen.run.exit_code, 0) << seen.run.out << seen.run.err;
  ASSERT_GE(seen.jail_scores.size(), 2u) << "the jail's processes never showed";
  for (const std::string& s : seen.jail_scores) EXPECT_EQ(s, "1000");
  EXPECT_EQ(ProbeField(seen.run.out, "score"), "1000") << seen.run.out;
}

TEST_F(OomPrefersJailsTest, RunLowersTheAgentAndTheWorkloadCannotLowerItself) {
  if (!HaveCapSysResource()) GTEST_SKIP() << kNoCapSysResource;
  Seen seen = RunProbeAndLook();
  ASSERT_EQ(seen.run.exit_code, 0) << seen.run.out << seen.run.err;
  EXPECT_EQ(seen.agent_score, "-900");
  EXPECT_THAT(ProbeField(seen.run.out, "lower"), AnyOf("EACCES", "EPERM")) << seen.run.out;
  EXPECT_EQ(ProbeField(seen.run.out, "score_after"), "1000") << seen.run.out;
}

// Without CAP_SYS_RESOURCE (a container that does not grant it) the agent cannot lower its own score: it says
// so in one line and runs the jail anyway, still at 1000.
TEST_F(OomPrefersJailsTest, WithoutCapSysResourceTheRunSaysSoAndGoesOn) {
  if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "this machine lacks /usr/bin/setpriv (util-linux)";
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.prefix = {"/usr/bin/setpriv", "--bounding-set", "-sys_resource", "--inh-caps", "-sys_resource", "--"};
  inv.flags = {"--ro-bind", std::string(SBX_ADV_PROBE_DIR) + "/oom_lower_self:/oom_lower_self"};
  inv.command = {"/oom_lower_self"};
  AgentRun run = RunAgent(inv);
  EXPECT_EQ(run.exit_code, 0) << run.out << run.err;
  ASSERT_TRUE(run.outcome.contains("warnings")) << run.outcome.dump();
  EXPECT_THAT(run.outcome["warnings"].dump(), HasSubstr("oom_score_adj to -900 (needs CAP_SYS_RESOURCE)"))
      << run.outcome.dump();
  EXPECT_THAT(run.err, Not(HasSubstr("oom_score_adj"))) << "stderr is the workload's: " << run.err;
  EXPECT_EQ(ProbeField(run.out, "score"), "1000") << run.out;
}

TEST_F(OomPrefersJailsTest, TheDaemonRaisesEverySessionAndLowersItself) {
  Daemon daemon(Daemon::Options{});
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  pb::Session session;
  const grpc::Status created = CreateSession(stub.get(), pb::FILE, &session);
  ASSERT_TRUE(created.ok()) << created.error_message() << "\n" << daemon.Log();
  const grpc::Status up = UploadProbe(stub.get(), session.id(), "oom_lower_self", "/workspace/oom_lower_self");
  ASSERT_TRUE(up.ok()) << up.error_message();
  CallResult probe = RunExec(stub.get(), session.id(), {"/workspace/oom_lower_self"});
  ASSERT_TRUE(probe.finished.has_result()) << probe.finished.DebugString();
  EXPECT_EQ(ProbeField(probe.out, "score"), "1000") << probe.out << probe.err;
  // init itself, seen from the host.
  const std::vector<pid_t> jail = JailUidProcesses();
  ASSERT_FALSE(jail.empty());
  for (pid_t pid : jail) EXPECT_EQ(OomScoreAdj(pid), "1000") << "pid " << pid;

  if (!HaveCapSysResource()) {
    // The one line that says why the agent is not protected, and the session ran anyway.
    EXPECT_THAT(daemon.Log(), HasSubstr("oom_score_adj to -900 (needs CAP_SYS_RESOURCE)"));
    GTEST_SKIP() << kNoCapSysResource;
  }
  EXPECT_THAT(ProbeField(probe.out, "lower"), AnyOf("EACCES", "EPERM")) << probe.out;
  EXPECT_EQ(ProbeField(probe.out, "score_after"), "1000") << probe.out;
  // The jail child shares the agent's memory until it execs; the agent's own score must not follow it.
  EXPECT_EQ(OomScoreAdj(daemon.pid()), "-900");
}

}  // namespace
}  // namespace sbx::testing
