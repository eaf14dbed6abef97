// Guarantee (issue 11 item 10): text made inside a jail (file names, page console messages, errors quoting
// them) reaches the operator's terminal through sandboxctl with its control characters escaped: no raw ESC,
// BEL or 8-bit CSI, so a workload cannot clear, retitle or recolor the operator's terminal.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// A daemon whose file policy also binds the probes' directory read-only at /probe.
class EscapesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
    policy_dir_ = std::filesystem::temp_directory_path() / ("sbx-adv-escapes-" + std::to_string(getpid()));
    std::filesystem::create_directories(policy_dir_);
    std::ifstream in(std::string(SBX_POLICY_DIR) + "/file.textproto");
    std::stringstream policy;
    policy << in.rdbuf() << "\nmounts { bind { src: \"" << SBX_ADV_PROBE_DIR << "\" dst: \"/probe\" } }\n";
    std::ofstream(policy_dir_ + "/file.textproto") << policy.str();
    daemon_ = std::make_unique<Daemon>(Daemon::Options{{"policy_dir: \"" + policy_dir_ + "\""}, {}});
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(policy_dir_, ec);
  }

  std::string Create(const pb::Limits& limits = {}) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::FILE);
    *req.mutable_policy()->mutable_limits() = limits;
    pb::Session session;
    grpc::Status status = stub_->Create(&ctx, req, &session);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return session.id();
  }

  // The daemon's resident memory, from /proc/<pid>/status.
  uint64_t RssBytes() const {
    std::ifstream in("/proc/" + std::to_string(daemon_->pid()) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }

  std::string policy_dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

// No byte that starts or is a terminal control sequence.
void ExpectNoRawControls(const std::string& out) {
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << "raw ESC in: " << out;
  EXPECT_EQ(out.find('\x07'), std::string::npos) << "raw BEL in: " << out;
  EXPECT_EQ(out.find("\xc2\x9b"), std::string::npos) << "raw CSI (U+009B) in: " << out;
}

TEST_F(EscapesTest, SandboxctlEscapesJailMadeNames) {
  const std::string id = Create();
  CallResult made = RunExec(stub_.get(), id, {"/probe/hostile_names", "escapes"});
  ASSERT_TRUE(made.has_finished && made.finished.has_result()) << made.status.error_message() << made.err;

  int rc = -1;
  const std::string ls = RunCtl(*daemon_, {"ls", id}, &rc);
  EXPECT_EQ(rc, 0) << ls;
  ExpectNoRawControls(ls);
  EXPECT_THAT(ls, HasSubstr("\\x1b[2J\\x07cleared"));
  EXPECT_THAT(ls, HasSubstr("csi\\u009b31mred"));

  const std::string json = RunCtl(*daemon_, {"--output", "json", "ls", id}, &rc);
  EXPECT_EQ(rc, 0) << json;
  ExpectNoRawControls(json);

  const std::string events = RunCtl(*daemon_, {"events", id}, &rc);
  EXPECT_EQ(rc, 0) << events;
  ExpectNoRawControls(events);

  // An error that quotes a jail-made name.
  std::string cmd = CtlBin() + " --addr " + daemon_->address() + " ls " + id + " \"$(printf '\\033[2J\\007cleared/nope')\" 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string err;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), p)) > 0;) err.append(buf, n);
  EXPECT_NE(pclose(p), 0) << err;
  EXPECT_THAT(err, HasSubstr("cleared/nope")) << "the error names the path";
  ExpectNoRawControls(err);
}

}  // namespace
}  // namespace sbx::testing
