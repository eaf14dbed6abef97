// The CVE-2019-5736 class: the jail's PID 1 is the host's own sandbox-init, bound read-only into every jail.
// No workload, in a one-shot run or in a daemon's session, can open it for writing, truncate, unlink or
// replace it, through its path or through /proc/1/exe or /proc/self/exe; and the host's file is byte for
// byte the same afterwards.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/adversarial.h"
#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

using ::testing::StartsWith;

std::string Contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void ExpectRefused(const std::string& out) {
  for (const char* key : {"proc1_exe_write", "proc1_exe_rdwr", "init_path_write", "init_path_trunc",
                          "self_exe_write", "init_path_unlink", "init_path_rename", "proc1_exe_rename"}) {
    const std::string v = AdvField(out, key);
    EXPECT_NE(v, "<missing>") << key << "\n" << out;
    EXPECT_NE(v, "OK") << key << "\n" << out;
    EXPECT_THAT(v, ::testing::Not(StartsWith("OPENED"))) << key << "\n" << out;
  }
}

class HostInitBinaryCannotBeOverwritten : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "jails are built as root here (CI runs as root); this is uid " << geteuid();
    before_ = Contents(SBX_INIT_BIN);
    ASSERT_FALSE(before_.empty());
  }
  void TearDown() override {
    if (!before_.empty()) {
      EXPECT_TRUE(Contents(SBX_INIT_BIN) == before_) << "the host's sandbox-init changed";
    }
  }
  std::string before_;
};

TEST_F(HostInitBinaryCannotBeOverwritten, FromAOneShotRun) {
  AgentInvocation inv;
  inv.flags = {"--init-path", SBX_INIT_BIN, "--ro-bind", AdvProbe("overwrite_init") + ":/overwrite_init"};
  inv.command = {"/overwrite_init"};
  AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;
  ExpectRefused(run.out);
}

TEST_F(HostInitBinaryCannotBeOverwritten, FromADaemonSession) {
  const std::string policy_dir = "/tmp/sbx-adv-init-" + std::to_string(getpid());
  Daemon daemon(AdvDaemonOptions("file", policy_dir, {"init_path: \"" + std::string(SBX_INIT_BIN) + "\""}));
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  grpc::ClientContext ctx;
  ::duvo::sandbox::v1::CreateRequest req;
  req.set_kind(::duvo::sandbox::v1::FILE);
  ::duvo::sandbox::v1::Session session;
  ASSERT_TRUE(stub->Create(&ctx, req, &session).ok()) << daemon.Log();
  CallResult r = RunExec(stub.get(), session.id(), {"/adv/overwrite_init"});
  ASSERT_TRUE(r.has_finished) << r.status.error_message();
  ExpectRefused(r.out);
  std::error_code ec;
  std::filesystem::remove_all(policy_dir, ec);
}

}  // namespace
}  // namespace sbx::testing
