// Guarantee: in a one-shot jail (`sandbox-agent run`) PID 1 is the agent's own jail child, which stayed
// behind as the reaper instead of exec'ing sandbox-init (JailOptions::in_process_init), and the workload,
// running as the same uid, can neither inspect it nor take anything from it: PID 1 made itself non-dumpable
// before the fork and the workload runs in its Landlock domain (wire/one_shot_init.h). A fork-style copy of
// the agent holds the agent's memory and, until PID 1 closes them, its fds: none of that may reach the
// workload. (init_cannot_be_rewritten_test covers /proc/1/mem writes and the report channel; this covers the
// other ways in, against the in-process PID 1.)
#include <unistd.h>

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

using ::testing::AnyOf;

AgentRun RunReachProbe() {
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.flags = {"--ro-bind", std::string(SBX_ADV_PROBE_DIR) + "/reach_pid1:/reach_pid1"};
  inv.command = {"/reach_pid1"};
  return RunAgent(inv);
}

class InProcessInitOutOfReachTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "jails are built as root here (CI runs as root); this is uid " << geteuid();
  }
};

// The probe's reaper is the agent's jail child, not an exec of sandbox-init: the attacks below target it.
TEST_F(InProcessInitOutOfReachTest, PidOneOfARunIsTheAgentsJailChild) {
  AgentRun run = RunReachProbe();
  ASSERT_EQ(run.outcome["status"], "completed") << run.outcome.dump() << run.err;
  EXPECT_EQ(Field(run.out, "ppid"), "1") << run.out;
  EXPECT_EQ(Field(run.out, "comm"), "sandbox-agent") << run.out;
}

// Not dumpable, which alone (without the Landlock domain) keeps a same-uid process out: the kernel then
// shows /proc/1/environ as owned by root of the namespace its memory was made in instead of PID 1's uid:
// the host's root for the in-process PID 1 (a copy of the agent), which the jail sees as the overflow uid.
TEST_F(InProcessInitOutOfReachTest, PidOneIsNotDumpable) {
  AgentRun run = RunReachProbe();
  ASSERT_EQ(run.outcome["status"], "completed") << run.outcome.dump() << run.err;
  ASSERT_NE(Field(run.out, "own_uid"), "0") << "the policy runs the workload as root: nothing to tell apart";
  EXPECT_NE(Field(run.out, "pid1_owner"), Field(run.out, "own_uid")) << run.out;
  EXPECT_THAT(Field(run.out, "pid1_owner"), AnyOf("0", "65534")) << run.out;
}

// ptrace and process_vm_readv are refused by the policies' seccomp filter already; /proc and pidfd_getfd
// by PID 1's state.
TEST_F(InProcessInitOutOfReachTest, TheWorkloadCannotInspectOrTraceIt) {
  AgentRun run = RunReachProbe();
  ASSERT_EQ(run.outcome["status"], "completed") << run.outcome.dump() << run.err;
  EXPECT_THAT(Field(run.out, "exe_readlink"), AnyOf("EACCES", "EPERM")) << run.out;
  EXPECT_THAT(Field(run.out, "mem_read"), AnyOf("EACCES", "EPERM")) << run.out;
  EXPECT_THAT(Field(run.out, "fd_dir"), AnyOf("EACCES", "EPERM")) << run.out;
  EXPECT_THAT(Field(run.out, "ptrace_attach"), AnyOf("EACCES", "EPERM")) << run.out;
  EXPECT_THAT(Field(run.out, "vm_read"), AnyOf("EACCES", "EPERM")) << run.out;
  // pidfd_open itself is allowed; taking PID 1's fd 3 (the report channel) is not.
  EXPECT_THAT(Field(run.out, "pidfd_getfd"), AnyOf("EACCES", "EPERM")) << run.out;
}

// The workload starts with stdio only: not PID 1's report channel, nor any fd of the agent it was copied from.
TEST_F(InProcessInitOutOfReachTest, TheWorkloadHoldsNoFdOfPidOne) {
  AgentRun run = RunReachProbe();
  ASSERT_EQ(run.outcome["status"], "completed") << run.outcome.dump() << run.err;
  EXPECT_EQ(Field(run.out, "own_fds"), "0") << run.out;
}

// /proc/PID/cmdline is readable by every process of the pid namespace, with no ptrace check and whatever
// the dumpable flag says: PID 1's would be the agent's own command line (host paths of binds, the policy
// file, every flag). PID 1 zeroes its copy of it, and of the environment block, before the workload starts.
TEST_F(InProcessInitOutOfReachTest, TheAgentsCommandLineIsNotReadableFromPidOne) {
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.flags = {"--env", "SBX_CMDLINE_MARKER=marker-in-the-agents-argv", "--cwd", "/tmp"};
  inv.command = {"/bin/sh", "-c", "tr '\\0' '\\n' < /proc/1/cmdline; echo end-of-cmdline"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.outcome["status"], "completed") << run.outcome.dump() << run.err;
  ASSERT_THAT(run.out, ::testing::HasSubstr("end-of-cmdline")) << run.err;
  EXPECT_THAT(run.out, ::testing::Not(::testing::HasSubstr("marker-in-the-agents-argv"))) << run.out;
  EXPECT_THAT(run.out, ::testing::Not(::testing::HasSubstr("sandbox-agent"))) << run.out;
  EXPECT_THAT(run.out, ::testing::Not(::testing::HasSubstr("--cwd"))) << run.out;
}

}  // namespace
}  // namespace sbx::testing
