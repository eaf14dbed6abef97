// Outbox: the fleet agent's durable, append-only journal of records it must deliver to the control plane at
// least once (session outcomes, unacknowledged events). Records survive a control-plane outage and an agent
// crash at any instant, including mid-write; the control plane dedupes redeliveries by (kind, key).
//
// On disk, in the outbox directory (e.g. /var/lib/sandbox-agent/outbox):
//   lock         flock(LOCK_EX) held by the one process that owns the outbox.
//   journal      the journal (format below).
//   journal.tmp  a compaction in progress; a leftover from a crash is deleted by Open.
//
// Journal format (all integers little-endian):
//   file   := magic record*                       magic = the 8 bytes "SBXOUTB1"
//   record := header body
//   header := u32 body_len | u8 type | u32 body_crc | u32 header_crc      (13 bytes)
//             body_crc = CRC32C(body); header_crc = CRC32C(the 9 header bytes before it)
//   body, by type:
//     1 append   u64 id | u32 kind_len | u32 key_len | kind | key | payload (the rest)
//     2 ack      u64 id                  the append record with this id was delivered
//     3 next_id  u64 next_id             ids below this are used (written first by compaction)
// The header has its own CRC so a length is trusted before the body is read: a flipped bit in a header is
// corruption, never mistaken for a record running past the end of the file.
//
// Replay: appends minus acks are pending. Each write is fsync'd before the call returns, so only the last
// record can be torn by a crash. A record with a valid header whose body runs past EOF is a torn tail. At any
// other bad record (short header, bad header or body CRC), the rest of the file is searched for a valid
// record: if there is none, the bad bytes are a torn tail; if there is one, the journal is corrupt before its
// tail (damage). A torn tail is truncated away and counted in dropped_tail_bytes(); the kind and key of the
// record it cut short, when they were written, are in torn_record().
// NOTE: a corrupted *last* record cannot be told from a torn write, so it is dropped like one. The id of a
// record torn away (its Append never returned) may be assigned again.
//
// Damage (a bad record before the tail, a record that does not decode, no magic, an empty file, a journal that
// is not a regular file): with OutboxOptions::on_damage kRefuse, Open fails with DataLoss naming the file and
// the offset of the first bad record, leaving the file as it is. With kSalvage, Open keeps every valid record
// (replay resynchronises at the next valid record after each damaged span), copies the damaged file to
// journal.damaged-<unix_ms> (a directory is renamed there), writes a fresh journal of what it kept, and says
// what it lost in damage(): the first offset, and the kind, key and id of each damaged record whose header
// framing still gave them.
// NOTE: resynchronising searches a damaged span byte by byte for a valid record, and a payload holds bytes a
// jail chose (its output): a span whose header lost its length can expose a frame forged inside a payload.
// Replay first tries the damaged header's own length (a bit flipped elsewhere in the header, or in the body,
// keeps the span's extent), so only a header whose length bytes are damaged is searched.
#ifndef SBX_AGENT_FLEET_OUTBOX_H_
#define SBX_AGENT_FLEET_OUTBOX_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

namespace sbx::agent {

// One record to deliver.
struct OutboxRecord {
  uint64_t id = 0;      // assigned by Append: increasing, never reused (also across restarts and compactions)
  std::string kind;     // e.g. "outcome", "event"
  std::string key;      // dedupe key within the kind, e.g. the lease id (+ seq for events)
  std::string payload;  // opaque bytes (a serialized proto)
};

// What Open does with a damaged journal (see the file comment).
enum class OutboxDamagePolicy { kRefuse, kSalvage };

// Tuning for Outbox::Open.
struct OutboxOptions {
  // Ack compacts the journal once the bytes of acked records (and of the acks) exceed this.
  uint64_t compact_after_bytes = 4 << 20;
  OutboxDamagePolicy on_damage = OutboxDamagePolicy::kRefuse;
};

// A record Open could not replay whose kind and key could still be read (id 0 when not readable).
struct OutboxLostRecord {
  uint64_t id = 0;
  std::string kind;
  std::string key;
  bool operator==(const OutboxLostRecord&) const = default;
};

// What a salvaging Open found damaged and left out.
struct OutboxDamage {
  std::string what;             // the first problem, e.g. "corrupt record at offset 40"
  uint64_t offset = 0;          // of the first damaged byte
  uint64_t bytes = 0;           // damaged bytes left out, over every damaged span
  std::string set_aside;        // where the damaged journal went ("" when nothing was kept, e.g. empty)
  std::vector<OutboxLostRecord> lost;  // damaged records with a readable kind and key, in journal order
  bool unreadable = false;      // some damaged span may have held records whose keys could not be read
};

// The durable outbox. Thread-safe. Owns its journal, lock and directory fds; the directory and its files are
// owned by the one Outbox that holds the lock. Every mutating call is durable (fsync'd) when it returns OK.
// NOTE: a failed fsync (or a failed directory fsync after a compaction's rename) leaves the on-disk state
// unknown, so the Outbox then fails every later Append/Ack/Compact with that error; reopening it replays
// what is really on disk.
class Outbox {
 public:
  using Options = OutboxOptions;

  static constexpr size_t kMaxKindBytes = 256;
  static constexpr size_t kMaxKeyBytes = 4096;
  static constexpr size_t kMaxPayloadBytes = 4 << 20;

  // Opens the outbox in `dir` (creating `dir`, whose parent must exist, and the journal if missing), takes its
  // lock and replays the journal: records appended and not acked are pending again, and ids continue after
  // the highest one ever assigned. Errors: FailedPrecondition naming the lock file (and the holder's pid,
  // which the owner writes into it) when another process (or another Outbox in this one) holds it; DataLoss
  // naming the journal and offset when it is damaged and options.on_damage is kRefuse. A torn tail is
  // truncated away (see dropped_tail_bytes()); damage is salvaged under kSalvage (see damage()).
  static absl::StatusOr<std::unique_ptr<Outbox>> Open(std::string_view dir, Options options = {});

  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;
  ~Outbox();

  // Appends a record and fsyncs it; returns its id. When OK, the record survives a crash until acked.
  // InvalidArgument for an empty or oversized kind or key, or a payload over kMaxPayloadBytes.
  absl::StatusOr<uint64_t> Append(std::string_view kind, std::string_view key, std::string_view payload);

  // Marks a record delivered, durably (fsync'd) when OK. Idempotent: an id that is not pending (acked before,
  // or never assigned) is OK and writes nothing. May compact the journal (options.compact_after_bytes); a
  // failure of that compaction is returned, the ack itself being durable then.
  absl::Status Ack(uint64_t id);

  // The pending (appended, not acked) records, oldest first. A copy.
  std::vector<OutboxRecord> Pending() const;
  size_t pending_count() const;
  // The same, of one kind only (no copy of the others).
  std::vector<OutboxRecord> Pending(std::string_view kind) const;
  size_t pending_count(std::string_view kind) const;

  // Rewrites the journal with only the pending records and the id counter: writes journal.tmp, fsyncs it,
  // renames it over the journal and fsyncs the directory. Ack calls it automatically; callable any time.
  absl::Status Compact();

  // Bytes of torn tail Open truncated away (0 when the journal was clean), for the caller to log.
  uint64_t dropped_tail_bytes() const { return dropped_tail_bytes_; }
  // The kind and key of the record the torn tail cut short, when its header and those were written.
  const std::optional<OutboxLostRecord>& torn_record() const { return torn_record_; }
  // What a salvaging Open left out; nullopt when the journal was not damaged.
  const std::optional<OutboxDamage>& damage() const { return damage_; }
  // The journal's path, for logs.
  const std::string& journal_path() const { return journal_path_; }

 private:
  struct Entry {
    OutboxRecord record;
    uint64_t bytes = 0;  // size of its append record in the journal
  };

  Outbox(std::string dir, Options options, UniqueFd dir_fd, UniqueFd lock_fd, UniqueFd fd);

  // Writes `bytes` at the end of the journal and fsyncs. A failed write is rolled back (ftruncate); a failed
  // fsync or rollback sets broken_.
  absl::Status WriteDurablyLocked(const std::string& bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string dir_;
  const std::string journal_path_;
  const Options options_;
  const UniqueFd dir_fd_;
  const UniqueFd lock_fd_;  // holds the flock for the Outbox's life
  uint64_t dropped_tail_bytes_ = 0;  // set by Open only
  std::optional<OutboxLostRecord> torn_record_;  // set by Open only
  std::optional<OutboxDamage> damage_;           // set by Open only

  mutable absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);                  // the journal, read-write
  uint64_t file_size_ ABSL_GUARDED_BY(mu_) = 0;       // bytes of valid journal; appends go here
  uint64_t dead_bytes_ ABSL_GUARDED_BY(mu_) = 0;      // bytes of acked appends and acks in the journal
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Entry> pending_ ABSL_GUARDED_BY(mu_);  // by id, so oldest first
  absl::Status broken_ ABSL_GUARDED_BY(mu_);          // sticky error once the on-disk state is unknown
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_FLEET_OUTBOX_H_
