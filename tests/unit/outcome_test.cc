// DecideOutcome: the kernel's word (init's wait status, memory.events, pids.events, the agent's timers) wins
// over what sandbox-init reports.
#include "sandbox/outcome.h"

#include <signal.h>

#include <cerrno>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace sbx::sandbox {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

InitReport Report(uint32_t kind, int32_t value) {
  InitReport r;
  r.kind = kind;
  r.value = value;
  return r;
}

KernelFacts InitExited(int code) {
  KernelFacts k;
  k.init_wait_code = CLD_EXITED;
  k.init_wait_status = code;
  return k;
}

KernelFacts InitKilled(int sig) {
  KernelFacts k;
  k.init_wait_code = CLD_KILLED;
  k.init_wait_status = sig;
  return k;
}

TEST(DecideOutcomeTest, AReportThatAgreesWithInitsStatusIsUsed) {
  RunResult r = DecideOutcome(InitExited(3), Report(InitReport::kExited, 3), Limits{});
  EXPECT_EQ(r.status, RunStatus::kCompleted);
  EXPECT_EQ(r.reason, RunReason::kExited);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_THAT(r.warnings, IsEmpty());

  r = DecideOutcome(InitExited(128 + SIGTERM), Report(InitReport::kSignaled, SIGTERM), Limits{});
  EXPECT_EQ(r.reason, RunReason::kSignaled);
  EXPECT_EQ(r.signal, SIGTERM);
  EXPECT_EQ(r.exit_code, -1);

  r = DecideOutcome(InitExited(127), Report(InitReport::kExecFailed, ENOENT), Limits{});
  EXPECT_EQ(r.reason, RunReason::kSetupError);
  EXPECT_EQ(r.exec_errno, ENOENT);
}

// The attack of issue 11 item 1: a forged "exited 0" while init exits 128+SIGSYS.
TEST(DecideOutcomeTest, AForgedExitZeroLosesToInitsExitStatus) {
  RunResult r = DecideOutcome(InitExited(128 + SIGSYS), Report(InitReport::kExited, 0), Limits{});
  EXPECT_EQ(r.status, RunStatus::kFailed);
  EXPECT_EQ(r.reason, RunReason::kSeccompViolation);
  EXPECT_EQ(r.signal, SIGSYS);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_THAT(r.warnings[0], HasSubstr("disagrees"));
}

TEST(DecideOutcomeTest, AnOomKillIsAMemoryLimitWhateverTheReportSays) {
  KernelFacts k = InitExited(0);
  k.oom_kills = 1;
  Limits limits;
  limits.memory_max_bytes = 64 << 20;
  // "exited 0" (truthful: a child was OOM-killed; or forged: the same bytes), and no report at all.
  for (const std::optional<InitReport>& report :
       {std::optional<InitReport>(Report(InitReport::kExited, 0)), std::optional<InitReport>()}) {
    RunResult r = DecideOutcome(k, report, limits);
    EXPECT_EQ(r.status, RunStatus::kFailed);
    EXPECT_EQ(r.reason, RunReason::kMemoryLimit);
    EXPECT_THAT(r.message, HasSubstr("67108864"));
  }
  k = InitKilled(SIGKILL);
  k.oom_kills = 2;
  RunResult r = DecideOutcome(k, Report(InitReport::kExited, 0), limits);
  EXPECT_EQ(r.reason, RunReason::kMemoryLimit);
  EXPECT_EQ(r.signal, SIGKILL);
}

TEST(DecideOutcomeTest, APidsLimitHitEndsAsPidsLimitWhenThePolicySaysSo) {
  KernelFacts k = InitExited(0);
  k.pids_max_events = 1;
  Limits limits;
  limits.kill_on_pids_limit = true;
  EXPECT_EQ(DecideOutcome(k, Report(InitReport::kExited, 0), limits).reason, RunReason::kPidsLimit);
  // Without kill_on_pids_limit a refused fork is the workload's EAGAIN, not the end of the run.
  limits.kill_on_pids_limit = false;
  EXPECT_EQ(DecideOutcome(k, Report(InitReport::kExited, 0), limits).reason, RunReason::kExited);
}

TEST(DecideOutcomeTest, WithoutAReportInitsStatusIsReadWithInitsConvention) {
  RunResult r = DecideOutcome(InitExited(5), std::nullopt, Limits{});
  EXPECT_EQ(r.reason, RunReason::kExited);
  EXPECT_EQ(r.exit_code, 5);
  r = DecideOutcome(InitExited(128 + SIGSYS), std::nullopt, Limits{});
  EXPECT_EQ(r.reason, RunReason::kSeccompViolation);
  r = DecideOutcome(InitKilled(SIGKILL), std::nullopt, Limits{});
  EXPECT_EQ(r.reason, RunReason::kSignaled);
  EXPECT_EQ(r.signal, SIGKILL);
}

TEST(DecideOutcomeTest, AMalformedReportCountsAsNone) {
  InitReport bad = Report(InitReport::kExited, 0);
  bad.magic = 0;
  RunResult r = DecideOutcome(InitExited(128 + SIGSYS), bad, Limits{});
  EXPECT_EQ(r.reason, RunReason::kSeccompViolation);
  r = DecideOutcome(InitExited(7), Report(99, 0), Limits{});
  EXPECT_EQ(r.exit_code, 7);
  r = DecideOutcome(InitExited(0), Report(InitReport::kSignaled, 0), Limits{});
  EXPECT_EQ(r.reason, RunReason::kExited);
  EXPECT_EQ(r.signal, 0);
}

TEST(DecideOutcomeTest, InitKilledByASignalOverridesItsReport) {
  RunResult r = DecideOutcome(InitKilled(SIGKILL), Report(InitReport::kExited, 0), Limits{});
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_EQ(r.exit_code, -1);
  EXPECT_EQ(r.reason, RunReason::kSignaled);
}

TEST(DecideOutcomeTest, TheAgentsTimersComeFirst) {
  KernelFacts k = InitKilled(SIGKILL);
  k.timed_out = true;
  k.oom_kills = 1;
  k.canceled = true;
  Limits limits;
  limits.wall_time_limit_ms = 1500;
  RunResult r = DecideOutcome(k, std::nullopt, limits);
  EXPECT_EQ(r.reason, RunReason::kTimeLimit);
  EXPECT_THAT(r.message, HasSubstr("1500 ms"));
  k.timed_out = false;
  EXPECT_EQ(DecideOutcome(k, std::nullopt, limits).status, RunStatus::kCanceled);
}

TEST(DecideOutcomeTest, AReportWithoutLandlockSaysTheWorkloadWasNotSeparated) {
  InitReport r = Report(InitReport::kExited, 0);
  r.flags = InitReport::kNotSeparated;
  RunResult result = DecideOutcome(InitExited(0), r, Limits{});
  ASSERT_EQ(result.warnings.size(), 1u);
  EXPECT_THAT(result.warnings[0], HasSubstr("NOT separated"));
}

}  // namespace
}  // namespace sbx::sandbox

// audit_denials: the supervisor carries out a KILL rule with SIGKILL and knows the syscall; the outcome names
// it. A SIGKILL without a supervisor kill stays a plain signal.
namespace sbx::sandbox {
namespace {
TEST(DecideOutcomeTest, ASupervisorKillIsASeccompViolationNamingTheSyscall) {
  KernelFacts k = InitExited(128 + SIGKILL);
  k.seccomp_killed_syscall = "ptrace";
  RunResult r = DecideOutcome(k, Report(InitReport::kSignaled, SIGKILL), Limits{});
  EXPECT_EQ(r.status, RunStatus::kFailed);
  EXPECT_EQ(r.reason, RunReason::kSeccompViolation);
  EXPECT_EQ(r.signal, SIGKILL);
  EXPECT_EQ(r.message, "killed by the seccomp policy: syscall ptrace");
  EXPECT_EQ(ExitStatusFor(r), 128 + SIGSYS) << "`run` exits as for the kernel's own seccomp kill";
  // init itself killed for it.
  KernelFacts init_killed = InitKilled(SIGKILL);
  init_killed.seccomp_killed_syscall = "bpf";
  EXPECT_EQ(DecideOutcome(init_killed, std::nullopt, Limits{}).message, "killed by the seccomp policy: syscall bpf");
  // A workload that exits on its own after a child of it was killed completed.
  EXPECT_EQ(DecideOutcome(InitExited(0), Report(InitReport::kExited, 0), Limits{}).reason, RunReason::kExited);
  KernelFacts exited = InitExited(0);
  exited.seccomp_killed_syscall = "ptrace";
  EXPECT_EQ(DecideOutcome(exited, Report(InitReport::kExited, 0), Limits{}).reason, RunReason::kExited);
}
}  // namespace
}  // namespace sbx::sandbox
