// EventLog: gap-free seqs, waiting readers, closing, and bounded retention of finished calls' output.
#include "agent/session/event_log.h"

#include <atomic>
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
  log.Read(after, 1000000, Clock::now(), [] { return false; }, &out);
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

// A log with small budgets: max_bytes counts kEventOverheadBytes per event besides its size.
EventLog::Limits Small(uint64_t max_events, uint64_t max_bytes, uint64_t max_file_bytes = 1 << 20) {
  EventLog::Limits l;
  l.max_events = max_events;
  l.max_bytes = max_bytes;
  l.max_file_bytes = max_file_bytes;
  return l;
}

pb::Event Started(const std::string& call) {
  pb::Event e;
  e.mutable_tool_call_started()->set_call_id(call);
  return e;
}

pb::Event Page(const std::string& text) {
  pb::Event e;
  e.mutable_page()->set_type("console");
  e.mutable_page()->set_text(text);
  return e;
}

// Every seq from 1 to last is either held or covered by exactly one dropped marker, in order.
void ExpectNoSilentGaps(const std::vector<EventLog::EventPtr>& events, uint64_t last) {
  uint64_t next = 1;
  for (const EventLog::EventPtr& e : events) {
    if (e->has_dropped() && e->dropped().first_seq() != 0) {
      EXPECT_LE(e->dropped().first_seq(), next);
      EXPECT_EQ(e->dropped().last_seq(), e->seq());
      EXPECT_GE(e->seq(), next);
    } else {
      EXPECT_EQ(e->seq(), next) << "a gap without a dropped marker";
    }
    next = e->seq() + 1;
  }
  EXPECT_EQ(next, last + 1);
}

TEST(EventLogTest, OutputOfFinishedCallsLosesItsPayloadFirstPastTheByteBudget) {
  EventLog log("s", Small(1000, 5000));
  log.Append(Output("a", 3000));  // seq 1
  log.Append(Finished("a"));      // seq 2
  log.Append(Output("b", 3000));  // seq 3: over budget, a's chunk goes
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_TRUE(events[0]->output().data().empty());
  EXPECT_EQ(events[0]->output().dropped_bytes(), 3000u);
  EXPECT_EQ(events[2]->output().data().size(), 3000u);
  EXPECT_LE(log.usage().bytes, 5000u);
}

TEST(EventLogTest, AcknowledgedOutputOfARunningCallGoesBeforeTheRest) {
  EventLog log("s", Small(1000, 8000));
  log.Append(Output("a", 3000));  // seq 1
  log.Append(Output("a", 3000));  // seq 2: under budget, kept
  EXPECT_EQ(ReadAll(log, 0)[0]->output().data().size(), 3000u);
  log.MarkDelivered(1);
  log.Append(Output("a", 3000));  // seq 3: over; seq 1 was acknowledged, so its payload goes
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0]->output().dropped_bytes(), 3000u);
  EXPECT_EQ(events[1]->output().data().size(), 3000u) << "not acknowledged yet";
  EXPECT_EQ(events[2]->output().data().size(), 3000u);
}

TEST(EventLogTest, ReadersKeepTheirCopyWhenDataIsDropped) {
  EventLog log("s", Small(1000, 5000));
  log.Append(Output("a", 3000));
  auto held = ReadAll(log, 0);
  log.Append(Finished("a"));
  log.Append(Output("b", 3000));
  EXPECT_EQ(held[0]->output().data().size(), 3000u);
  EXPECT_TRUE(ReadAll(log, 0)[0]->output().data().empty());
}

TEST(EventLogTest, SmallWritesAreCoalescedIntoChunksWithExactOffsets) {
  EventLog log("s");
  log.Append(Started("c"));
  constexpr int kWrites = 2000;
  std::string written;
  for (int i = 0; i < kWrites; ++i) {
    const std::string byte(1, static_cast<char>('a' + i % 26));
    log.AppendOutput("c", pb::STDOUT, i, byte);
    written += byte;
  }
  auto events = ReadAll(log, 1);
  EXPECT_LT(events.size(), static_cast<size_t>(kWrites / 10)) << "one write is not one event";
  std::string read;
  for (const auto& e : events) {
    ASSERT_TRUE(e->has_output());
    EXPECT_EQ(e->output().offset(), read.size());
    read += e->output().data();
  }
  EXPECT_EQ(read, written);
}

TEST(EventLogTest, ANewOutputChunkTakesTheWritersBufferWithoutACopy) {
  // Bulk output arrives in chunks of up to 256 KiB: a copy of each was most of the daemon's streaming cost.
  EventLog log("s");
  std::string data(256 << 10, 'x');
  const char* buffer = data.data();
  log.AppendOutput("c", pb::STDOUT, 0, std::move(data));
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0]->output().data().size(), 256u << 10);
  EXPECT_EQ(events[0]->output().data().data(), buffer) << "the chunk's bytes were copied";
}

TEST(EventLogTest, ChunksCloseAtTheirSizeAndWhenTheStreamChanges) {
  EventLog log("s");
  const std::string big(EventLog::kOutputChunkBytes - 10, 'x');
  log.AppendOutput("c", pb::STDOUT, 0, big);
  log.AppendOutput("c", pb::STDOUT, big.size(), std::string(20, 'y'));  // would pass the chunk's size
  log.AppendOutput("c", pb::STDERR, 0, "e");                             // another stream
  log.AppendOutput("c", pb::STDOUT, big.size() + 20, "z");               // back: a new chunk, in order
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[1]->output().offset(), big.size());
  EXPECT_EQ(events[2]->output().stream(), pb::STDERR);
  EXPECT_EQ(events[3]->output().offset(), big.size() + 20);
}

TEST(EventLogTest, AFollowingReaderGetsAnOpenChunkOnlyOnceItClosed) {
  EventLog log("s");
  // The hold counts from when the chunk opened, so the clock starts before "a" opens it (started after, a
  // loaded machine's thread start could use up the hold before the reader comes).
  const auto start = Clock::now();
  log.AppendOutput("c", pb::STDOUT, 0, "a");
  std::thread writer([&] { log.AppendOutput("c", pb::STDOUT, 1, "b"); });
  std::vector<EventLog::EventPtr> out;
  ASSERT_EQ(log.Read(0, 10, Clock::now() + std::chrono::seconds(5), [] { return false; }, &out),
            EventLog::ReadResult::kEvents);
  writer.join();
  EXPECT_GE(Clock::now() - start, EventLog::kOutputHold - std::chrono::milliseconds(1));
  ASSERT_EQ(out.size(), 1u);
  // Once handed out, a chunk never changes: the next write opens another.
  const std::string seen = out[0]->output().data();
  log.AppendOutput("c", pb::STDOUT, seen.size(), "c");
  EXPECT_EQ(out[0]->output().data(), seen);
  // NOTE: not a fixed seq: on a loaded machine the writer's "b" may come after the hold closed "a" and open a
  // chunk of its own, which "c" may then join.
  EXPECT_GT(log.last_seq(), out[0]->seq());
}

TEST(EventLogTest, TheEventBudgetReplacesOldEventsWithOneDroppedMarker) {
  EventLog log("s", Small(16, 64 << 20));
  for (int i = 0; i < 100; ++i) log.Append(Page("hello"));
  EXPECT_LE(log.usage().events, 16u);
  auto events = ReadAll(log, 0);
  ASSERT_FALSE(events.empty());
  ASSERT_TRUE(events[0]->has_dropped());
  const pb::Dropped& d = events[0]->dropped();
  EXPECT_EQ(d.budget(), "limits.event_log_max_events");
  EXPECT_EQ(d.first_seq(), 1u);
  EXPECT_EQ(d.events(), d.last_seq());
  ExpectNoSilentGaps(events, 100);
  // A client resuming inside the dropped run gets the marker, then the rest.
  auto resumed = ReadAll(log, 3);
  ASSERT_FALSE(resumed.empty());
  EXPECT_TRUE(resumed[0]->has_dropped());
  EXPECT_EQ(resumed.back()->seq(), 100u);
}

TEST(EventLogTest, UnacknowledgedOutputOfARunningCallGoesLastAndIsRecorded) {
  EventLog log("s", Small(16, 64 << 20));
  log.Append(Started("run"));
  log.Append(Page("a"));  // session-wide: goes before the running call's output
  for (int i = 0; i < 10; ++i) log.Append(Output("run", 1));
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 12u) << "within the budget nothing goes";
  for (int i = 0; i < 10; ++i) log.Append(Output("run", 1));
  events = ReadAll(log, 0);
  EXPECT_LE(events.size(), 16u);
  ExpectNoSilentGaps(events, 22);
  ASSERT_TRUE(events[0]->has_dropped());
  EXPECT_EQ(events.back()->seq(), 22u) << "the newest output is held";
}

TEST(EventLogTest, ThePayloadBudgetCountsMetadataToo) {
  EventLog log("s", Small(1 << 20, 1 << 20));
  for (int i = 0; i < 100000; ++i) log.Append(Page("x"));
  EXPECT_LE(log.usage().bytes, 1u << 20);
  EXPECT_LE(log.usage().events, (1u << 20) / EventLog::kEventOverheadBytes);
  ExpectNoSilentGaps(ReadAll(log, 0), 100000);
}

TEST(EventLogTest, FilePayloadsAreReleasedOnceAcknowledged) {
  EventLog log("s");
  log.Append(Started("c"));
  ASSERT_TRUE(log.AppendFile("c", "screenshots/1.png", std::string(10000, 'p'), "abc", 4096).ok());
  EXPECT_EQ(log.usage().file_bytes, 10000u);
  log.MarkSent(2);  // the call's own stream carried the first chunk
  auto events = ReadAll(log, 1);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_TRUE(events[0]->file().data().empty());
  EXPECT_EQ(events[0]->file().dropped_bytes(), 4096u);
  EXPECT_EQ(events[0]->file().path(), "screenshots/1.png");
  EXPECT_EQ(log.usage().file_bytes, 10000u - 4096u);
  log.MarkDelivered(4);  // an ack_seq
  events = ReadAll(log, 1);
  EXPECT_EQ(events[2]->file().dropped_bytes(), 10000u - 2 * 4096u);
  EXPECT_EQ(events[2]->file().sha256(), "abc");
  EXPECT_TRUE(events[2]->file().last());
  EXPECT_EQ(log.usage().file_bytes, 0u);
}

TEST(EventLogTest, AFileOverTheFileBudgetIsNotSentAndIsRecorded) {
  EventLog log("s", Small(1000, 64 << 20, 15000));
  log.Append(Started("c"));
  ASSERT_TRUE(log.AppendFile("c", "screenshots/1.png", std::string(10000, 'p'), "", 65536).ok());
  const uint64_t before = log.last_seq();
  absl::Status s = log.AppendFile("c", "screenshots/2.png", std::string(10000, 'q'), "", 65536);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("limits.file_events_max_bytes"), absl::string_view::npos) << s;
  auto events = ReadAll(log, before);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_TRUE(events[0]->has_dropped());
  EXPECT_EQ(events[0]->dropped().budget(), "limits.file_events_max_bytes");
  EXPECT_EQ(events[0]->dropped().path(), "screenshots/2.png");
  EXPECT_EQ(events[0]->dropped().bytes(), 10000u);
  log.MarkDelivered(before);  // the first was acknowledged: room again
  EXPECT_TRUE(log.AppendFile("c", "screenshots/3.png", std::string(10000, 'r'), "", 65536).ok());
}

TEST(EventLogTest, JailTextThatIsNotUtf8IsReplacedAndItsBytesKept) {
  EventLog log("s");
  const std::string bad = "bad\xff\xfename";
  pb::Event listing;
  listing.mutable_tool_call_finished()->set_call_id("c");
  pb::FileInfo* entry = listing.mutable_tool_call_finished()->mutable_result()->mutable_listing()->add_entries();
  entry->set_name(bad);
  entry->set_symlink_target("ok");
  log.Append(std::move(listing));
  log.Append(Page("console \xc0\x80 overlong"));
  auto events = ReadAll(log, 0);
  ASSERT_EQ(events.size(), 2u);
  const pb::FileInfo& got = events[0]->tool_call_finished().result().listing().entries(0);
  EXPECT_EQ(got.name(), "bad\xEF\xBF\xBD\xEF\xBF\xBDname");
  EXPECT_EQ(got.name_bytes(), bad) << "the raw name is recoverable";
  EXPECT_EQ(got.symlink_target(), "ok");
  EXPECT_TRUE(got.symlink_target_bytes().empty());
  for (const auto& e : events) {
    // What a client does: parse the event. Before the fix this failed on the string field.
    pb::Event parsed;
    EXPECT_TRUE(parsed.ParseFromString(e->SerializeAsString())) << e->DebugString();
  }
}

// A live caller (AttachReader) holds its call's output back at kLiveWindowBytes instead of losing it to the
// byte budget: the writer waits until the caller's stream carried enough (MarkSent).
TEST(EventLogTest, ALiveCallersOutputWaitsForItInsteadOfBeingDropped) {
  EventLog::Limits limits;
  limits.max_bytes = 3 * EventLog::kLiveWindowBytes;
  EventLog log("s", limits);
  log.AttachReader("c");
  const uint64_t total = 8 * EventLog::kLiveWindowBytes;  // far past the budget
  const size_t piece = 256 << 10;
  std::atomic<uint64_t> written{0};
  std::thread writer([&] {
    for (uint64_t off = 0; off < total; off += piece) {
      log.AppendOutput("c", pb::STDOUT, off, std::string(piece, 'x'));
      written = off + piece;
    }
    log.Append(Finished("c"));
  });
  uint64_t after = 0, received = 0, dropped = 0;
  bool waited = false;
  while (true) {
    std::vector<EventLog::EventPtr> out;
    if (log.Read(after, 256, Clock::now() + std::chrono::seconds(10), [] { return false; }, &out) !=
        EventLog::ReadResult::kEvents) {
      break;
    }
    bool done = false;
    for (const EventLog::EventPtr& e : out) {
      after = e->seq();
      if (e->has_output()) {
        EXPECT_EQ(e->output().offset(), received) << "in order, no gap";
        received += e->output().data().size();
        dropped += e->output().dropped_bytes();
      }
      if (e->has_dropped()) dropped += e->dropped().bytes();
      done = done || e->has_tool_call_finished();
      log.MarkSent(e->seq());
    }
    if (!waited && received > 0) {
      // The caller pauses: the writer stops a window (and a chunk) ahead of it, not at the budget.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      EXPECT_LE(written.load(), received + EventLog::kLiveWindowBytes + 2 * EventLog::kOutputChunkBytes);
      waited = true;
    }
    if (done) break;
  }
  writer.join();
  log.DetachReader("c");
  EXPECT_EQ(received, total);
  EXPECT_EQ(dropped, 0u);
  EXPECT_LE(log.usage().bytes, limits.max_bytes);
}

// Without an attached caller, or once it detached, output never waits: the budget bounds it.
TEST(EventLogTest, WithoutALiveCallerOutputDoesNotWaitAndTheBudgetBoundsIt) {
  EventLog::Limits limits;
  limits.max_bytes = 2 * EventLog::kLiveWindowBytes;
  EventLog log("s", limits);
  log.AttachReader("c");
  log.DetachReader("c");
  const size_t piece = 256 << 10;
  const auto start = Clock::now();
  for (uint64_t off = 0; off < 8 * EventLog::kLiveWindowBytes; off += piece) {
    log.AppendOutput("c", pb::STDOUT, off, std::string(piece, 'x'));
  }
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(4)) << "the writer waited for nobody";
  EXPECT_LE(log.usage().bytes, limits.max_bytes);
}

// A writer waiting for a caller goes on when the caller detaches (its stream ended) or the log closes.
TEST(EventLogTest, AWriterWaitingForACallerGoesOnWhenItDetaches) {
  EventLog log("s");
  log.AttachReader("c");
  const size_t piece = 256 << 10;
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (uint64_t off = 0; off < 2 * EventLog::kLiveWindowBytes; off += piece) {
      log.AppendOutput("c", pb::STDOUT, off, std::string(piece, 'x'));
    }
    done = true;
  });
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (!done && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(done) << "the writer should wait for the attached caller";
  log.DetachReader("c");
  writer.join();
  EXPECT_TRUE(done);
}

}  // namespace
}  // namespace sbx::agent
