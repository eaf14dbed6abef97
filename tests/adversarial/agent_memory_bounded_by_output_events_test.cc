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

#include "tests/adversarial/adversarial.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

using OutputEventsTest = AdvFileDaemonTest;

TEST_F(OutputEventsTest, ADribblingWorkloadMakesFewEventsAndTheAgentStaysSmall) {
  const std::string id = Create();
  const uint64_t rss_before = RssBytes();
  CallResult r = RunExec(stub_.get(), id, {"/adv/output_dribble", "4"});
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
