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

#include "tests/adversarial/adversarial.h"
#include "tests/common/spawn.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

using EscapesTest = AdvFileDaemonTest;

// No byte that starts or is a terminal control sequence.
void ExpectNoRawControls(const std::string& out) {
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << "raw ESC in: " << out;
  EXPECT_EQ(out.find('\x07'), std::string::npos) << "raw BEL in: " << out;
  EXPECT_EQ(out.find("\xc2\x9b"), std::string::npos) << "raw CSI (U+009B) in: " << out;
}

TEST_F(EscapesTest, SandboxctlEscapesJailMadeNames) {
  const std::string id = Create();
  CallResult made = RunExec(stub_.get(), id, {"/adv/hostile_names", "escapes"});
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
  const RunResult run = RunShell(cmd);
  const std::string& err = run.out;
  EXPECT_NE(run.exit_code, 0) << err;
  EXPECT_THAT(err, HasSubstr("cleared/nope")) << "the error names the path";
  ExpectNoRawControls(err);
}

}  // namespace
}  // namespace sbx::testing
