// A workload that grabs the X server (GrabServer: the server then answers no other client) cannot hang the
// session's desktop driver: a screenshot during the grab fails with a clear error at its deadline instead of
// waiting forever, the session's other tool calls keep being served meanwhile, and once the grabbing client is
// gone, screenshots work again.
#include <unistd.h>

#include <chrono>
#include <future>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/adversarial.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;
using ::testing::HasSubstr;

class XGrabCannotHangTheDesktop : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/Xvfb", X_OK) != 0) GTEST_SKIP() << "this machine lacks Xvfb (deploy/install-deps.sh installs it)";
    policy_dir_ = "/tmp/sbx-adv-xgrab-" + std::to_string(getpid());
    daemon_ = std::make_unique<Daemon>(AdvDaemonOptions("desktop", policy_dir_));
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(policy_dir_, ec);
  }
  CallResult Screenshot(const std::string& id) {
    pb::ToolCall call;
    call.mutable_desktop()->mutable_screenshot();
    return RunCall(stub_.get(), id, call);
  }
  std::string policy_dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

TEST_F(XGrabCannotHangTheDesktop, AScreenshotDuringAGrabFailsAtItsDeadlineAndExecStillRuns) {
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::DESKTOP);
  req.mutable_desktop()->set_width(640);
  req.mutable_desktop()->set_height(480);
  pb::Session session;
  ASSERT_TRUE(stub_->Create(&ctx, req, &session).ok()) << daemon_->Log();
  const std::string id = session.id();
  ASSERT_TRUE(Screenshot(id).finished.has_result()) << "a screenshot before the grab";

  ASSERT_TRUE(RunExec(stub_.get(), id, {"/bin/sh", "-c", "/adv/xgrab >/workspace/grab 2>&1 &"}).has_finished);
  bool grabbed = false;
  for (int i = 0; i < 200 && !grabbed; ++i) {
    grabbed = RunExec(stub_.get(), id, {"/bin/cat", "/workspace/grab"}).out.find("grabbed=1") != std::string::npos;
    if (!grabbed) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_TRUE(grabbed) << RunExec(stub_.get(), id, {"/bin/cat", "/workspace/grab"}).out;

  const auto started = Clock::now();
  std::future<CallResult> shot = std::async(std::launch::async, [&] { return Screenshot(id); });
  // While the screenshot waits on the grabbed server, an exec on the same session is served promptly.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const auto exec_started = Clock::now();
  CallResult echo = RunExec(stub_.get(), id, {"/bin/echo", "still-served"});
  const auto exec_took = Clock::now() - exec_started;
  EXPECT_EQ(echo.out, "still-served\n");
  EXPECT_LT(exec_took, std::chrono::seconds(5)) << "the exec waited for the blocked screenshot";

  ASSERT_EQ(shot.wait_for(std::chrono::seconds(150)), std::future_status::ready) << "the screenshot never returned";
  CallResult r = shot.get();
  ASSERT_TRUE(r.finished.has_error()) << r.finished.DebugString();
  EXPECT_THAT(r.finished.error().message(), HasSubstr("X server")) << r.finished.DebugString();
  EXPECT_LT(Clock::now() - started, std::chrono::seconds(130));

  // The grabbing client gone, the display answers again.
  ASSERT_TRUE(RunExec(stub_.get(), id, {"/bin/sh", "-c", "pkill -KILL -f /adv/xgrab; sleep 0.2"}).has_finished);
  CallResult after;
  for (int i = 0; i < 20; ++i) {
    after = Screenshot(id);
    if (after.finished.has_result()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(after.finished.has_result()) << after.finished.DebugString();
}

}  // namespace
}  // namespace sbx::testing
