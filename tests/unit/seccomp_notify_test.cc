// The seccomp supervisor's parts: argument decoding, comm escaping, the audit rate limiter, finding a
// notified call's rule again, the compile switch, and the supervisor itself against a forked child that
// loads a filter with a listener (no jail, no root: no_new_privs is enough).
#include "sandbox/seccomp_notify.h"

#include <errno.h>
#include <linux/keyctl.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "sandbox/seccomp_program.h"
#include "tests/common/fd_passing.h"

namespace sbx::sandbox {
namespace {

using ::testing::HasSubstr;
using ::sbx::testing::RecvFd;
using ::sbx::testing::SendFd;
using Clock = AuditRateLimiter::Clock;

TEST(DecodeSyscallArgsTest, NamesCloneAndUnshareFlags) {
  const uint64_t unshare_args[6] = {CLONE_NEWUSER | CLONE_NEWNS, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_unshare, unshare_args), "flags=CLONE_NEWNS|CLONE_NEWUSER");
  // clone's low byte is the exit signal, not CLONE_NEWTIME (0x80) or any flag.
  const uint64_t clone_args[6] = {CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_clone, clone_args), "flags=CLONE_NEWNET signal=17");
  const uint64_t newtime[6] = {0x80 | 0x100000000ull, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_unshare, newtime), "flags=CLONE_NEWTIME|0x100000000");
  const uint64_t none[6] = {0, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_unshare, none), "flags=0x0");
}

TEST(DecodeSyscallArgsTest, NamesRequestsFamiliesCommandsAndOps) {
  const uint64_t ioctl_args[6] = {3, 0xffffffff00005412ull, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_ioctl, ioctl_args), "fd=3 request=0x5412");
  const uint64_t socket_args[6] = {AF_NETLINK, SOCK_RAW, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_socket, socket_args), "family=AF_NETLINK type=3 protocol=0");
  const uint64_t bpf_args[6] = {5, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_bpf, bpf_args), "cmd=BPF_PROG_LOAD");
  const uint64_t bpf_unknown[6] = {999, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_bpf, bpf_unknown), "cmd=999");
  const uint64_t keyctl_args[6] = {KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_keyctl, keyctl_args), "op=KEYCTL_JOIN_SESSION_KEYRING");
  const uint64_t ptrace_args[6] = {16, 42, 0, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_ptrace, ptrace_args), "request=PTRACE_ATTACH pid=42");
  const uint64_t other[6] = {1, 0x10, 0xff, 0, 0, 0};
  EXPECT_EQ(DecodeSyscallArgs(__NR_mount, other), "0x1 0x10 0xff");
}

TEST(EscapeCommTest, EscapesWhatAWorkloadCouldUseToForgeALine) {
  EXPECT_EQ(EscapeComm("python3"), "python3");
  EXPECT_EQ(EscapeComm("a\nb\"c\\d\x7f\xff"), "a\\x0ab\\x22c\\x5cd\\x7f\\xff");
  EXPECT_EQ(EscapeComm(std::string(100, 'x')).size(), 64u);
}

TEST(AuditRateLimiterTest, BurstThenCountThenOneSummaryWhenItRefills) {
  const Clock::time_point t0 = Clock::now();
  AuditRateLimiter limiter(50, 20, t0);
  for (int i = 0; i < 50; ++i) {
    const auto a = limiter.Admit(t0);
    EXPECT_TRUE(a.record) << i;
    EXPECT_EQ(a.flush, 0u);
  }
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(limiter.Admit(t0).record);
  EXPECT_EQ(limiter.suppressed(), 1000u);
  EXPECT_EQ(limiter.Flush(t0 + std::chrono::milliseconds(10)), 0u) << "no token yet";
  // 50 ms at 20/s: one token, taken by the summary.
  EXPECT_EQ(limiter.Flush(t0 + std::chrono::milliseconds(60)), 1000u);
  EXPECT_EQ(limiter.suppressed(), 0u);
  // More denials: counted again; the next one with a token brings the summary along.
  EXPECT_FALSE(limiter.Admit(t0 + std::chrono::milliseconds(60)).record);
  const auto later = limiter.Admit(t0 + std::chrono::seconds(2));
  EXPECT_EQ(later.flush, 1u);
  EXPECT_TRUE(later.record);
}

TEST(AuditRateLimiterTest, RefillIsCappedAtTheBurst) {
  const Clock::time_point t0 = Clock::now();
  AuditRateLimiter limiter(5, 20, t0);
  int recorded = 0;
  for (int i = 0; i < 100; ++i) recorded += limiter.Admit(t0 + std::chrono::hours(1)).record ? 1 : 0;
  EXPECT_EQ(recorded, 5);
  EXPECT_EQ(limiter.TakeSuppressed(), 95u);
  EXPECT_EQ(limiter.TakeSuppressed(), 0u);
}

SeccompPolicy TestPolicy() {
  SeccompPolicy p;
  p.default_action = SeccompAction::kAllow;
  p.rules.push_back({"keyctl", SeccompAction::kErrno, EACCES, {}});
  p.rules.push_back({"ptrace", SeccompAction::kKill, 1, {}});
  SeccompRule tiocsti{"ioctl", SeccompAction::kErrno, EPERM, {}};
  tiocsti.args.push_back({1, SyscallArgCondition::Op::kMaskedEq, 0x5412, 0xffffffff});
  p.rules.push_back(tiocsti);
  SeccompRule ns_clone{"clone", SeccompAction::kErrno, EINVAL, {}};
  ns_clone.args.push_back({0, SyscallArgCondition::Op::kAnyBitsSet, 0x7e020080, 0});
  p.rules.push_back(ns_clone);
  SeccompRule personality{"personality", SeccompAction::kErrno, EPERM, {}};
  personality.args.push_back({0, SyscallArgCondition::Op::kNe, 0, 0});
  personality.args.push_back({0, SyscallArgCondition::Op::kNe, 8, 0});
  p.rules.push_back(personality);
  return p;
}

TEST(SeccompDenyTableTest, FindsTheRuleAgainFromTheArguments) {
  absl::StatusOr<SeccompDenyTable> table = SeccompDenyTable::Build(TestPolicy());
  ASSERT_TRUE(table.ok()) << table.status();
  const uint64_t none[6] = {};
  SeccompDecision d = table->Decide(__NR_keyctl, none);
  EXPECT_EQ(d.action, SeccompAction::kErrno);
  EXPECT_EQ(d.errno_value, EACCES);
  EXPECT_EQ(d.rule, 0);
  EXPECT_EQ(table->Decide(__NR_ptrace, none).action, SeccompAction::kKill);
  const uint64_t tiocsti[6] = {0, 0xabcd00005412ull};
  EXPECT_EQ(table->Decide(__NR_ioctl, tiocsti).rule, 2);
  const uint64_t ns_clone[6] = {CLONE_NEWUSER | SIGCHLD};
  EXPECT_EQ(table->Decide(__NR_clone, ns_clone).errno_value, EINVAL);
  const uint64_t aslr_off[6] = {0x40000};
  EXPECT_EQ(table->Decide(__NR_personality, aslr_off).rule, 4);
  // Arguments no deny rule matches under an ALLOW default (the filter would not have asked): refused, EPERM.
  const uint64_t per_linux[6] = {8};
  EXPECT_EQ(table->Decide(__NR_personality, per_linux).rule, -1);
  EXPECT_EQ(table->Decide(__NR_personality, per_linux).errno_value, EPERM);
}

TEST(SeccompDenyTableTest, TheDefaultDenialWhenNoRuleMatches) {
  SeccompPolicy p;
  p.default_action = SeccompAction::kErrno;
  p.default_errno = ENOSYS;
  p.rules.push_back({"read", SeccompAction::kAllow, 1, {}});
  p.rules.push_back({"ptrace", SeccompAction::kKill, 1, {}});
  absl::StatusOr<SeccompDenyTable> table = SeccompDenyTable::Build(p);
  ASSERT_TRUE(table.ok());
  const uint64_t none[6] = {};
  EXPECT_EQ(table->Decide(__NR_mount, none).errno_value, ENOSYS);
  EXPECT_EQ(table->Decide(__NR_mount, none).rule, -1);
  EXPECT_EQ(table->Decide(__NR_ptrace, none).action, SeccompAction::kKill);
  // Two denials with other errnos share "notify" in the filter: the compile still succeeds.
  p.rules.push_back({"mount", SeccompAction::kErrno, EACCES, {}});
  absl::StatusOr<SeccompProgram> program = CompileSeccomp(p);
  ASSERT_TRUE(program.ok()) << program.status();
  EXPECT_TRUE(program->user_notif);
}

TEST(CompileSeccompTest, AuditDenialsSwitchesUserNotification) {
  SeccompPolicy p = TestPolicy();
  absl::StatusOr<SeccompProgram> on = CompileSeccomp(p);
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_TRUE(on->user_notif);
  p.audit_denials = false;
  absl::StatusOr<SeccompProgram> off = CompileSeccomp(p);
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_FALSE(off->user_notif);
  // A policy that only allows needs no supervisor.
  SeccompPolicy allow_only;
  absl::StatusOr<SeccompProgram> none = CompileSeccomp(allow_only);
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->user_notif);
}

bool SameInstructions(const SeccompProgram& a, const SeccompProgram& b) {
  return a.instructions.size() == b.instructions.size() &&
         memcmp(a.instructions.data(), b.instructions.data(), a.instructions.size() * sizeof(sock_filter)) == 0;
}

// A daemon compiles a policy once: the second session of the same policy gets the first one's program.
TEST(CompileSeccompCachedTest, SamePolicySharesOneCompiledProgram) {
  SeccompPolicy p = TestPolicy();
  absl::StatusOr<std::shared_ptr<const SeccompProgram>> first = CompileSeccompCached(p);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::shared_ptr<const SeccompProgram>> again = CompileSeccompCached(SeccompPolicy(p));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(first->get(), again->get());
  absl::StatusOr<SeccompProgram> direct = CompileSeccomp(p);
  ASSERT_TRUE(direct.ok());
  EXPECT_TRUE(SameInstructions(**first, *direct));
  EXPECT_EQ((*first)->user_notif, direct->user_notif);
  EXPECT_EQ(SeccompUsesUserNotif(p), direct->user_notif);

  // Any difference in content is another program: an errno, an argument condition's value.
  SeccompPolicy other_errno = p;
  other_errno.audit_denials = false;
  other_errno.rules.push_back({"mount", SeccompAction::kErrno, EACCES, {}});
  absl::StatusOr<std::shared_ptr<const SeccompProgram>> a = CompileSeccompCached(other_errno);
  other_errno.rules.back().errno_value = EPERM;
  absl::StatusOr<std::shared_ptr<const SeccompProgram>> b = CompileSeccompCached(other_errno);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->get(), b->get());
  EXPECT_FALSE(SameInstructions(**a, **b));
  EXPECT_FALSE(SeccompUsesUserNotif(other_errno));

  // A policy that does not compile is an error every time, never a cached program.
  SeccompPolicy bad = p;
  bad.rules.push_back({"mountt", SeccompAction::kErrno, EPERM, {}});
  EXPECT_EQ(CompileSeccompCached(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CompileSeccompCached(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// A forked child loads the test policy's filter with a listener and hands it over, then makes denied calls.
// `calls`: 'k' keyctl (errno rule), 'p' ptrace (kill rule). The child exits with keyctl's errno.
TEST(SeccompSupervisorTest, AnswersWithTheRulesErrnoAndKillsForAKillRule) {
  absl::StatusOr<SeccompProgram> program = CompileSeccomp(TestPolicy());
  ASSERT_TRUE(program.ok()) << program.status();
  absl::StatusOr<SeccompDenyTable> table = SeccompDenyTable::Build(TestPolicy());
  ASSERT_TRUE(table.ok());
  sock_fprog prog{static_cast<unsigned short>(program->instructions.size()), program->instructions.data()};
  for (const bool kill : {false, true}) {
    SCOPED_TRACE(kill ? "ptrace" : "keyctl");
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(100);
      const long listener = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
      if (listener < 0) _exit(101);
      // sendmsg and close are plain syscalls here (allowed by the policy): the parent is not waiting on us.
      if (SendFd(sv[1], static_cast<int>(listener)) != 0) _exit(102);
      close(static_cast<int>(listener));
      if (kill) {
        syscall(SYS_ptrace, 0, 0, 0, 0);
        _exit(103);  // not reached: the supervisor kills the process
      }
      const long rc = syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0);
      _exit(rc < 0 ? errno : 0);
    }
    close(sv[1]);
    UniqueFd listener(RecvFd(sv[0]));
    close(sv[0]);
    ASSERT_TRUE(listener.valid());
    std::mutex mu;
    std::vector<SeccompAudit> records;
    absl::StatusOr<std::unique_ptr<SeccompSupervisor>> supervisor =
        SeccompSupervisor::Start(std::move(listener), *table, [&](const SeccompAudit& a) {
          std::lock_guard lock(mu);
          records.push_back(a);
        });
    ASSERT_TRUE(supervisor.ok()) << supervisor.status();
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    if (kill) {
      ASSERT_TRUE(WIFSIGNALED(status)) << status;
      EXPECT_EQ(WTERMSIG(status), SIGKILL);
      EXPECT_EQ((*supervisor)->last_killed_syscall(), "ptrace");
    } else {
      ASSERT_TRUE(WIFEXITED(status)) << status;
      EXPECT_EQ(WEXITSTATUS(status), EACCES);
    }
    supervisor->reset();
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].kind, kill ? SeccompAudit::Kind::kKilled : SeccompAudit::Kind::kDenied);
    EXPECT_EQ(records[0].syscall, kill ? "ptrace" : "keyctl");
    EXPECT_EQ(records[0].host_pid, pid);
    EXPECT_EQ(records[0].pid, pid);  // the same pid namespace here
    EXPECT_THAT(records[0].args, HasSubstr(kill ? "PTRACE_TRACEME" : "KEYCTL_JOIN_SESSION_KEYRING"));
    if (!kill) {
      EXPECT_EQ(records[0].errno_value, EACCES);
    }
  }
}

// Forks a child that loads the test policy's filter with a listener, hands the listener over, makes `n`
// keyctl calls and exits with the number that failed with `want_errno`. Returns the child's pid and the
// listener.
pid_t ForkDenier(int n, int want_errno, UniqueFd* listener) {
  static absl::StatusOr<SeccompProgram> program = CompileSeccomp(TestPolicy());
  if (!program.ok()) return -1;
  static sock_fprog prog{static_cast<unsigned short>(program->instructions.size()), program->instructions.data()};
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(255);
    const long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    if (fd < 0 || SendFd(sv[1], static_cast<int>(fd)) != 0) _exit(255);
    close(static_cast<int>(fd));
    int matched = 0;
    for (int i = 0; i < n; ++i) {
      if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0) < 0 && errno == want_errno) ++matched;
    }
    _exit(matched);
  }
  close(sv[1]);
  listener->Reset(RecvFd(sv[0]));
  close(sv[0]);
  return pid;
}

int ExitCode(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

// The header's NOTE: with nobody holding the listener, the kernel answers ENOSYS and the call does not run.
TEST(SeccompSupervisorTest, WithoutASupervisorTheKernelAnswersEnosys) {
  UniqueFd listener;
  const pid_t pid = ForkDenier(3, ENOSYS, &listener);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(listener.valid());
  listener.Reset();
  EXPECT_EQ(ExitCode(pid), 3);
}

// Past the burst, denials are answered (with the rule's errno) but only counted; the count goes out as one
// kSuppressed record at the latest when the supervisor stops.
TEST(SeccompSupervisorTest, PastTheBurstDenialsAreCountedAndSummarized) {
  UniqueFd listener;
  const pid_t pid = ForkDenier(100, EACCES, &listener);
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(listener.valid());
  std::mutex mu;
  std::vector<SeccompAudit> records;
  absl::StatusOr<SeccompDenyTable> table = SeccompDenyTable::Build(TestPolicy());
  ASSERT_TRUE(table.ok());
  SeccompSupervisor::Options options;
  options.audit_burst = 5;
  options.audits_per_second = 0.001;  // no refill within the test
  absl::StatusOr<std::unique_ptr<SeccompSupervisor>> supervisor = SeccompSupervisor::Start(
      std::move(listener), *table,
      [&](const SeccompAudit& a) {
        std::lock_guard lock(mu);
        records.push_back(a);
      },
      options);
  ASSERT_TRUE(supervisor.ok());
  EXPECT_EQ(ExitCode(pid), 100) << "every call was answered with the rule's errno";
  EXPECT_EQ((*supervisor)->denials(), 100u);
  supervisor->reset();
  ASSERT_EQ(records.size(), 6u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(records[i].kind, SeccompAudit::Kind::kDenied);
  EXPECT_EQ(records[5].kind, SeccompAudit::Kind::kSuppressed);
  EXPECT_EQ(records[5].suppressed, 95u);
}

}  // namespace
}  // namespace sbx::sandbox
