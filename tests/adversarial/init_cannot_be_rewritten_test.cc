// Guarantee: the workload of a one-shot jail (`sandbox-agent run`) cannot take over PID 1 to rewrite the
// outcome. sandbox-init runs as the workload's uid, so only its non-dumpable state and the workload's Landlock
// domain stand between them; and whatever init says, the kernel's word (memory.events, init's own exit
// status) decides the outcome.
#include <signal.h>
#include <unistd.h>

#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

using ::testing::AnyOf;

AgentRun RunProbe(std::vector<std::string> args, std::vector<std::string> flags = {}) {
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.flags = {"--ro-bind", std::string(SBX_ADV_PROBE_DIR) + "/patch_init_mem:/patch_init_mem"};
  inv.flags.insert(inv.flags.end(), flags.begin(), flags.end());
  inv.command = {"/patch_init_mem"};
  inv.command.insert(inv.command.end(), args.begin(), args.end());
  return RunAgent(inv);
}

class InitCannotBeRewrittenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "jails are built as root here (CI runs as root); this is uid " << geteuid();
  }
};

// The attack of issue 11 item 1: open /proc/1/mem read-write and patch init, or write a forged report on
// init's fd 3, then die of SIGSYS hoping the outcome reads "completed, exited 0".
TEST_F(InitCannotBeRewrittenTest, TheWorkloadCanNeitherPatchInitNorForgeItsReport) {
  AgentRun run = RunProbe({"attack"});
  EXPECT_THAT(Field(run.out, "mem_open"), AnyOf("EACCES", "EPERM")) << run.out << run.err;
  EXPECT_EQ(Field(run.out, "mem_patch"), "<missing>") << "init's memory was writable";
  EXPECT_THAT(Field(run.out, "report_open"), AnyOf("EACCES", "EPERM")) << run.out;
  EXPECT_EQ(Field(run.out, "report_forge"), "<missing>") << "init's report channel was writable";
  EXPECT_THAT(Field(run.out, "environ_open"), AnyOf("EACCES", "EPERM")) << run.out;
  // The SIGSYS death stands.
  EXPECT_EQ(run.outcome["status"], "failed") << run.outcome.dump() << run.err;
  EXPECT_EQ(run.outcome["reason"], "seccomp_violation") << run.outcome.dump();
  EXPECT_EQ(run.exit_code, 128 + SIGSYS);
}

// The kernel wins: a child of the workload is OOM-killed while the workload itself exits 0, so init reports
// "exited 0" truthfully; memory.events says oom_kill, and that decides.
TEST_F(InitCannotBeRewrittenTest, AnOomKillIsAMemoryLimitWhateverInitReports) {
  AgentRun run = RunProbe({"oom-child"}, {"--memory-limit", "32M", "--time-limit", "60"});
  EXPECT_EQ(Field(run.out, "child"), strsignal(SIGKILL)) << run.out << run.err;
  EXPECT_EQ(run.outcome["status"], "failed") << run.outcome.dump() << run.err;
  EXPECT_EQ(run.outcome["reason"], "memory_limit") << run.outcome.dump();
}

}  // namespace
}  // namespace sbx::testing
