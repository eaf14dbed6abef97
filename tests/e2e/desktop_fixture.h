// The fixture of the desktop session tests (desktop_test, computer_use_test): a real daemon whose desktop
// policy binds xprobe (tests/testcases) at /probe, desktop sessions on it, and xprobe's input log read back
// through the session. Header-only: the test target defines SBX_DESKTOP_POLICY and SBX_XPROBE_BIN.
#ifndef SBX_TESTS_E2E_DESKTOP_FIXTURE_H_
#define SBX_TESTS_E2E_DESKTOP_FIXTURE_H_

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {

// A daemon whose desktop policy also binds xprobe's directory read-only at /probe.
inline Daemon::Options DesktopDaemon(const std::string& policy_dir) {
  std::filesystem::create_directories(policy_dir);
  std::ifstream in(SBX_DESKTOP_POLICY);
  std::stringstream policy;
  policy << in.rdbuf();
  const std::string xprobe = SBX_XPROBE_BIN;
  policy << "\nmounts { bind { src: \"" << xprobe.substr(0, xprobe.rfind('/')) << "\" dst: \"/probe\" } }\n";
  std::ofstream(policy_dir + "/desktop.textproto") << policy.str();
  Daemon::Options o;
  o.config_lines = {"policy_dir: \"" + policy_dir + "\""};
  return o;
}

class DesktopSessionTest : public ::testing::Test {
 protected:
  // `name`: the policy directory's, with this process's pid after it.
  explicit DesktopSessionTest(std::string name) : name_(std::move(name)) {}

  void SetUp() override {
    if (access("/usr/bin/Xvfb", X_OK) != 0) GTEST_SKIP() << "this machine lacks Xvfb (deploy/install-deps.sh installs it)";
    policy_dir_ = std::filesystem::temp_directory_path() / (name_ + "-" + std::to_string(getpid()));
    daemon_ = std::make_unique<Daemon>(DesktopDaemon(policy_dir_));
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(policy_dir_, ec);
  }

  std::string Create(uint32_t width = 1280, uint32_t height = 800, bool wm = false, bool vnc = false) {
    grpc::ClientContext ctx;
    duvo::sandbox::v1::CreateRequest req;
    req.set_kind(duvo::sandbox::v1::DESKTOP);
    req.mutable_desktop()->set_width(width);
    req.mutable_desktop()->set_height(height);
    req.mutable_desktop()->set_window_manager(wm);
    req.mutable_desktop()->set_vnc(vnc);
    duvo::sandbox::v1::Session session;
    grpc::Status status = stub_->Create(&ctx, req, &session);
    EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << daemon_->Log();
    return session.id();
  }

  // Starts xprobe (with `flags`, such as "--motion --time ") in the background, logging to /workspace/<log>,
  // and waits for its "ready" line.
  void StartXprobe(const std::string& id, const std::string& log = "input.log", const std::string& flags = "") {
    CallResult r = RunExec(stub_.get(), id,
                           {"/bin/sh", "-c", "/probe/xprobe " + flags + "--log /workspace/" + log + " >/dev/null 2>&1 &"});
    ASSERT_TRUE(r.has_finished) << r.status.error_message();
    ASSERT_TRUE(WaitForLog(id, log, "ready")) << ReadLog(id, log);
  }

  std::string ReadLog(const std::string& id, const std::string& log = "input.log") {
    duvo::sandbox::v1::ToolCall call;
    call.mutable_read_file()->set_path("/workspace/" + log);
    CallResult r = RunCall(stub_.get(), id, call);
    return r.finished.has_result() ? r.finished.result().data() : "";
  }

  bool WaitForLog(const std::string& id, const std::string& log, const std::string& needle,
                  std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      if (ReadLog(id, log).find(needle) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  const std::string name_;
  std::string policy_dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<duvo::sandbox::v1::Sandboxes::StubInterface> stub_;
};

}  // namespace sbx::testing

#endif  // SBX_TESTS_E2E_DESKTOP_FIXTURE_H_
