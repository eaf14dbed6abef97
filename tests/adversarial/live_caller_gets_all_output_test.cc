// Guarantee (issue 15): a Call client that is attached and reading gets every byte of its command's output,
// in order, with no `dropped` marker, however fast the command writes and however small the event log's
// byte budget: the flow stops at the source (the command blocks in write(2)) instead of the log dropping
// what the caller has not read yet. And the other side of it: a caller that stays attached but reads nothing
// cannot grow the agent's memory past the budget, nor hold the session up for good.
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/adversarial/adversarial.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

// seq 1 N's output size: each number's digits and a newline.
uint64_t SeqBytes(uint64_t n) {
  uint64_t total = 0;
  for (uint64_t lo = 1, digits = 1; lo <= n; lo *= 10, ++digits) total += (std::min(n, lo * 10 - 1) - lo + 1) * (digits + 1);
  return total;
}

// The file policy with an output budget (output_max_bytes) of 1 GiB, so a command may write 256 MiB+.
class LiveCallerTest : public AdvFileDaemonTest {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
    policy_dir_ = std::filesystem::temp_directory_path() /
                  ("sbx-adv-" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
                   "-" + std::to_string(getpid()));
    Daemon::Options options = AdvDaemonOptions("file", policy_dir_);
    const std::string path = policy_dir_ + "/file.textproto";
    std::stringstream text;
    text << std::ifstream(path).rdbuf();
    std::string policy = text.str();
    const std::string from = "output_max_bytes: 67108864";
    const size_t at = policy.find(from);
    ASSERT_NE(at, std::string::npos) << path << " has no '" << from << "' line";
    policy.replace(at, from.size(), "output_max_bytes: 1073741824");
    std::ofstream(path) << policy;
    daemon_ = std::make_unique<Daemon>(options);
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
};

TEST_F(LiveCallerTest, ALiveCallerGetsEveryByteInOrderPastTheEventLogsBudget) {
  // 16 MiB of log for 270 MB of output: without backpressure, a caller 1 s behind loses most of it.
  pb::Limits limits;
  limits.set_event_log_max_bytes(16ull << 20);
  const std::string id = Create(limits);
  const uint64_t n = 32'000'000;
  const uint64_t want = SeqBytes(n);
  ASSERT_GT(want, 256ull << 20);

  grpc::ClientContext ctx;
  auto stream = stub_->Call(&ctx);
  pb::CallRequest req;
  req.set_session_id(id);
  for (const char* a : {"seq", "1"}) req.mutable_call()->mutable_exec()->add_argv(a);
  req.mutable_call()->mutable_exec()->add_argv(std::to_string(n));
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  // A caller that is slow at times (1 s at the start, 1 s in the middle; under the agent's kLiveStall).
  std::this_thread::sleep_for(std::chrono::seconds(1));
  uint64_t received = 0, dropped = 0, next = 1;
  bool paused = false, finished_ok = false;
  std::string line;  // a number cut by a chunk's end
  pb::Event e;
  while (stream->Read(&e)) {
    if (e.has_dropped()) dropped += e.dropped().bytes() + 1;
    if (e.has_tool_call_finished()) finished_ok = e.tool_call_finished().has_result();
    if (!e.has_output()) continue;
    dropped += e.output().dropped_bytes();
    ASSERT_EQ(e.output().offset(), received) << "a gap in the output";
    received += e.output().data().size();
    // Every line is the number after the last one.
    for (char c : e.output().data()) {
      if (c != '\n') {
        line.push_back(c);
        continue;
      }
      ASSERT_EQ(line, std::to_string(next)) << "at byte " << received;
      ++next;
      line.clear();
    }
    if (!paused && received > (64ull << 20)) {
      paused = true;
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  }
  ASSERT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(finished_ok);
  EXPECT_EQ(dropped, 0u) << "output was dropped while its caller was reading";
  EXPECT_EQ(received, want);
  EXPECT_EQ(next, n + 1);
}

TEST_F(LiveCallerTest, ACallerThatReadsNothingNeitherGrowsTheAgentNorHoldsTheSessionForGood) {
  pb::Limits limits;
  limits.set_event_log_max_bytes(32ull << 20);
  const std::string id = Create(limits);
  const uint64_t rss_before = RssBytes();
  grpc::ClientContext ctx;
  auto stream = stub_->Call(&ctx);
  pb::CallRequest req;
  req.set_session_id(id);
  for (const char* a : {"/bin/sh", "-c", "exec cat /dev/zero"}) req.mutable_call()->mutable_exec()->add_argv(a);
  ASSERT_TRUE(stream->Write(req));
  stream->WritesDone();
  // The caller reads nothing. Another call on the session still completes (once the caller has carried
  // nothing for the agent's kLiveStall, 5 s, its output no longer waits for it).
  const auto t0 = Clock::now();
  CallResult other = RunExec(stub_.get(), id, {"/bin/echo", "still here"});
  ASSERT_TRUE(other.has_finished) << other.status.error_message();
  EXPECT_EQ(other.out, "still here\n");
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(20));
  // The workload goes on writing at full speed; the agent stays within its budget (plus gRPC's and the
  // allocator's slack).
  uint64_t rss_max = 0;
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    rss_max = std::max(rss_max, RssBytes());
  }
  EXPECT_LT(rss_max, rss_before + (96ull << 20)) << "RSS " << (rss_before >> 20) << " -> " << (rss_max >> 20) << " MiB";
  ctx.TryCancel();
  pb::Event e;
  while (stream->Read(&e)) {
  }
  (void)stream->Finish();
}

}  // namespace
}  // namespace sbx::testing
