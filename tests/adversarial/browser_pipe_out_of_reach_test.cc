// Guarantee: a command in a browser session cannot reach Chromium's insides. Chromium runs as the workload's
// uid (sandbox-init starts it), so only the Landlock domain every exec'd command is put in keeps the command
// from its CDP pipe (/proc/<chromium>/fd/3), its memory and its environment; and the browser keeps working.
#include <unistd.h>

#include <memory>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/init_trust_util.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::AnyOf;

TEST(BrowserPipeOutOfReachTest, ACommandCannotWriteChromiumsPipeNorOpenItsMemory) {
  if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root here (CI runs as root); this is uid " << geteuid();
  if (access("/usr/lib/chromium/chromium", X_OK) != 0) {
    GTEST_SKIP() << "this machine lacks /usr/lib/chromium/chromium (deploy/install-deps.sh installs chromium)";
  }
  Daemon daemon(Daemon::Options{});
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::BROWSER);
  pb::Session session;
  const grpc::Status created = stub->Create(&ctx, req, &session);
  ASSERT_TRUE(created.ok()) << created.error_message() << "\n" << daemon.Log();
  const std::string id = session.id();
  const grpc::Status up = UploadProbe(stub.get(), id, "cdp_pipe_hijack", "/workspace/cdp_pipe_hijack");
  ASSERT_TRUE(up.ok()) << up.error_message();

  CallResult probe = RunExec(stub.get(), id, {"/workspace/cdp_pipe_hijack"});
  ASSERT_TRUE(probe.finished.has_result()) << probe.finished.DebugString();
  ASSERT_NE(ProbeField(probe.out, "pid"), "-1") << "the probe did not find Chromium: " << probe.out << probe.err;
  EXPECT_THAT(ProbeField(probe.out, "pipe_open"), AnyOf("EACCES", "EPERM")) << probe.out;
  EXPECT_EQ(ProbeField(probe.out, "pipe_write"), "<missing>") << "a CDP command reached Chromium";
  EXPECT_THAT(ProbeField(probe.out, "mem_open"), AnyOf("EACCES", "EPERM")) << probe.out;
  EXPECT_THAT(ProbeField(probe.out, "fd_readlink"), AnyOf("EACCES", "EPERM")) << probe.out;
  EXPECT_THAT(ProbeField(probe.out, "environ_open"), AnyOf("EACCES", "EPERM")) << probe.out;

  // The browser itself (outside the command's domain) is untouched and still answers tool calls.
  pb::ToolCall evaluate;
  evaluate.mutable_browser()->mutable_evaluate()->set_expression("6 * 7");
  CallResult answer = RunCall(stub.get(), id, evaluate);
  ASSERT_TRUE(answer.finished.has_result()) << answer.finished.DebugString() << daemon.Log();
  pb::ToolCall shot;
  shot.mutable_browser()->mutable_screenshot();
  CallResult screenshot = RunCall(stub.get(), id, shot);
  ASSERT_TRUE(screenshot.finished.has_result()) << screenshot.finished.DebugString();
  EXPECT_GT(screenshot.finished.result().browser().image_width(), 0u);
}

}  // namespace
}  // namespace sbx::testing
