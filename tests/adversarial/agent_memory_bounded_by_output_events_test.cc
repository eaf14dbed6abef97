// Guarantee (DESIGN rule 5, issue 11 item 7): a workload that writes output a byte at a time cannot grow the
// agent's memory by the number of its writes. Output is coalesced into chunks (one event per stream per few
// ms, offsets exact), the event log is bounded in events and bytes, and what it gives up is recorded as a
// `dropped` marker a resuming client sees.
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
using Clock = std::chrono::steady_clock;

// A daemon whose file policy also binds the probes' directory read-only at /probe.
class OutputEventsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
    policy_dir_ = std::filesystem::temp_directory_path() / ("sbx-adv-output-" + std::to_string(getpid()));
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

TEST_F(OutputEventsTest, ADribblingWorkloadMakesFewEventsAndTheAgentStaysSmall) {
  const std::string id = Create();
  const uint64_t rss_before = RssBytes();
  CallResult r = RunExec(stub_.get(), id, {"/probe/output_dribble", "4"});
  ASSERT_TRUE(r.has_finished) << r.status.error_message();
  ASSERT_TRUE(r.finished.has_result()) << r.finished.DebugString();
  const size_t at = r.err.find("writes=");
  ASSERT_NE(at, std::string::npos) << r.err;
  const uint64_t writes = std::stoull(r.err.substr(at + 7));
  ASSERT_GT(writes, 10000u) << "the probe should write many times in 4 s";
  EXPECT_EQ(r.out.size(), writes) << "every byte arrives";
  uint64_t output_events = 0, offset = 0;
  for (const pb::Event& e : r.events) {
    if (!e.has_output() || e.output().stream() != pb::STDOUT) continue;
    ++output_events;
    EXPECT_EQ(e.output().offset(), offset) << "offsets stay exact";
    offset += e.output().data().size();
  }
  EXPECT_LT(output_events * 20, writes) << output_events << " output events for " << writes << " writes";
  // The session's log, as a resuming client reads it, holds no more than that.
  pb::Session s;
  {
    grpc::ClientContext ctx;
    pb::GetRequest req;
    req.set_session_id(id);
    ASSERT_TRUE(stub_->Get(&ctx, req, &s).ok());
  }
  EXPECT_LT(s.last_seq() * 20, writes);
  const uint64_t rss_after = RssBytes();
  EXPECT_LT(rss_after, rss_before + (24ull << 20)) << "RSS " << (rss_before >> 20) << " -> " << (rss_after >> 20)
                                                   << " MiB";
}

TEST_F(OutputEventsTest, PastTheEventBudgetAResumingClientSeesADroppedMarker) {
  pb::Limits limits;
  limits.set_event_log_max_events(64);
  const std::string id = Create(limits);
  // 400 lines 10 ms apart: each its own event (longer apart than output is held for coalescing).
  CallResult r = RunExec(stub_.get(), id,
                         {"/bin/sh", "-c", "i=0; while [ $i -lt 400 ]; do echo $i; i=$((i+1)); sleep 0.01; done"});
  ASSERT_TRUE(r.has_finished) << r.status.error_message();
  EXPECT_EQ(r.out.size(), 1490u) << "the live stream lost nothing";

  grpc::ClientContext ctx;
  pb::EventsRequest req;
  req.set_session_id(id);
  req.set_after_seq(0);
  auto reader = stub_->Events(&ctx, req);
  pb::Event e;
  std::vector<pb::Event> events;
  while (reader->Read(&e)) events.push_back(e);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_FALSE(events.empty());
  EXPECT_LE(events.size(), 64u);
  ASSERT_TRUE(events[0].has_dropped()) << events[0].DebugString();
  EXPECT_EQ(events[0].dropped().budget(), "limits.event_log_max_events");
  EXPECT_EQ(events[0].dropped().first_seq(), 1u);
  EXPECT_GT(events[0].dropped().events(), 300u);
  // No silent gap: each seq is held or inside a marker's range.
  uint64_t next = 1;
  for (const pb::Event& ev : events) {
    if (ev.has_dropped() && ev.dropped().first_seq() != 0) {
      EXPECT_LE(ev.dropped().first_seq(), next);
    } else {
      EXPECT_EQ(ev.seq(), next);
    }
    next = ev.seq() + 1;
  }
  EXPECT_TRUE(events.back().has_tool_call_finished()) << "the newest events are held";
}

}  // namespace
}  // namespace sbx::testing
