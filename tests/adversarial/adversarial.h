// Shared by the adversarial suite's test binaries (header-only: each *_test.cc is a binary of its own).
#ifndef SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_
#define SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {

// The path of a probe from tests/adversarial/probes on the host.
inline std::string AdvProbe(const std::string& name) { return std::string(SBX_ADV_PROBE_DIR) + "/" + name; }

// Value of "key=value" on its own line in `out`, or "<missing>".
inline std::string AdvField(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "<missing>";
}

// A daemon whose policy for `kind` ("file", "browser", "desktop") is the built-in one plus a read-only bind
// of the probes' directory at /adv. `policy_dir` is made (and left for the caller to remove).
inline Daemon::Options AdvDaemonOptions(const std::string& kind, const std::string& policy_dir,
                                        std::vector<std::string> extra_config = {}) {
  std::filesystem::create_directories(policy_dir);
  std::ifstream in(std::string(SBX_POLICY_DIR) + "/" + kind + ".textproto");
  std::stringstream policy;
  policy << in.rdbuf();
  policy << "\nmounts { bind { src: \"" << SBX_ADV_PROBE_DIR << "\" dst: \"/adv\" } }\n";
  std::ofstream(policy_dir + "/" + kind + ".textproto") << policy.str();
  Daemon::Options o;
  o.config_lines = {"policy_dir: \"" + policy_dir + "\""};
  for (std::string& line : extra_config) o.config_lines.push_back(std::move(line));
  return o;
}

// A real daemon whose file policy also binds the probes' directory at /adv, for tests that run a probe in a
// file session and look at the agent from outside.
class AdvFileDaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
    policy_dir_ = std::filesystem::temp_directory_path() /
                  ("sbx-adv-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                   "-" + std::to_string(getpid()));
    daemon_ = std::make_unique<Daemon>(AdvDaemonOptions("file", policy_dir_));
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(policy_dir_, ec);
  }

  // A file session that narrows the policy's limits to `limits`.
  std::string Create(const duvo::sandbox::v1::Limits& limits = {}) {
    grpc::ClientContext ctx;
    duvo::sandbox::v1::CreateRequest req;
    req.set_kind(duvo::sandbox::v1::FILE);
    *req.mutable_policy()->mutable_limits() = limits;
    duvo::sandbox::v1::Session session;
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
  std::unique_ptr<duvo::sandbox::v1::Sandboxes::StubInterface> stub_;
};

}  // namespace sbx::testing

#endif  // SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_
