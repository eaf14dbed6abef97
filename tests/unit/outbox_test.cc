// Outbox: durable append/ack/replay on real files, torn tails vs. corruption, compaction, the owner lock, a
// SIGKILL at random moments, and concurrent appends.
#include "agent/fleet/outbox.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

namespace fs = std::filesystem;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const fs::path& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

#define EXPECT_THAT_LOST(got, want) EXPECT_EQ(Describe(got), Describe(want))

std::vector<uint64_t> Ids(const std::vector<OutboxRecord>& records) {
  std::vector<uint64_t> ids;
  for (const auto& r : records) ids.push_back(r.id);
  return ids;
}

class OutboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "outbox_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    root_ = tmpl;
    dir_ = root_ / "outbox";
    journal_ = dir_ / "journal";
  }
  void TearDown() override { fs::remove_all(root_); }

  uint64_t JournalSize() const { return fs::file_size(journal_); }

  fs::path root_;
  fs::path dir_;
  fs::path journal_;
};

TEST_F(OutboxTest, AppendAckAndPendingInOrder) {
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  EXPECT_EQ(outbox->pending_count(), 0u);
  EXPECT_EQ(outbox->dropped_tail_bytes(), 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t a, outbox->Append("outcome", "lease-1", "payload-a"));
  ASSERT_OK_AND_ASSIGN(uint64_t b, outbox->Append("event", "lease-1/7", std::string("\0b\xff", 3)));
  ASSERT_OK_AND_ASSIGN(uint64_t c, outbox->Append("outcome", "lease-2", ""));
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);

  auto pending = outbox->Pending();
  ASSERT_EQ(Ids(pending), (std::vector<uint64_t>{a, b, c}));
  EXPECT_EQ(pending[1].kind, "event");
  EXPECT_EQ(pending[1].key, "lease-1/7");
  EXPECT_EQ(pending[1].payload, std::string("\0b\xff", 3));
  EXPECT_EQ(pending[2].payload, "");

  ASSERT_TRUE(IsOk(outbox->Ack(b)));
  EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{a, c}));
  const uint64_t size = JournalSize();
  EXPECT_TRUE(IsOk(outbox->Ack(b))) << "acking twice is OK";
  EXPECT_TRUE(IsOk(outbox->Ack(999))) << "an unknown id is OK";
  EXPECT_EQ(JournalSize(), size) << "no-op acks write nothing";
  EXPECT_EQ(outbox->pending_count(), 2u);
}

TEST_F(OutboxTest, ReopenReplaysPendingOnlyAndIdsKeepIncreasing) {
  uint64_t last = 0;
  {
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    for (int i = 0; i < 5; ++i) {
      ASSERT_OK_AND_ASSIGN(last, outbox->Append("event", "k" + std::to_string(i), "p" + std::to_string(i)));
    }
    ASSERT_TRUE(IsOk(outbox->Ack(1)));
    ASSERT_TRUE(IsOk(outbox->Ack(4)));
    ASSERT_TRUE(IsOk(outbox->Ack(5)));  // the newest one too: its id must still not come back
  }
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  auto pending = outbox->Pending();
  ASSERT_EQ(Ids(pending), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(pending[0].key, "k1");
  EXPECT_EQ(pending[1].payload, "p2");
  ASSERT_OK_AND_ASSIGN(uint64_t next, outbox->Append("event", "k5", "p5"));
  EXPECT_EQ(next, last + 1);
}

// Three records; returns the journal's size before each and after the last (offsets of the records, and end).
std::vector<uint64_t> WriteThreeRecords(const fs::path& dir, const fs::path& journal) {
  std::vector<uint64_t> offsets;
  auto outbox = Outbox::Open(dir.string());
  EXPECT_TRUE(IsOk(outbox));
  for (int i = 0; i < 3; ++i) {
    offsets.push_back(fs::file_size(journal));
    EXPECT_TRUE(IsOk((*outbox)->Append("event", "key-" + std::to_string(i), std::string(100, 'a' + i))));
  }
  offsets.push_back(fs::file_size(journal));
  return offsets;
}

TEST_F(OutboxTest, TornTailIsDroppedAndEarlierRecordsSurvive) {
  const std::vector<uint64_t> off = WriteThreeRecords(dir_, journal_);
  const std::string original = ReadFile(journal_);
  // Cuts in the third record's header, at its header's end, and in its body.
  for (uint64_t cut : {off[2] + 1, off[2] + 5, off[2] + 12, off[2] + 13, off[2] + 60, off[3] - 1}) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    WriteFile(journal_, original.substr(0, cut));
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    EXPECT_EQ(outbox->dropped_tail_bytes(), cut - off[2]);
    EXPECT_EQ(JournalSize(), off[2]) << "the torn tail is truncated away";
    auto pending = outbox->Pending();
    ASSERT_EQ(Ids(pending), (std::vector<uint64_t>{1, 2}));
    EXPECT_EQ(pending[1].payload, std::string(100, 'b'));
    // The journal takes appends again after the cut.
    ASSERT_OK_AND_ASSIGN(uint64_t id, outbox->Append("event", "again", "x"));
    outbox.reset();
    ASSERT_OK_AND_ASSIGN(outbox, Outbox::Open(dir_.string()));
    EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{1, 2, id}));
    EXPECT_EQ(outbox->dropped_tail_bytes(), 0u);
  }
}

TEST_F(OutboxTest, GarbageOrZerosAfterTheLastRecordAreDropped) {
  const std::vector<uint64_t> off = WriteThreeRecords(dir_, journal_);
  const std::string original = ReadFile(journal_);
  std::mt19937 rng(42);
  std::string garbage(37, '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  // Zeros are what a file extended by a crash before its data was written looks like.
  for (const std::string& tail : {garbage, std::string(4096, '\0'), std::string(1, '\x01')}) {
    SCOPED_TRACE("tail of " + std::to_string(tail.size()) + " bytes");
    WriteFile(journal_, original + tail);
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    EXPECT_EQ(outbox->dropped_tail_bytes(), tail.size());
    EXPECT_EQ(JournalSize(), off[3]);
    EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{1, 2, 3}));
  }
}

TEST_F(OutboxTest, FlippedByteBeforeTheTailIsDataLossNamingTheOffset) {
  const std::vector<uint64_t> off = WriteThreeRecords(dir_, journal_);
  const std::string original = ReadFile(journal_);
  struct Flip {
    uint64_t at;
    uint64_t record_offset;
  };
  // In the second record's length, type, body CRC and body; in the first record's body.
  for (Flip flip : {Flip{off[1], off[1]}, Flip{off[1] + 4, off[1]}, Flip{off[1] + 6, off[1]},
                    Flip{off[1] + 50, off[1]}, Flip{off[0] + 40, off[0]}}) {
    SCOPED_TRACE("flip at " + std::to_string(flip.at));
    std::string data = original;
    data[flip.at] ^= 0x10;
    WriteFile(journal_, data);
    auto outbox = Outbox::Open(dir_.string());
    EXPECT_TRUE(StatusIs(outbox, absl::StatusCode::kDataLoss,
                         journal_.string() + ": corrupt record at offset " + std::to_string(flip.record_offset)));
    EXPECT_EQ(ReadFile(journal_), data) << "a corrupt journal is left as it is";
  }
  WriteFile(journal_, "not a journal at all");
  EXPECT_TRUE(StatusIs(Outbox::Open(dir_.string()), absl::StatusCode::kDataLoss, "bad magic"));
}

TEST_F(OutboxTest, CompactShrinksTheJournalAndKeepsPendingAndTheIdCounter) {
  {
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(IsOk(outbox->Append("event", "k" + std::to_string(i), std::string(500, 'a' + i))));
    }
    for (uint64_t id : {1, 2, 3, 5, 6, 7, 8, 10}) ASSERT_TRUE(IsOk(outbox->Ack(id)));
    const uint64_t before = JournalSize();
    ASSERT_TRUE(IsOk(outbox->Compact()));
    EXPECT_LT(JournalSize() * 3, before);
    EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{4, 9}));
    // The compacted journal takes appends and acks.
    ASSERT_OK_AND_ASSIGN(uint64_t id, outbox->Append("event", "k10", "after"));
    EXPECT_EQ(id, 11u);
    ASSERT_TRUE(IsOk(outbox->Ack(4)));
  }
  EXPECT_FALSE(fs::exists(dir_ / "journal.tmp"));
  {
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    auto pending = outbox->Pending();
    ASSERT_EQ(Ids(pending), (std::vector<uint64_t>{9, 11}));
    EXPECT_EQ(pending[0].key, "k8");
    EXPECT_EQ(pending[0].payload, std::string(500, 'a' + 8));
    EXPECT_EQ(pending[1].payload, "after");
    // With nothing pending, the id counter still survives compaction and reopening.
    ASSERT_TRUE(IsOk(outbox->Ack(9)));
    ASSERT_TRUE(IsOk(outbox->Ack(11)));
    ASSERT_TRUE(IsOk(outbox->Compact()));
  }
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  EXPECT_EQ(outbox->pending_count(), 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t id, outbox->Append("event", "k", "p"));
  EXPECT_EQ(id, 12u);
}

TEST_F(OutboxTest, AckCompactsAutomaticallyPastTheThreshold) {
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string(), {.compact_after_bytes = 2000}));
  ASSERT_OK_AND_ASSIGN(uint64_t keep, outbox->Append("outcome", "keep", "kept"));
  uint64_t written = 0;
  uint64_t largest = 0;
  for (int i = 0; i < 40; ++i) {
    const uint64_t before = JournalSize();
    ASSERT_OK_AND_ASSIGN(uint64_t id, outbox->Append("event", "k" + std::to_string(i), std::string(300, 'x')));
    written += JournalSize() - before;
    ASSERT_TRUE(IsOk(outbox->Ack(id)));
    largest = std::max<uint64_t>(largest, JournalSize());
  }
  EXPECT_GT(written, 10000u);
  EXPECT_LT(largest, 3000u) << "the journal is compacted once acked bytes pass 2000";
  outbox.reset();
  ASSERT_OK_AND_ASSIGN(outbox, Outbox::Open(dir_.string()));
  EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{keep}));
  ASSERT_OK_AND_ASSIGN(uint64_t id, outbox->Append("event", "k", "p"));
  EXPECT_EQ(id, 42u);
}

TEST_F(OutboxTest, SecondOpenOfTheSameDirectoryFails) {
  ASSERT_OK_AND_ASSIGN(auto first, Outbox::Open(dir_.string()));
  EXPECT_TRUE(StatusIs(Outbox::Open(dir_.string()), absl::StatusCode::kFailedPrecondition,
                       (dir_ / "lock").string()));
  // Also from another process.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto second = Outbox::Open(dir_.string());
    ::_exit(second.status().code() == absl::StatusCode::kFailedPrecondition ? 0 : 1);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0);
  first.reset();
  EXPECT_TRUE(IsOk(Outbox::Open(dir_.string()))) << "the lock goes with the first Outbox";
}

TEST_F(OutboxTest, RejectsBadRecordsAndTakesTheLargestPayload) {
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  EXPECT_TRUE(StatusIs(outbox->Append("", "k", "p"), absl::StatusCode::kInvalidArgument, "kind"));
  EXPECT_TRUE(StatusIs(outbox->Append("event", "", "p"), absl::StatusCode::kInvalidArgument, "key"));
  EXPECT_TRUE(StatusIs(outbox->Append("event", std::string(Outbox::kMaxKeyBytes + 1, 'k'), "p"),
                       absl::StatusCode::kInvalidArgument, "key"));
  EXPECT_TRUE(StatusIs(outbox->Append("event", "k", std::string(Outbox::kMaxPayloadBytes + 1, 'p')),
                       absl::StatusCode::kInvalidArgument, "payload"));
  EXPECT_EQ(outbox->pending_count(), 0u);
  const std::string largest(Outbox::kMaxPayloadBytes, 'p');
  ASSERT_TRUE(IsOk(outbox->Append(std::string(Outbox::kMaxKindBytes, 'c'), std::string(Outbox::kMaxKeyBytes, 'k'),
                                  largest)));
  outbox.reset();
  ASSERT_OK_AND_ASSIGN(outbox, Outbox::Open(dir_.string()));
  auto pending = outbox->Pending();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_TRUE(pending[0].payload == largest);
}

TEST_F(OutboxTest, LeftoverCompactionFileIsIgnoredAndRemoved) {
  {
    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    ASSERT_TRUE(IsOk(outbox->Append("event", "k", "p")));
  }
  WriteFile(dir_ / "journal.tmp", "SBXOUTB1 half a compaction");
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  EXPECT_EQ(Ids(outbox->Pending()), (std::vector<uint64_t>{1}));
  EXPECT_FALSE(fs::exists(dir_ / "journal.tmp"));
}

TEST_F(OutboxTest, ConcurrentAppendsFromFourThreadsAreAllThere) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
  std::vector<std::vector<uint64_t>> ids(kThreads);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          auto id = outbox->Append("event", std::to_string(t) + "/" + std::to_string(i), "payload");
          EXPECT_TRUE(IsOk(id));
          if (id.ok()) ids[t].push_back(*id);
        }
      });
    }
  }
  std::set<uint64_t> all;
  for (const auto& v : ids) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread)) << "ids are unique";
  outbox.reset();
  ASSERT_OK_AND_ASSIGN(outbox, Outbox::Open(dir_.string()));
  auto pending = outbox->Pending();
  ASSERT_EQ(pending.size(), all.size());
  std::set<std::string> keys;
  for (const auto& r : pending) {
    EXPECT_TRUE(all.count(r.id));
    keys.insert(r.key);
  }
  EXPECT_EQ(keys.size(), all.size());
}

// --- Damage: the table of corruptions. -------------------------------------------------------------------

// Three appends, as the fleet agent journals them: a lease, an outcome, a lease. Returns the offsets of the
// records and the end.
struct ThreeLeases {
  std::vector<uint64_t> off;
  std::vector<OutboxLostRecord> records;  // {id, kind, key} of each
};
ThreeLeases WriteThreeLeases(const fs::path& dir, const fs::path& journal) {
  ThreeLeases j;
  j.records = {{1, "lease", "lease-a"}, {2, "outcome", "lease-b"}, {3, "lease", "lease-c"}};
  auto outbox = Outbox::Open(dir.string());
  EXPECT_TRUE(IsOk(outbox));
  for (const OutboxLostRecord& r : j.records) {
    j.off.push_back(fs::file_size(journal));
    EXPECT_TRUE(IsOk((*outbox)->Append(r.kind, r.key, std::string(100, 'p'))));
  }
  j.off.push_back(fs::file_size(journal));
  return j;
}

std::string Describe(const std::vector<OutboxLostRecord>& lost) {
  std::string out;
  for (const auto& r : lost) out += "{" + std::to_string(r.id) + " " + r.kind + " " + r.key + "} ";
  return out;
}

// One corruption and the exact result: the ids recovered, and either a torn tail (with the record it named)
// or damage at `offset` (with the records it names lost).
struct Corruption {
  using Mutate = std::function<std::string(const std::string&, const ThreeLeases&)>;
  Corruption(std::string name, Mutate mutate, std::vector<uint64_t> recovered,
             std::optional<OutboxLostRecord> torn = std::nullopt, bool damaged = false, uint64_t offset = 0,
             std::vector<OutboxLostRecord> lost = {}, bool unreadable = false)
      : name(std::move(name)), mutate(std::move(mutate)), recovered(std::move(recovered)), torn(std::move(torn)),
        damaged(damaged), offset(offset), lost(std::move(lost)), unreadable(unreadable) {}
  std::string name;
  Mutate mutate;
  std::vector<uint64_t> recovered;
  std::optional<OutboxLostRecord> torn;
  bool damaged;
  uint64_t offset;
  std::vector<OutboxLostRecord> lost;
  bool unreadable;
};

std::vector<Corruption> Corruptions(const ThreeLeases& j) {
  const auto cut = [](uint64_t at) {
    return [at](const std::string& d, const ThreeLeases&) { return d.substr(0, at); };
  };
  const auto flip = [](uint64_t at) {
    return [at](const std::string& d, const ThreeLeases&) {
      std::string out = d;
      out[at] ^= 0x10;
      return out;
    };
  };
  std::vector<Corruption> t;
  // Truncations at every record boundary: a clean journal of the records before it.
  for (size_t i = 0; i < j.off.size(); ++i) {
    std::vector<uint64_t> ids;
    for (uint64_t id = 1; id <= i; ++id) ids.push_back(id);
    t.push_back({"cut at boundary " + std::to_string(i), cut(j.off[i]), ids});
  }
  for (size_t i = 0; i < 3; ++i) {
    std::vector<uint64_t> ids;
    for (uint64_t id = 1; id <= i; ++id) ids.push_back(id);
    // Torn in the header: nothing of the record can be read.
    t.push_back({"cut in header " + std::to_string(i), cut(j.off[i] + 5), ids});
    // Torn in the payload, after the key: the torn tail names the lease.
    const uint64_t after_key = j.off[i] + 13 + 16 + j.records[i].kind.size() + j.records[i].key.size() + 10;
    t.push_back({"cut in payload " + std::to_string(i), cut(after_key), ids, j.records[i]});
  }
  // The file is no journal at all.
  // Not one record left to read: the damage may have hidden anything.
  t.push_back({"empty", cut(0), {}, std::nullopt, true, 0, {}, true});
  t.push_back({"cut in the magic", cut(4), {}, std::nullopt, true, 0, {}, true});
  t.push_back({"flipped magic", flip(0), {1, 2, 3}, std::nullopt, true, 0});
  t.push_back({"garbage", [](const std::string&, const ThreeLeases&) {
                 std::mt19937 rng(7);
                 std::string g(4000, '\0');
                 for (char& c : g) c = static_cast<char>(rng());
                 return g;
               },
               {}, std::nullopt, true, 0, {}, true});
  // Flipped bytes in each record's header (length, type) and body (payload).
  for (size_t i = 0; i < 2; ++i) {
    std::vector<uint64_t> others;
    for (uint64_t id = 1; id <= 3; ++id) {
      if (id != i + 1) others.push_back(id);
    }
    t.push_back({"flipped length of record " + std::to_string(i), flip(j.off[i]), others, std::nullopt, true,
                 j.off[i], {j.records[i]}});
    t.push_back({"flipped type of record " + std::to_string(i), flip(j.off[i] + 4), others, std::nullopt, true,
                 j.off[i], {j.records[i]}});
    t.push_back({"flipped header crc of record " + std::to_string(i), flip(j.off[i] + 10), others, std::nullopt,
                 true, j.off[i], {j.records[i]}});
    t.push_back({"flipped payload of record " + std::to_string(i), flip(j.off[i + 1] - 1), others, std::nullopt,
                 true, j.off[i], {j.records[i]}});
  }
  // In the last record, damage cannot be told from a torn write: it is a torn tail, naming its lease.
  t.push_back({"flipped length of the last record", flip(j.off[2]), {1, 2}, j.records[2]});
  t.push_back({"flipped payload of the last record", flip(j.off[3] - 1), {1, 2}, j.records[2]});
  // Two records in a row damaged: one span, both named.
  t.push_back({"flipped payloads of records 0 and 1",
               [&](const std::string& d, const ThreeLeases& jj) {
                 std::string out = d;
                 out[jj.off[1] - 1] ^= 0x10;
                 out[jj.off[2] - 1] ^= 0x10;
                 return out;
               },
               {3}, std::nullopt, true, j.off[0], {j.records[0], j.records[1]}});
  return t;
}

TEST_F(OutboxTest, TableOfCorruptionsRefusedOrSalvagedWithTheExactLoss) {
  const ThreeLeases j = WriteThreeLeases(dir_, journal_);
  const std::string original = ReadFile(journal_);
  for (const Corruption& c : Corruptions(j)) {
    for (OutboxDamagePolicy policy : {OutboxDamagePolicy::kRefuse, OutboxDamagePolicy::kSalvage}) {
      const bool salvage = policy == OutboxDamagePolicy::kSalvage;
      SCOPED_TRACE(c.name + (salvage ? " (salvage)" : " (refuse)"));
      for (const auto& e : fs::directory_iterator(dir_)) {
        if (e.path().filename().string().rfind("journal.damaged", 0) == 0) fs::remove_all(e.path());
      }
      const std::string data = c.mutate(original, j);
      WriteFile(journal_, data);
      auto outbox = Outbox::Open(dir_.string(), {.on_damage = policy});
      if (c.damaged && !salvage) {
        EXPECT_TRUE(StatusIs(outbox, absl::StatusCode::kDataLoss, journal_.string()));
        EXPECT_TRUE(StatusIs(outbox, absl::StatusCode::kDataLoss, "offset " + std::to_string(c.offset)));
        EXPECT_EQ(ReadFile(journal_), data) << "a refused journal is left as it is";
        continue;
      }
      ASSERT_TRUE(IsOk(outbox));
      EXPECT_EQ(Ids((*outbox)->Pending()), c.recovered);
      EXPECT_EQ((*outbox)->torn_record(), c.torn);
      ASSERT_EQ((*outbox)->damage().has_value(), c.damaged);
      if (c.damaged) {
        const OutboxDamage& d = *(*outbox)->damage();
        EXPECT_EQ(d.offset, c.offset) << d.what;
        EXPECT_THAT_LOST(d.lost, c.lost);
        EXPECT_EQ(d.unreadable, c.unreadable) << d.what;
        if (data.empty()) {
          EXPECT_EQ(d.set_aside, "");
        } else {
          ASSERT_NE(d.set_aside, "");
          EXPECT_EQ(ReadFile(d.set_aside), data) << "the damaged journal is kept beside the new one";
        }
      }
      // What was kept is a clean journal now, which takes appends.
      ASSERT_TRUE(IsOk((*outbox)->Append("lease", "lease-new", "x")));
      outbox->reset();
      ASSERT_OK_AND_ASSIGN(auto again, Outbox::Open(dir_.string()));
      EXPECT_FALSE(again->damage().has_value());
      EXPECT_EQ(again->pending_count(), c.recovered.size() + 1);
    }
  }
}

TEST_F(OutboxTest, AJournalThatIsADirectoryIsRefusedOrSetAside) {
  fs::create_directories(journal_ / "inside");
  EXPECT_TRUE(StatusIs(Outbox::Open(dir_.string()), absl::StatusCode::kDataLoss, journal_.string()));
  EXPECT_TRUE(fs::is_directory(journal_));
  ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string(), {.on_damage = OutboxDamagePolicy::kSalvage}));
  ASSERT_TRUE(outbox->damage().has_value());
  EXPECT_EQ(outbox->damage()->offset, 0u);
  EXPECT_TRUE(outbox->damage()->lost.empty());
  EXPECT_TRUE(outbox->damage()->unreadable);
  EXPECT_TRUE(fs::is_directory(outbox->damage()->set_aside)) << outbox->damage()->set_aside;
  EXPECT_TRUE(fs::is_regular_file(journal_));
  EXPECT_EQ(outbox->pending_count(), 0u);
  ASSERT_TRUE(IsOk(outbox->Append("lease", "k", "p")));
}

TEST_F(OutboxTest, AHeldLockIsAnErrorNamingTheLockFileAndTheHoldersPid) {
  int ready[2], release[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(release, O_CLOEXEC), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(release[1]);  // so that the parent's close is an EOF here
    auto held = Outbox::Open(dir_.string());
    const char c = held.ok() ? 'y' : 'n';
    (void)::write(ready[1], &c, 1);
    char ignored;
    (void)::read(release[0], &ignored, 1);
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  for (OutboxDamagePolicy policy : {OutboxDamagePolicy::kRefuse, OutboxDamagePolicy::kSalvage}) {
    auto second = Outbox::Open(dir_.string(), {.on_damage = policy});
    EXPECT_TRUE(StatusIs(second, absl::StatusCode::kFailedPrecondition, (dir_ / "lock").string()));
    EXPECT_TRUE(StatusIs(second, absl::StatusCode::kFailedPrecondition, "pid " + std::to_string(pid)));
  }
  EXPECT_FALSE(fs::exists(dir_ / "journal.damaged")) << "a held lock is not damage";
  ::close(release[1]);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(IsOk(Outbox::Open(dir_.string())));
}

// What the crashing child reports over its pipe after a call returned OK (16 bytes: atomic on a pipe).
struct Report {
  char what;  // 'A' appended, 'P' about to ack, 'K' acked
  uint64_t id;
  uint32_t i;
};

std::string ChildKey(int round, uint32_t i) { return "r" + std::to_string(round) + "-" + std::to_string(i); }
std::string ChildPayload(uint32_t i) { return std::string(i * 37 % 700, static_cast<char>('a' + i % 26)); }

// Appends (acking every other record, compacting often) until killed.
[[noreturn]] void RunCrashingChild(const std::string& dir, int round, int report_fd) {
  auto outbox = Outbox::Open(dir, {.compact_after_bytes = 3000});
  if (!outbox.ok()) ::_exit(2);
  for (uint32_t i = 0;; ++i) {
    auto id = (*outbox)->Append("event", ChildKey(round, i), ChildPayload(i));
    if (!id.ok()) ::_exit(3);
    Report r{'A', *id, i};
    if (::write(report_fd, &r, sizeof(r)) != sizeof(r)) ::_exit(4);
    if (i % 2 == 1) {
      r = Report{'P', *id - 1, i - 1};
      if (::write(report_fd, &r, sizeof(r)) != sizeof(r)) ::_exit(4);
      if (!(*outbox)->Ack(*id - 1).ok()) ::_exit(5);
      r = Report{'K', *id - 1, i - 1};
      if (::write(report_fd, &r, sizeof(r)) != sizeof(r)) ::_exit(4);
    }
  }
}

TEST_F(OutboxTest, SigkillAtRandomMomentsLosesNothingThatWasReportedDurable) {
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 rng(seed);
  std::map<uint64_t, std::pair<int, uint32_t>> appended;  // id -> (round, i)
  std::set<uint64_t> acked;
  std::set<uint64_t> acking;       // an Ack was called, and may not have returned
  std::set<uint64_t> interrupted;  // pending after a kill, though their Append never returned
  uint64_t max_reported = 0;
  for (int round = 0; round < 10; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      RunCrashingChild(dir_.string(), round, fds[1]);
    }
    ::close(fds[1]);
    std::this_thread::sleep_for(std::chrono::microseconds(std::uniform_int_distribution<int>(2000, 60000)(rng)));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int wstatus = 0;
    ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the child failed on its own, exit code " << WEXITSTATUS(wstatus);
    const uint64_t max_before = max_reported;
    Report r;
    while (::read(fds[0], &r, sizeof(r)) == sizeof(r)) {
      if (r.what == 'A') {
        EXPECT_GT(r.id, max_before) << "ids keep increasing across crashes";
        appended[r.id] = {round, r.i};
        max_reported = std::max(max_reported, r.id);
      } else if (r.what == 'P') {
        acking.insert(r.id);
      } else {
        acked.insert(r.id);
      }
    }
    ::close(fds[0]);

    ASSERT_OK_AND_ASSIGN(auto outbox, Outbox::Open(dir_.string()));
    std::map<uint64_t, OutboxRecord> pending;
    for (auto& rec : outbox->Pending()) pending.emplace(rec.id, std::move(rec));
    for (const auto& [id, origin] : appended) {
      if (acked.count(id)) {
        EXPECT_FALSE(pending.count(id)) << "acked record " << id << " is pending again";
        continue;
      }
      auto it = pending.find(id);
      if (it == pending.end() && acking.count(id)) continue;  // its Ack was cut short, after the fsync
      if (it == pending.end()) {
        ADD_FAILURE() << "durable record " << id << " is lost";
        continue;
      }
      EXPECT_EQ(it->second.key, ChildKey(origin.first, origin.second));
      EXPECT_EQ(it->second.payload, ChildPayload(origin.second));
    }
    // Beyond the reported ones, only the record whose Append the kill interrupted may be there.
    for (const auto& [id, rec] : pending) {
      if (appended.count(id) || interrupted.count(id)) continue;
      EXPECT_GT(id, max_before);
      const std::string prefix = "r" + std::to_string(round) + "-";
      ASSERT_EQ(rec.key.rfind(prefix, 0), 0u) << rec.key;
      EXPECT_EQ(rec.payload, ChildPayload(static_cast<uint32_t>(std::stoul(rec.key.substr(prefix.size())))));
      interrupted.insert(id);
      max_reported = std::max(max_reported, id);
    }
    EXPECT_LE(interrupted.size(), static_cast<size_t>(round + 1)) << "at most one per kill";
  }
  EXPECT_GT(appended.size(), 0u) << "the children appended something";
}

}  // namespace
}  // namespace sbx::agent
