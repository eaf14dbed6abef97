// Real jails, through the real `sandbox-agent run` binary. Each test proves one property from inside the jail
// (with the probe helper from tests/testcases) or from the host looking in.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

std::string StatusLine(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) {
      std::string v = line.substr(key.size() + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  }
  return "<missing>";
}

AgentRun Probe(std::vector<std::string> args, std::vector<std::string> flags = {}) {
  AgentInvocation inv;
  inv.flags = std::move(flags);
  inv.command = {"/probe"};
  inv.command.insert(inv.command.end(), args.begin(), args.end());
  return RunAgent(inv);
}

class JailTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "these tests build jails as root (CI runs as root); this process is uid " << geteuid();
    // Tests here count the jail-uid processes on the host: wait until those of an earlier test (a killed
    // daemon's sessions, torn down by the kernel after their agent is gone) have left.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!JailUidProcesses().empty() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(JailUidProcesses().empty()) << "jail-uid processes of an earlier test are still on the host";
  }
};

// --- Isolation -------------------------------------------------------------------------------------------

TEST_F(JailTest, OnlyTheJailsProcessesAreVisible) {
  AgentRun run = Probe({"pids"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  // sandbox-init is 1 and the probe is 2: nothing of the host.
  EXPECT_EQ(Field(run.out, "pids"), "1,2");
  EXPECT_EQ(Field(run.out, "self"), "2");
}

TEST_F(JailTest, NoNetworkButLoopback) {
  AgentRun run = Probe({"net"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "interfaces"), "lo");
  EXPECT_EQ(Field(run.out, "loopback"), "OK");
  EXPECT_EQ(Field(run.out, "external"), "ENETUNREACH");
}

TEST_F(JailTest, HostFilesOutsideTheBindsAreAbsent) {
  char dir[] = "/tmp/sbx-host-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::ofstream(std::string(dir) + "/secret") << "host secret";
  AgentRun run = Probe({"exists", "/etc/shadow", "/root", "/home", "/work", "/var", dir, "/usr/bin/env",
                        "/etc/passwd"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("exists /etc/shadow=no"));
  EXPECT_THAT(run.out, HasSubstr("exists /root=no"));
  EXPECT_THAT(run.out, HasSubstr("exists /home=no"));
  EXPECT_THAT(run.out, HasSubstr("exists /work=no"));
  EXPECT_THAT(run.out, HasSubstr("exists /var=no"));
  EXPECT_THAT(run.out, HasSubstr(std::string("exists ") + dir + "=no"));
  EXPECT_THAT(run.out, HasSubstr("exists /usr/bin/env=yes"));
  // /etc/passwd is the policy's own, not the host's.
  AgentInvocation cat;
  cat.command = {"cat", "/etc/passwd"};
  AgentRun passwd = RunAgent(cat);
  EXPECT_THAT(passwd.out, HasSubstr("sandbox"));
  EXPECT_THAT(passwd.out, Not(HasSubstr("daemon:")));
  std::remove((std::string(dir) + "/secret").c_str());
  rmdir(dir);
}

TEST_F(JailTest, ReadOnlyBindsAreReadOnlyAndReadWriteBindsWrite) {
  char ro[] = "/tmp/sbx-ro-XXXXXX";
  char rw[] = "/tmp/sbx-rw-XXXXXX";
  ASSERT_NE(mkdtemp(ro), nullptr);
  ASSERT_NE(mkdtemp(rw), nullptr);
  chmod(ro, 0777);
  chmod(rw, 0777);
  AgentRun run = Probe({"write", "/usr/bin/sbx-test", "/data/ro/file", "/data/rw/file", "/tmp/ok", "/newfile"},
                       {"--ro-bind", std::string(ro) + ":/data/ro", "--rw-bind", std::string(rw) + ":/data/rw"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("write /usr/bin/sbx-test=EROFS"));
  EXPECT_THAT(run.out, HasSubstr("write /data/ro/file=EROFS"));
  EXPECT_THAT(run.out, HasSubstr("write /data/rw/file=OK"));
  EXPECT_THAT(run.out, HasSubstr("write /tmp/ok=OK"));
  EXPECT_THAT(run.out, HasSubstr("write /newfile=EROFS"));  // the root itself is read-only
  struct stat st;
  EXPECT_EQ(stat((std::string(rw) + "/file").c_str(), &st), 0) << "the rw bind's write reached the host";
  EXPECT_NE(stat((std::string(ro) + "/file").c_str(), &st), 0);
  std::remove((std::string(rw) + "/file").c_str());
  rmdir(ro);
  rmdir(rw);
}

TEST_F(JailTest, ProcSysAndSysAreNotWritable) {
  AgentRun run = Probe({"write", "/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/sys/kernel/x"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(Field(run.out, "write /proc/sys/kernel/hostname"), ::testing::AnyOf("EROFS", "EACCES"));
  if (access("/proc/sysrq-trigger", F_OK) == 0) {
    EXPECT_THAT(Field(run.out, "write /proc/sysrq-trigger"), ::testing::AnyOf("EROFS", "EACCES"));
  } else {
    EXPECT_EQ(Field(run.out, "write /proc/sysrq-trigger"), "ENOENT") << "this kernel has no sysrq-trigger";
  }
  EXPECT_THAT(Field(run.out, "write /sys/kernel/x"), ::testing::AnyOf("ENOENT", "EROFS"));
}

TEST_F(JailTest, NoCapabilitiesNoNewPrivsSeccompOnAndUnprivilegedIds) {
  AgentRun run = Probe({"status"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(StatusLine(run.out, "CapEff"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "CapPrm"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "CapBnd"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "CapAmb"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "NoNewPrivs"), "1");
  EXPECT_EQ(StatusLine(run.out, "Seccomp"), "2");
  EXPECT_EQ(Field(run.out, "uid"), "1000");
  EXPECT_EQ(Field(run.out, "gid"), "1000");
}

// Looks at the jail from the host: init and the workload run under a host uid from the jail range, never 0.
TEST_F(JailTest, HostSeesAnUnprivilegedUidRange) {
  AgentInvocation inv;
  inv.command = {"/probe", "sleep", "3"};
  int out_fd;
  std::string outcome;
  pid_t agent = StartAgent(inv, &out_fd, &outcome);
  std::vector<pid_t> inside;
  for (int i = 0; i < 200 && inside.size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    inside = JailUidProcesses();
  }
  ASSERT_GE(inside.size(), 2u) << "expected init and the probe under jail uids";
  for (pid_t pid : inside) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line, uid_line;
    while (std::getline(f, line)) {
      if (line.rfind("Uid:", 0) == 0) uid_line = line;
    }
    unsigned long real = 0, eff = 0, saved = 0, fs = 0;
    sscanf(uid_line.c_str(), "Uid: %lu %lu %lu %lu", &real, &eff, &saved, &fs);
    EXPECT_GE(real, 1ul << 30);
    EXPECT_EQ(real, eff);
    EXPECT_EQ(real, saved);
    EXPECT_NE(real, 0ul);
  }
  AgentRun run = WaitAgent(agent, out_fd, outcome);
  EXPECT_EQ(run.exit_code, 0) << run.err;
}

TEST_F(JailTest, NoFdBeyondStdioIsOpen) {
  // The agent is given an extra open fd; it must not reach the jail.
  AgentInvocation inv;
  inv.command = {"/probe", "fds"};
  inv.prefix = {"bash", "-c", "exec 7</etc/hostname; exec \"$@\"", "bash"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "fds"), "0,1,2");
}

TEST_F(JailTest, HostEnvironmentDoesNotLeak) {
  AgentInvocation inv;
  inv.command = {"/probe", "env"};
  inv.env = {"PATH=/usr/bin:/bin", "SBX_HOST_SECRET=hunter2", "TERM=xterm-test"};
  inv.flags = {"--env", "GREETING=hello"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, Not(HasSubstr("hunter2")));
  EXPECT_THAT(run.out, HasSubstr("env:GREETING=hello"));
  EXPECT_THAT(run.out, HasSubstr("env:TERM=xterm-test"));  // on the policy's passthrough list
  EXPECT_THAT(run.out, HasSubstr("env:HOME=/workspace"));
}

TEST_F(JailTest, DeviceNodesWork) {
  AgentInvocation inv;
  inv.command = {"sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 8 /dev/urandom | wc -c"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "4\n8\n");
}

TEST_F(JailTest, HostnameIsTheJails) {
  AgentRun run = Probe({"hostname"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "hostname"), "sandbox");
}

// --- Seccomp ---------------------------------------------------------------------------------------------

TEST_F(JailTest, EveryDeniedSyscallFailsWithEperm) {
  AgentRun run = Probe({"syscalls"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  std::istringstream in(run.out);
  std::string line;
  int checked = 0;
  while (std::getline(in, line)) {
    if (line.rfind("syscall ", 0) != 0) continue;
    const std::string name = line.substr(8, line.find('=') - 8);
    const std::string result = line.substr(line.find('=') + 1);
    ++checked;
    if (name == "clone3") {
      EXPECT_EQ(result, "ENOSYS") << line;
    } else if (name == "fork") {
      EXPECT_EQ(result, "OK") << "a plain fork must still work";
    } else {
      EXPECT_EQ(result, "EPERM") << line;
    }
  }
  EXPECT_GE(checked, 40);
}

TEST_F(JailTest, TiocstiInjectionFails) {
  AgentRun run = Probe({"tiocsti"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "openpty"), "OK") << "devpts inside the jail works";
  EXPECT_EQ(Field(run.out, "tiocsti_pty"), "EPERM");
  EXPECT_EQ(Field(run.out, "tiocsti_stdin"), "EPERM");
}

// Whether this kernel runs i386 system calls through `int 0x80` at all: a kernel built without IA-32
// emulation, or booted with ia32_emulation=false, answers the instruction with SIGSEGV before seccomp sees a
// call. Asked of a forked child on the host, outside any filter.
bool KernelRunsInt80() {
  const pid_t pid = fork();
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);  // a sanitizer's handler would turn the kernel's answer into an exit
    long ret;
    asm volatile("int $0x80" : "=a"(ret) : "a"(20 /* i386 getpid */) : "memory");
    _exit(ret > 0 ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return !(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV);
}

TEST_F(JailTest, ForeignAbisAreKilledAndReportedAsSeccompViolation) {
  for (const char* abi : {"i386", "x32"}) {
    AgentRun run = Probe({abi});
    if (std::string(abi) == "i386" && !KernelRunsInt80()) {
      // No IA-32 emulation: the call never reaches seccomp (or any system call table); the process dies of
      // SIGSEGV, which holds the boundary just as well. It must still not have returned.
      EXPECT_EQ(run.exit_code, 128 + SIGSEGV) << abi << ": " << run.out << run.err;
      EXPECT_THAT(run.out, Not(HasSubstr("returned"))) << abi;
      EXPECT_EQ(run.outcome["signal"], SIGSEGV) << abi;
      continue;
    }
    EXPECT_EQ(run.exit_code, 128 + SIGSYS) << abi << ": " << run.out << run.err;
    EXPECT_THAT(run.out, Not(HasSubstr("returned"))) << abi;
    EXPECT_EQ(run.outcome["status"], "failed") << abi;
    EXPECT_EQ(run.outcome["reason"], "seccomp_violation") << abi;
    EXPECT_EQ(run.outcome["signal"], SIGSYS) << abi;
  }
}

TEST_F(JailTest, PolicyKillRuleReportsSeccompViolation) {
  char path[] = "/tmp/sbx-policy-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string policy = R"pb(
    name: "kill-getcwd"
    mounts { bind { src: "/usr" dst: "/usr" } }
    mounts { symlink { dst: "/bin" target: "usr/bin" } }
    mounts { symlink { dst: "/lib" target: "usr/lib" } }
    mounts { symlink { dst: "/lib64" target: "usr/lib64" } }
    mounts { tmpfs { dst: "/workspace" size_bytes: 16777216 mode: 0755 } }
    seccomp { default_action: ALLOW rules { syscalls: "getcwd" action: KILL } }
  )pb";
  ASSERT_EQ(write(fd, policy.data(), policy.size()), static_cast<ssize_t>(policy.size()));
  close(fd);
  AgentInvocation inv;
  inv.flags = {"--policy", path};
  inv.command = {"/bin/pwd", "-P"};
  AgentRun run = RunAgent(inv);
  unlink(path);
  EXPECT_EQ(run.exit_code, 128 + SIGSYS) << run.err;
  EXPECT_EQ(run.outcome["reason"], "seccomp_violation") << run.err;
}

// --- Limits ----------------------------------------------------------------------------------------------

TEST_F(JailTest, ForkBombIsContainedAndReportedAsPidsLimit) {
  AgentInvocation inv;
  inv.flags = {"--pids-limit", "64", "--time-limit", "30"};
  inv.command = {"/probe", "forkbomb"};
  int out_fd;
  std::string outcome;
  const auto start = std::chrono::steady_clock::now();
  pid_t agent = StartAgent(inv, &out_fd, &outcome);
  // While it runs: the host still forks, and the jail's processes never exceed the limit.
  size_t max_seen = 0;
  for (int i = 0; i < 20; ++i) {
    size_t n = JailUidProcesses().size();
    max_seen = std::max(max_seen, n);
    pid_t p = fork();
    if (p == 0) _exit(0);
    ASSERT_GT(p, 0) << "the host could not fork while the bomb ran";
    waitpid(p, nullptr, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  AgentRun run = WaitAgent(agent, out_fd, outcome);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LE(max_seen, 64u);
  EXPECT_LT(took, std::chrono::seconds(10)) << "the bomb should end on the pids limit, not the time limit";
  EXPECT_EQ(run.outcome["status"], "failed") << run.err;
  EXPECT_EQ(run.outcome["reason"], "pids_limit") << run.err;
  EXPECT_EQ(run.exit_code, 128 + SIGKILL);
  EXPECT_TRUE(JailUidProcesses().empty());
}

TEST_F(JailTest, MemoryHogEndsWithMemoryLimit) {
  AgentRun run = Probe({"memhog", "1024"}, {"--memory-limit", "64M"});
  EXPECT_EQ(run.exit_code, 128 + SIGKILL) << run.out << run.err;
  EXPECT_EQ(run.outcome["status"], "failed");
  EXPECT_EQ(run.outcome["reason"], "memory_limit");
  EXPECT_THAT(run.out, Not(HasSubstr("allocated=")));
  const uint64_t peak = run.outcome["usage"]["max_memory_bytes"];
  EXPECT_GT(peak, 32ull << 20);
  EXPECT_LE(peak, 72ull << 20);
}

TEST_F(JailTest, CpuSpinEndsWithTimeLimit) {
  const auto start = std::chrono::steady_clock::now();
  AgentRun run = Probe({"spin"}, {"--time-limit", "1"});
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(run.outcome["status"], "failed");
  EXPECT_EQ(run.outcome["reason"], "time_limit");
  EXPECT_EQ(run.exit_code, 128 + SIGKILL);
  EXPECT_GE(took, std::chrono::milliseconds(1000));
  EXPECT_LT(took, std::chrono::seconds(5));
  EXPECT_GE(run.outcome["usage"]["wall_ms"], 1000);
  EXPECT_GE(run.outcome["usage"]["cpu_user_ms"], 500) << "the spin's cpu time is read from the cgroup";
}

TEST_F(JailTest, FillingTmpGetsEnospc) {
  AgentRun run = Probe({"fill", "/tmp/big"});
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "fill"), "ENOSPC");
  EXPECT_EQ(Field(run.out, "written_mib"), "256");
}

// --- Exit statuses and stdio -----------------------------------------------------------------------------

TEST_F(JailTest, ExitStatusesFollowTheCommand) {
  AgentRun exited = Probe({"exit", "3"});
  EXPECT_EQ(exited.exit_code, 3);
  EXPECT_EQ(exited.outcome["status"], "completed");
  EXPECT_EQ(exited.outcome["reason"], "exited");
  EXPECT_EQ(exited.outcome["exit_code"], 3);
  EXPECT_TRUE(exited.outcome["signal"].is_null());

  AgentRun signaled = Probe({"kill", "15"});
  EXPECT_EQ(signaled.exit_code, 128 + 15);
  EXPECT_EQ(signaled.outcome["status"], "completed");
  EXPECT_EQ(signaled.outcome["reason"], "signaled");
  EXPECT_EQ(signaled.outcome["signal"], 15);

  AgentInvocation missing;
  missing.command = {"/no/such/command"};
  AgentRun not_found = RunAgent(missing);
  EXPECT_EQ(not_found.exit_code, 127);
  EXPECT_THAT(not_found.err, HasSubstr("/no/such/command"));

  AgentInvocation not_exec;
  not_exec.command = {"/etc/passwd"};
  EXPECT_EQ(RunAgent(not_exec).exit_code, 126);
}

TEST_F(JailTest, StdinAndStdoutPassThrough) {
  AgentInvocation inv;
  inv.command = {"tr", "a-z", "A-Z"};
  inv.stdin_data = "hello from the host\n";
  AgentRun run = RunAgent(inv);
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "HELLO FROM THE HOST\n");
}

TEST_F(JailTest, SigtermToTheAgentIsForwardedAndTheRunIsCanceled) {
  AgentInvocation inv;
  inv.command = {"/probe", "sleep", "30"};
  int out_fd;
  std::string outcome;
  pid_t agent = StartAgent(inv, &out_fd, &outcome);
  for (int i = 0; i < 200 && JailUidProcesses().size() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  kill(agent, SIGTERM);
  AgentRun run = WaitAgent(agent, out_fd, outcome);
  EXPECT_EQ(run.outcome["status"], "canceled") << run.err;
  EXPECT_EQ(run.exit_code, 128 + SIGTERM);
}

// --- Cleanup ---------------------------------------------------------------------------------------------

TEST_F(JailTest, TwoHundredRunsLeaveNothingBehind) {
  const auto cgroups_before = SessionCgroups();
  const int mounts_before = MountCount();
  std::set<std::string> tmp_before;
  for (const auto& e : std::filesystem::directory_iterator("/tmp")) tmp_before.insert(e.path());
  for (int i = 0; i < 200; ++i) {
    AgentInvocation inv;
    inv.bind_probe = false;
    inv.command = {"/bin/true"};
    AgentRun run = RunAgent(inv);
    ASSERT_EQ(run.exit_code, 0) << "run " << i << ": " << run.err;
  }
  EXPECT_EQ(SessionCgroups(), cgroups_before);
  EXPECT_EQ(MountCount(), mounts_before);
  EXPECT_TRUE(JailUidProcesses().empty());
  std::set<std::string> tmp_after;
  for (const auto& e : std::filesystem::directory_iterator("/tmp")) tmp_after.insert(e.path());
  EXPECT_EQ(tmp_after, tmp_before);
}

// --- Rootless --------------------------------------------------------------------------------------------

TEST_F(JailTest, RootlessRunsACommandAndSaysWhatItCannotEnforce) {
  if (access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "setpriv (util-linux) is not installed";
  AgentInvocation inv;
  inv.prefix = {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"};
  inv.command = {"/probe", "status"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(Field(run.out, "uid"), "1000");
  EXPECT_EQ(StatusLine(run.out, "CapEff"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "NoNewPrivs"), "1");
  EXPECT_EQ(StatusLine(run.out, "Seccomp"), "2");
  EXPECT_THAT(run.err, HasSubstr("cgroup limits are NOT enforced"));
  ASSERT_TRUE(run.outcome.contains("warnings")) << run.outcome.dump();
  EXPECT_EQ(run.outcome["status"], "completed");
}

// --- Older kernels and container profiles ----------------------------------------------------------------

// Where clone3 is refused with ENOSYS (seccomp profiles of older container runtimes, kernels before 5.3), the
// jail is cloned with clone(2) and is the same jail.
TEST_F(JailTest, WithoutClone3TheClone2FallbackBuildsTheSameJail) {
  AgentInvocation inv;
  inv.prefix = {SBX_NO_CLONE3_BIN};
  inv.command = {"/probe", "status"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.outcome["status"], "completed") << run.outcome.dump();
  EXPECT_EQ(Field(run.out, "uid"), "1000");
  EXPECT_EQ(StatusLine(run.out, "CapEff"), "0000000000000000");
  EXPECT_EQ(StatusLine(run.out, "NoNewPrivs"), "1");

  // And in its cgroup: on v2 clone(2) cannot clone into it (no CLONE_INTO_CGROUP), so the child is moved
  // there before it goes on; its memory limit holds and the kernel's reason comes back.
  inv.flags = {"--memory-limit", "64M"};
  inv.command = {"/probe", "memhog", "1024"};
  AgentRun hog = RunAgent(inv);
  EXPECT_EQ(hog.outcome["reason"], "memory_limit") << hog.outcome.dump() << hog.err;
  EXPECT_GT(hog.outcome["usage"]["max_memory_bytes"].get<uint64_t>(), 32ull << 20) << hog.outcome.dump();
}

// --- Bad input -------------------------------------------------------------------------------------------

struct BadInputCase {
  const char* name;
  std::vector<std::string> flags;
  std::vector<std::string> command;
  std::string policy;  // written to a temp file and passed with --policy when non-empty
  const char* expected_message;
};

void PrintTo(const BadInputCase& c, std::ostream* os) { *os << c.name; }

class BadInputTest : public JailTest, public ::testing::WithParamInterface<BadInputCase> {};

TEST_P(BadInputTest, Exits125NamingTheProblemAndLeavesNothing) {
  const BadInputCase& c = GetParam();
  const auto cgroups_before = SessionCgroups();
  const int mounts_before = MountCount();
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.flags = c.flags;
  inv.command = c.command;
  std::string policy_path;
  if (!c.policy.empty()) {
    char path[] = "/tmp/sbx-bad-policy-XXXXXX";
    int fd = mkstemp(path);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(write(fd, c.policy.data(), c.policy.size()), static_cast<ssize_t>(c.policy.size()));
    close(fd);
    policy_path = path;
    inv.flags.insert(inv.flags.begin(), {"--policy", policy_path});
  }
  AgentRun run = RunAgent(inv);
  if (!policy_path.empty()) unlink(policy_path.c_str());
  EXPECT_EQ(run.exit_code, 125) << run.err;
  EXPECT_THAT(run.err, HasSubstr(c.expected_message));
  EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << "one clear line: " << run.err;
  EXPECT_EQ(run.outcome["reason"], "setup_error");
  EXPECT_EQ(SessionCgroups(), cgroups_before);
  EXPECT_EQ(MountCount(), mounts_before);
  EXPECT_TRUE(JailUidProcesses().empty());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadInputTest,
    ::testing::Values(
        BadInputCase{"MalformedPolicy", {}, {"/bin/true"}, "name: \"x\"\nmounts { bind { src: \"/usr\" \n", ":3:"},
        BadInputCase{"UnknownField", {}, {"/bin/true"}, "name: \"x\"\nnot_a_field: 1\n", "not_a_field"},
        BadInputCase{"MissingCommand", {}, {}, "", "no command given"},
        BadInputCase{"MissingBindSource", {"--ro-bind", "/no/such/dir:/x"}, {"/bin/true"}, "", "/no/such/dir"},
        BadInputCase{"ZeroMemory", {"--memory-limit", "0"}, {"/bin/true"}, "", "memory_max_bytes"},
        BadInputCase{"AbsurdMemory", {"--memory-limit", "99999999999999999"}, {"/bin/true"}, "", "memory_max_bytes"},
        BadInputCase{"WiderThanPolicy", {"--pids-limit", "100000"}, {"/bin/true"}, "", "pids_max"},
        BadInputCase{"NegativeTime", {"--time-limit", "-1"}, {"/bin/true"}, "", "--time-limit"},
        // Above the policy's ceiling (10 minutes): refused naming the field, never clamped (issue 17 item 6).
        BadInputCase{"TimeAboveCeiling", {"--time-limit", "600.001"}, {"/bin/true"}, "", "wall_time_limit_ms"},
        BadInputCase{"NotANumber", {"--memory-limit", "lots"}, {"/bin/true"}, "", "--memory-limit"},
        BadInputCase{"MissingPolicyFile", {"--policy", "/no/such/policy.textproto"}, {"/bin/true"}, "",
                     "/no/such/policy.textproto"},
        BadInputCase{"RelativeCwd", {"--cwd", "relative/dir"}, {"/bin/true"}, "", "workdir"},
        BadInputCase{"CwdMissingInJail", {"--cwd", "/no/such/dir"}, {"/bin/true"}, "", "chdir"},
        // The egress proxy lives in the daemon: a one-shot run cannot give a jail governed egress.
        BadInputCase{"EgressInRun", {}, {"/bin/true"}, "name: \"e\"\nnetwork { mode: EGRESS allow: \"x.test\" }\n",
                     "sandbox-agent serve"}),
    [](const ::testing::TestParamInfo<BadInputCase>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace sbx::testing
