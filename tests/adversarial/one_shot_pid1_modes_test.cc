// Both one-shot PID 1s run the same code (wire/one_shot_init.h): the agent's jail child staying PID 1
// (JailOptions::in_process_init, what `sandbox-agent run` uses) and the exec'd sandbox-init, its fallback.
// Whichever runs, Jail::Start and Jail::Wait see the same outcome: the command's exit code, the signal that
// ended it, the errno of a command that could not be executed, and the memory limit from the kernel.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "sandbox/cgroup/cgroup.h"
#include "sandbox/jail.h"
#include "sandbox/policy/policy_loader.h"

namespace sbx::sandbox {
namespace {

class OneShotPid1ModesTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "jails are built as root here (CI runs as root); this is uid " << geteuid();
  }

  RunResult Run(std::vector<std::string> argv) {
    absl::StatusOr<Policy> policy = DefaultFilePolicy();
    EXPECT_TRUE(policy.ok()) << policy.status();
    absl::StatusOr<CgroupLayout> layout = PrepareCgroupLayout();
    EXPECT_TRUE(layout.ok()) << layout.status();
    if (!policy.ok() || !layout.ok()) return RunResult{};
    JailOptions options;
    options.argv = std::move(argv);
    options.init_path = SBX_INIT_BIN;
    options.in_process_init = GetParam();
    options.cgroups = &*layout;
    options.name = "pid1modes-" + std::to_string(getpid()) + "-" + std::to_string(counter_++);
    options.host_environ = environ;
    absl::StatusOr<std::unique_ptr<Jail>> jail = Jail::Start(*policy, options);
    EXPECT_TRUE(jail.ok()) << jail.status();
    if (!jail.ok()) return RunResult{};
    return (*jail)->Wait();
  }

  int counter_ = 0;
};

TEST_P(OneShotPid1ModesTest, TheOutcomeIsTheSame) {
  RunResult exited = Run({"sh", "-c", "exit 3"});
  EXPECT_EQ(exited.status, RunStatus::kCompleted) << exited.message;
  EXPECT_EQ(exited.exit_code, 3);

  RunResult signaled = Run({"sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(signaled.signal, SIGTERM) << signaled.message;

  RunResult missing = Run({"no-such-command-anywhere"});
  EXPECT_EQ(missing.exec_errno, ENOENT) << missing.message;
  EXPECT_EQ(ExitStatusFor(missing), 127);

  // The child found on the jail's PATH, with the policy's environment (not the agent's).
  setenv("SBX_PID1_MODES_SECRET", "host-only", 1);
  RunResult env = Run({"sh", "-c", "test -z \"$SBX_PID1_MODES_SECRET\" && command -v true >/dev/null"});
  EXPECT_EQ(env.exit_code, 0) << env.message;
}

INSTANTIATE_TEST_SUITE_P(Modes, OneShotPid1ModesTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("InProcess") : std::string("SandboxInit");
                         });

}  // namespace
}  // namespace sbx::sandbox
