// EventLog: gap-free seqs, waiting readers, closing, and bounded retention of finished calls' output.
#include "agent/event_log.h"

#include <thread>

#include <gtest/gtest.h>

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

pb::Event Output(const std::string& call, size_t bytes) {
  pb::Event e;
  e.mutable_output()->set_call_id(call);
  e.mutable_output()->set_data(std::string(bytes, 'x'));
  return e;
}

pb::Event Finished(const std::string& call) {
  pb::Event e;
  e.mutable_tool_call_finished()->set_call_id(call);
  return e;
}

std::vector<EventLog::EventPtr> ReadAll(EventLog& log, uint64_t after) {
  std::vector<EventLog::EventPtr> out;
  log.Read(after, 1000, Clock::now(), [] { return false; }, &out);
  return out;
}

TEST(EventLogTest, SeqsAreGapFreeAndStampedWithTheSession) {
  EventLog log("s-1");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(log.Append(Output("c", 1)), static_cast<uint64_t>(i + 1));
  auto events = ReadAll(log, 2);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0]->seq(), 3u);
  EXPECT_EQ(events[0]->session_id(), "s-1");
  EXPECT_GT(events[0]->unix_ms(), 0);
}

TEST(EventLogTest, ReadersWaitForNewEventsAndSeeTheClose) {
  EventLog log("s");
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    log.Append(Output("c", 1));
    log.Close();
  });
  std::vector<EventLog::EventPtr> out;
  EXPECT_EQ(log.Read(0, 10, Clock::now() + std::chrono::seconds(5), [] { return false; }, &out),
            EventLog::ReadResult::kEvents);
  ASSERT_EQ(out.size(), 1u);
  out.clear();
  EXPECT_EQ(log.Read(1, 10, Clock::now() + std::chrono::seconds(5), [] { return false; }, &out),
            EventLog::ReadResult::kClosed);
  writer.join();
  EXPECT_EQ(log.Append(Output("c", 1)), 0u) << "nothing is appended after the close";
  EXPECT_EQ(log.Read(1, 10, Clock::now() + std::chrono::milliseconds(10), [] { return true; }, &out),
            EventLog::ReadResult::kClosed);
}

TEST(EventLogTest, TimeoutAndStop) {
  EventLog log("s");
  std::vector<EventLog::EventPtr> out;
  EXPECT_EQ(log.Read(0, 10, Clock::now() + std::chrono::milliseconds(20), [] { return false; }, &out),
            EventLog::ReadResult::kTimeout);
  EXPECT_EQ(log.Read(0, 10, Clock::now() + std::chrono::seconds(5), [] { return true; }, &out),
            EventLog::ReadResult::kStopped);
}

TEST(EventLogTest, OutputOfFinishedCallsIsDroppedOldestFirstPastTheBudget) {
  EventLog log("s", /*max_output_bytes=*/1000);
  log.Append(Output("a", 600));  // seq 1
  log.Append(Finished("a"));     // seq 2
  log.Append(Output("b", 600));  // seq 3: over budget, a's chunk goes
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_TRUE(events[0]->output().data().empty());
  EXPECT_EQ(events[0]->output().dropped_bytes(), 600u);
  EXPECT_EQ(events[2]->output().data().size(), 600u);
}

TEST(EventLogTest, ARunningCallsOutputIsNeverDropped) {
  EventLog log("s", /*max_output_bytes=*/1000);
  log.Append(Output("a", 600));
  log.Append(Output("a", 600));  // over budget, but a is still running
  auto events = ReadAll(log, 0);
  EXPECT_EQ(events[0]->output().data().size(), 600u);
  EXPECT_EQ(events[1]->output().data().size(), 600u);
}

TEST(EventLogTest, DeliveredOutputOfARunningCallIsDroppedPastTheBudget) {
  EventLog log("s", /*max_output_bytes=*/1000);
  log.Append(Output("a", 600));  // seq 1
  log.Append(Output("a", 600));  // seq 2: over budget, nothing delivered yet: kept
  EXPECT_EQ(ReadAll(log, 0)[0]->output().data().size(), 600u);
  log.MarkDelivered(1);
  auto events = ReadAll(log, 0);
  EXPECT_TRUE(events[0]->output().data().empty());
  EXPECT_EQ(events[0]->output().dropped_bytes(), 600u);
  EXPECT_EQ(events[1]->output().data().size(), 600u) << "not delivered yet";
}

TEST(EventLogTest, ReadersKeepTheirCopyWhenDataIsDropped) {
  EventLog log("s", 1000);
  log.Append(Output("a", 600));
  auto held = ReadAll(log, 0);
  log.Append(Finished("a"));
  log.Append(Output("b", 600));
  EXPECT_EQ(held[0]->output().data().size(), 600u);
}

}  // namespace
}  // namespace sbx::agent
