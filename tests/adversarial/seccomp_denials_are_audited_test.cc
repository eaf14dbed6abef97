// Guarantee: every seccomp denial is an audit event naming the syscall and the tool call that was running
// (the agent's supervisor answers the filter's user notifications), a workload looping on a denied call
// floods neither the event log nor the agent's memory (a per-session rate limit, then one
// seccomp_suppressed event with the count), and a KILL rule's kill names its syscall in the audit and in
// the outcome, in a daemon session and in a one-shot run.
#include <errno.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/adversarial.h"
#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;

// The built-in file policy with ptrace moved from the EPERM rule to a KILL rule of its own.
std::string FilePolicyWithPtraceKill() {
  std::ifstream in(std::string(SBX_POLICY_DIR) + "/file.textproto");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string policy = ss.str();
  const std::string from = "syscalls: [\"ptrace\", \"process_vm_readv\", \"process_vm_writev\"]";
  const size_t at = policy.find(from);
  if (at == std::string::npos) return "";
  policy.replace(at, from.size(), "syscalls: [\"process_vm_readv\", \"process_vm_writev\"]");
  const std::string seccomp = "seccomp {\n  default_action: ALLOW\n";
  const size_t s = policy.find(seccomp);
  if (s == std::string::npos) return "";
  policy.insert(s + seccomp.size(), "  rules { syscalls: \"ptrace\" action: KILL }\n");
  return policy;
}

class SeccompAuditDaemonTest : public AdvFileDaemonTest {
 protected:
  std::vector<pb::Audit> Audits() {
    return SessionAudits(stub_.get(), id_);
  }
  // Waits up to 10 s for an audit with `action` and `syscall`.
  std::vector<pb::Audit> WaitForAudit(const std::string& action, const std::string& syscall) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    std::vector<pb::Audit> audits;
    while (std::chrono::steady_clock::now() < deadline) {
      audits = Audits();
      for (const pb::Audit& a : audits) {
        if (a.action() == action && a.syscall() == syscall) return audits;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return audits;
  }
  std::string id_;
};

TEST_F(SeccompAuditDaemonTest, EachDenialIsAnAuditNamingTheSyscallAndTheRunningCall) {
  id_ = Create();
  ASSERT_FALSE(id_.empty());
  const CallResult r = RunExec(stub_.get(), id_, {"/adv/seccomp_denied_calls", "all"});
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_TRUE(r.has_finished);
  // The calls still fail as the policy says.
  for (const char* name : {"unshare", "ptrace", "bpf", "keyctl"}) {
    EXPECT_THAT(r.out, HasSubstr(std::string(name) + " rc=-1 errno=1\n")) << r.out;
  }
  const std::string call_id = r.finished.call_id();
  const std::vector<pb::Audit> audits = WaitForAudit("seccomp_denied", "keyctl");
  // Exactly the probe's four: starting the session and the exec (sandbox-init, the dynamic loader) deny
  // nothing, so audits are signal, not noise.
  EXPECT_EQ(audits.size(), 4u);
  struct Want {
    const char* syscall;
    const char* args;
  };
  for (const Want& want : {Want{"unshare", "flags=CLONE_NEWUSER"}, Want{"ptrace", "request=PTRACE_TRACEME"},
                           Want{"bpf", "cmd=BPF_MAP_CREATE"}, Want{"keyctl", "op=KEYCTL_JOIN_SESSION_KEYRING"}}) {
    SCOPED_TRACE(want.syscall);
    const pb::Audit* found = nullptr;
    for (const pb::Audit& a : audits) {
      if (a.syscall() == want.syscall) found = &a;
    }
    ASSERT_NE(found, nullptr);
    EXPECT_EQ(found->action(), "seccomp_denied");
    EXPECT_EQ(found->call_id(), call_id);
    EXPECT_THAT(found->args(), HasSubstr(want.args));
    EXPECT_EQ(found->comm(), "seccomp_denied_");  // the kernel keeps 15 bytes of the name
    EXPECT_GT(found->pid(), 1);  // the jail's pid namespace: init is 1, the probe one of its children
    EXPECT_LT(found->pid(), 1000);
  }
}

// The listener that decides what a denied call does is the agent's alone: no process of the jail (init, the
// workload) holds it, the agent holds one per session.
TEST_F(SeccompAuditDaemonTest, NoProcessInTheJailHoldsTheListener) {
  id_ = Create();
  ASSERT_FALSE(id_.empty());
  const auto count_listeners = [](pid_t pid) {
    int n = 0;
    std::error_code ec;
    for (const auto& fd : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
      std::error_code lec;
      const std::filesystem::path target = std::filesystem::read_symlink(fd.path(), lec);
      if (!lec && target.string() == "anon_inode:seccomp notify") ++n;
    }
    return n;
  };
  // A workload that is running while the jail's processes are looked at from the host.
  grpc::ClientContext ctx;
  pb::CallRequest req;
  req.set_session_id(id_);
  req.mutable_call()->mutable_exec()->add_argv("/bin/sleep");
  req.mutable_call()->mutable_exec()->add_argv("5");
  auto stream = stub_->Call(&ctx);
  ASSERT_TRUE(stream->Write(req));
  std::vector<pid_t> pids;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (pids.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    pids.clear();
    for (const std::string& dir : SessionCgroups(id_)) {
      std::ifstream procs(dir + "/cgroup.procs");
      pid_t pid;
      while (procs >> pid) pids.push_back(pid);
      if (!pids.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(pids.size(), 2u) << "init and the sleep";
  for (pid_t pid : pids) EXPECT_EQ(count_listeners(pid), 0) << "pid " << pid;
  EXPECT_EQ(count_listeners(daemon_->pid()), 1);
  ctx.TryCancel();
}

TEST_F(SeccompAuditDaemonTest, AMillionDenialsFloodNeitherTheLogNorTheAgent) {
  id_ = Create();
  ASSERT_FALSE(id_.empty());
  // Warm up (the session's first exec allocates what every exec needs), then measure.
  const CallResult warm = RunExec(stub_.get(), id_, {"/adv/seccomp_denied_calls", "loop", "1000"});
  ASSERT_TRUE(warm.has_finished);
  const uint64_t rss_before = RssBytes();
  const auto loop_start = std::chrono::steady_clock::now();
  const CallResult r = RunExec(stub_.get(), id_, {"/adv/seccomp_denied_calls", "loop", "1000000"});
  const double loop_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_start).count();
  ASSERT_TRUE(r.has_finished) << r.status.error_message();
  EXPECT_THAT(r.out, HasSubstr("loop denied=1000000 other=0")) << r.out;
  const uint64_t rss_after = RssBytes();
  // Every denial answered, none kept: the agent grows by far less than a record per denial would cost.
  EXPECT_LT(rss_after, rss_before + (16u << 20)) << rss_before << " -> " << rss_after;

  // The session still answers tool calls.
  const CallResult echo = RunExec(stub_.get(), id_, {"/bin/echo", "alive"});
  ASSERT_TRUE(echo.has_finished);
  EXPECT_EQ(echo.out, "alive\n");

  // The summary follows once the bucket refills (20/s: within a second).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  uint64_t denied = 0, suppressed = 0, summaries = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    denied = suppressed = summaries = 0;
    for (const pb::Audit& a : Audits()) {
      if (a.action() == "seccomp_denied") ++denied;
      if (a.action() == "seccomp_suppressed") {
        ++summaries;
        suppressed += a.suppressed();
        // A summary counts denials of the calls that made them, not of the echo that may have started
        // before the bucket refilled.
        EXPECT_THAT(a.call_id(), ::testing::AnyOf(warm.finished.call_id(), r.finished.call_id()));
      }
    }
    if (denied + suppressed >= 1001000) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(denied + suppressed, 1001000u) << "every denial is either an event or counted in a summary";
  // 50 at once, then 20/s (each summary takes a token too): bounded by the time, not the number of calls.
  EXPECT_GE(denied, 50u);
  EXPECT_LE(denied + summaries, 100 + 20 * (loop_s + 5)) << loop_s << " s";
  EXPECT_GE(summaries, 1u);
}

TEST(SeccompAuditKillTest, DaemonKillRuleNamesTheSyscallInTheAuditAndTheOutcome) {
  if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
  const std::string dir =
      std::filesystem::temp_directory_path() / ("sbx-adv-seccomp-kill-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string policy = FilePolicyWithPtraceKill();
  ASSERT_FALSE(policy.empty()) << "file.textproto changed: the test cannot find the ptrace rule";
  std::ofstream(dir + "/file.textproto")
      << policy << "\nmounts { bind { src: \"" << SBX_ADV_PROBE_DIR << "\" dst: \"/adv\" } }\n";
  {
    Daemon::Options o;
    o.config_lines = {"policy_dir: \"" + dir + "\""};
    Daemon daemon(o);
    ASSERT_TRUE(daemon.ok()) << daemon.Log();
    auto stub = daemon.NewStub();
    pb::Session session;
    ASSERT_TRUE(CreateSession(stub.get(), pb::FILE, &session).ok());
    const CallResult r = RunExec(stub.get(), session.id(), {"/adv/seccomp_denied_calls", "ptrace"});
    ASSERT_TRUE(r.has_finished);
    EXPECT_THAT(r.out, ::testing::Not(HasSubstr("survived")));
    ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
    EXPECT_EQ(r.finished.result().exec().signal(), SIGKILL);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    const pb::Audit* killed = nullptr;
    std::vector<pb::Audit> audits;
    while (killed == nullptr && std::chrono::steady_clock::now() < deadline) {
      grpc::ClientContext ectx;
      pb::EventsRequest ereq;
      ereq.set_session_id(session.id());
      auto reader = stub->Events(&ectx, ereq);
      audits.clear();
      pb::Event e;
      while (reader->Read(&e)) {
        if (e.has_audit()) audits.push_back(e.audit());
      }
      for (const pb::Audit& a : audits) {
        if (a.action() == "seccomp_killed") killed = &a;
      }
      if (killed == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_NE(killed, nullptr);
    EXPECT_EQ(killed->syscall(), "ptrace");
    EXPECT_EQ(killed->call_id(), r.finished.call_id());
    EXPECT_THAT(killed->detail(), HasSubstr("killed by the seccomp policy: syscall ptrace"));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

TEST(SeccompAuditKillTest, OneShotRunKillRuleNamesTheSyscall) {
  if (geteuid() != 0) GTEST_SKIP() << "jails need root here (CI runs as root); uid " << geteuid();
  const std::string path = std::filesystem::temp_directory_path() /
                           ("sbx-adv-seccomp-kill-" + std::to_string(getpid()) + ".textproto");
  const std::string policy = FilePolicyWithPtraceKill();
  ASSERT_FALSE(policy.empty());
  std::ofstream(path) << policy;
  AgentInvocation inv;
  inv.flags = {"--policy", path, "--ro-bind", AdvProbe("seccomp_denied_calls") + ":/adv/seccomp_denied_calls"};
  inv.command = {"/adv/seccomp_denied_calls", "ptrace"};
  const AgentRun run = RunAgent(inv);
  std::filesystem::remove(path);
  EXPECT_THAT(run.out, ::testing::Not(HasSubstr("survived")));
  EXPECT_EQ(run.exit_code, 128 + SIGSYS) << run.err;
  ASSERT_FALSE(run.outcome.is_null()) << run.err;
  EXPECT_EQ(run.outcome["status"], "failed") << run.outcome.dump();
  EXPECT_EQ(run.outcome["reason"], "seccomp_violation") << run.outcome.dump();
  EXPECT_THAT(run.outcome.value("message", ""), HasSubstr("syscall ptrace")) << run.outcome.dump();
  ASSERT_TRUE(run.outcome.contains("seccomp_audits")) << run.outcome.dump();
  EXPECT_EQ(run.outcome["seccomp_audits"][0]["action"], "seccomp_killed");
  EXPECT_EQ(run.outcome["seccomp_audits"][0]["syscall"], "ptrace");
  EXPECT_THAT(run.err, HasSubstr("seccomp_killed: ptrace(request=PTRACE_TRACEME"));
}

TEST(SeccompAuditOneShotTest, DenialsAreStderrLinesAndOutcomeRecords) {
  if (geteuid() != 0) GTEST_SKIP() << "jails need root here (CI runs as root); uid " << geteuid();
  AgentInvocation inv;
  inv.flags = {"--policy", std::string(SBX_POLICY_DIR) + "/file.textproto", "--ro-bind",
               AdvProbe("seccomp_denied_calls") + ":/adv/seccomp_denied_calls"};
  inv.command = {"/adv/seccomp_denied_calls", "all"};
  const AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("unshare rc=-1 errno=1"));
  EXPECT_THAT(run.err, HasSubstr("seccomp_denied: unshare(flags=CLONE_NEWUSER)"));
  EXPECT_THAT(run.err, HasSubstr("seccomp_denied: keyctl(op=KEYCTL_JOIN_SESSION_KEYRING)"));
  ASSERT_TRUE(run.outcome.contains("seccomp_audits")) << run.outcome.dump();
  std::vector<std::string> syscalls;
  for (const auto& a : run.outcome["seccomp_audits"]) syscalls.push_back(a.value("syscall", ""));
  EXPECT_THAT(syscalls, ::testing::IsSupersetOf({"unshare", "ptrace", "bpf", "keyctl"}));
}

}  // namespace
}  // namespace sbx::testing
