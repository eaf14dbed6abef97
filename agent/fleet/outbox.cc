#include "agent/fleet/outbox.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <thread>
#include <utility>

#include "base/status.h"

namespace sbx::agent {
namespace {

constexpr std::string_view kMagic = "SBXOUTB1";
constexpr char kLockName[] = "lock";
constexpr char kJournalName[] = "journal";
constexpr char kTempName[] = "journal.tmp";

constexpr size_t kHeaderBytes = 13;
constexpr uint8_t kTypeAppend = 1;
constexpr uint8_t kTypeAck = 2;
constexpr uint8_t kTypeNextId = 3;
// The largest body a valid record can have.
constexpr uint64_t kMaxBodyBytes =
    8 + 4 + 4 + Outbox::kMaxKindBytes + Outbox::kMaxKeyBytes + Outbox::kMaxPayloadBytes;

// CRC32C (Castagnoli), reflected polynomial 0x82F63B78; CRC32C("123456789") == 0xE3069283.
constexpr std::array<uint32_t, 256> MakeCrcTable() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrcTable = MakeCrcTable();

uint32_t Crc32c(std::string_view data) {
  uint32_t c = ~0u;
  for (unsigned char b : data) c = kCrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
  return ~c;
}

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void PutU64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
uint32_t GetU32(std::string_view in, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}
uint64_t GetU64(std::string_view in, size_t at) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(in[at + i]);
  return v;
}

// Appends one framed record (header + body) to `out`.
void PutRecord(std::string& out, uint8_t type, std::string_view body) {
  std::string header;
  PutU32(header, static_cast<uint32_t>(body.size()));
  header.push_back(static_cast<char>(type));
  PutU32(header, Crc32c(body));
  PutU32(header, Crc32c(header));
  out += header;
  out += body;
}

std::string AppendRecord(const OutboxRecord& r) {
  std::string body;
  PutU64(body, r.id);
  PutU32(body, static_cast<uint32_t>(r.kind.size()));
  PutU32(body, static_cast<uint32_t>(r.key.size()));
  body += r.kind;
  body += r.key;
  body += r.payload;
  std::string out;
  PutRecord(out, kTypeAppend, body);
  return out;
}

std::string IdRecord(uint8_t type, uint64_t id) {
  std::string body;
  PutU64(body, id);
  std::string out;
  PutRecord(out, type, body);
  return out;
}

// A record framed validly at `at` in `data` (CRCs match, body within the data).
struct Frame {
  uint8_t type = 0;
  std::string_view body;
  size_t size = 0;  // header + body
};

// Why a frame is not valid.
enum class FrameError { kNone, kShortHeader, kBadHeader, kPastEnd, kBadBody };

FrameError ParseFrame(std::string_view data, size_t at, Frame* frame) {
  if (data.size() - at < kHeaderBytes) return FrameError::kShortHeader;
  const std::string_view header = data.substr(at, kHeaderBytes);
  if (Crc32c(header.substr(0, 9)) != GetU32(header, 9)) return FrameError::kBadHeader;
  const uint64_t body_len = GetU32(header, 0);
  if (body_len > kMaxBodyBytes) return FrameError::kBadHeader;
  if (body_len > data.size() - at - kHeaderBytes) return FrameError::kPastEnd;
  frame->type = static_cast<uint8_t>(header[4]);
  frame->body = data.substr(at + kHeaderBytes, body_len);
  frame->size = kHeaderBytes + body_len;
  if (Crc32c(frame->body) != GetU32(header, 5)) return FrameError::kBadBody;
  return FrameError::kNone;
}

// Where the next valid record starts at or after `from`; npos when none does.
size_t NextValidFrame(std::string_view data, size_t from) {
  Frame frame;
  for (size_t at = from; at + kHeaderBytes <= data.size(); ++at) {
    if (ParseFrame(data, at, &frame) == FrameError::kNone) return at;
  }
  return std::string_view::npos;
}

// The extent (header + body) of a possibly damaged record at `at` that must end by `end`, or 0 when it
// cannot be told: the header's length when the header checks out, or when the body of that length matches
// the header's body CRC (the type or a CRC byte was damaged); else, the length being the damaged field, the
// first body that matches the body CRC and ends at `end` or where a valid record starts (one pass of an
// incremental CRC, so that a payload's bytes are not searched for frames).
size_t DamagedExtent(std::string_view data, size_t at, size_t end) {
  if (end - at < kHeaderBytes) return 0;
  const std::string_view header = data.substr(at, kHeaderBytes);
  const uint64_t body_len = GetU32(header, 0);
  const uint32_t body_crc = GetU32(header, 5);
  const bool header_ok = Crc32c(header.substr(0, 9)) == GetU32(header, 9);
  if (body_len <= end - at - kHeaderBytes &&
      (header_ok || Crc32c(data.substr(at + kHeaderBytes, body_len)) == body_crc)) {
    return kHeaderBytes + body_len;
  }
  uint32_t state = ~0u;
  Frame frame;
  for (size_t pos = at + kHeaderBytes;; ++pos) {
    if (~state == body_crc && (pos == end || ParseFrame(data, pos, &frame) == FrameError::kNone)) return pos - at;
    if (pos == end) return 0;
    state = kCrcTable[(state ^ static_cast<unsigned char>(data[pos])) & 0xFF] ^ (state >> 8);
  }
}

// The id, kind and key of an append record whose body starts at `body` (possibly cut short or damaged), when
// they are there and within Append's limits.
std::optional<OutboxLostRecord> ReadLost(std::string_view body) {
  if (body.size() < 16) return std::nullopt;
  const uint64_t kind_len = GetU32(body, 8);
  const uint64_t key_len = GetU32(body, 12);
  if (kind_len == 0 || kind_len > Outbox::kMaxKindBytes || key_len == 0 || key_len > Outbox::kMaxKeyBytes ||
      kind_len + key_len > body.size() - 16) {
    return std::nullopt;
  }
  return OutboxLostRecord{GetU64(body, 0), std::string(body.substr(16, kind_len)),
                          std::string(body.substr(16 + kind_len, key_len))};
}

absl::Status WriteAll(int fd, std::string_view bytes, uint64_t offset, std::string_view what) {
  while (!bytes.empty()) {
    const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, what);
    }
    bytes.remove_prefix(static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadAll(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "fstat " + path);
  std::string data(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::pread(fd, data.data() + done, data.size() - done, static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read " + path);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  data.resize(done);
  return data;
}

absl::Status Fsync(int fd, std::string_view what) {
  if (::fsync(fd) != 0) return ErrnoToStatus(errno, std::string("fsync ") + std::string(what));
  return absl::OkStatus();
}

// Writes `contents` to dir/journal.tmp, fsyncs it, renames it over dir/`name` and returns its fd. The caller
// fsyncs the directory. On failure the temp file is removed and dir/`name` is untouched.
absl::StatusOr<UniqueFd> ReplaceJournalNamed(int dir_fd, const std::string& dir, const std::string& name,
                                             std::string_view contents) {
  const std::string temp_path = dir + "/" + kTempName;
  UniqueFd fd(::openat(dir_fd, kTempName, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return ErrnoToStatus(errno, "create " + temp_path);
  absl::Status status = WriteAll(fd.get(), contents, 0, "write " + temp_path);
  if (status.ok()) status = Fsync(fd.get(), temp_path);
  if (status.ok() && ::renameat(dir_fd, kTempName, dir_fd, name.c_str()) != 0) {
    status = ErrnoToStatus(errno, "rename " + temp_path);
  }
  if (!status.ok()) {
    ::unlinkat(dir_fd, kTempName, 0);
    return status;
  }
  return fd;
}

absl::StatusOr<UniqueFd> ReplaceJournal(int dir_fd, const std::string& dir, std::string_view contents) {
  return ReplaceJournalNamed(dir_fd, dir, kJournalName, contents);
}

// The journal replayed into memory.
struct Replay {
  std::map<uint64_t, OutboxRecord> records;
  std::map<uint64_t, uint64_t> record_bytes;
  uint64_t next_id = 1;
  uint64_t dead_bytes = 0;
  uint64_t valid_size = 0;  // where the torn tail (if any) starts
  std::optional<OutboxLostRecord> torn;
  std::optional<OutboxDamage> damage;  // salvage only
};

// Replays a journal's bytes into a Replay, one record at a time. Damage is an error unless `salvage`, when it
// is recorded in replay.damage and replay goes on at the next valid record.
class JournalReplayer {
 public:
  JournalReplayer(std::string_view data, const std::string& path, bool salvage)
      : data_(data), path_(path), salvage_(salvage) {}

  absl::StatusOr<Replay> Run() {
    ASSIGN_OR_RETURN(size_t at, SkipBadMagic());
    while (at < data_.size()) {
      Frame frame;
      const FrameError error = ParseFrame(data_, at, &frame);
      if (error == FrameError::kPastEnd) {  // a trusted header, its body cut short: a torn tail
        replay_.torn = ReadLost(data_.substr(at + kHeaderBytes));
        break;
      }
      if (error != FrameError::kNone) {
        ASSIGN_OR_RETURN(const size_t next, Resync(at, error, frame));
        if (next == std::string_view::npos) break;
        at = next;
        continue;
      }
      RETURN_IF_ERROR(Apply(frame, at));
      at += frame.size;
    }
    replay_.valid_size = at;
    return std::move(replay_);
  }

 private:
  // Records the damaged span [at, end) (or refuses it): names the records in it whose keys can be read.
  absl::Status Damaged(size_t at, size_t end, std::string what) {
    if (!salvage_) return absl::DataLossError(ToAbsl(path_ + ": " + what));
    if (!replay_.damage) {
      replay_.damage.emplace();
      replay_.damage->what = std::move(what);
      replay_.damage->offset = at;
    }
    OutboxDamage& d = *replay_.damage;
    d.bytes += end - at;
    // The smallest append record that names a lease: a header and a body of id, lengths, 1-byte kind and key.
    constexpr size_t kMinNamingRecord = kHeaderBytes + 16 + 2;
    while (at < end) {
      if (end - at < kMinNamingRecord) break;
      const size_t extent = DamagedExtent(data_, at, end);
      const size_t body_end = extent == 0 ? end : at + extent;
      std::optional<OutboxLostRecord> lost = ReadLost(data_.substr(at + kHeaderBytes, body_end - at - kHeaderBytes));
      if (lost) {
        d.lost.push_back(std::move(*lost));
      } else {
        d.unreadable = true;
      }
      if (extent == 0) {
        d.unreadable = true;  // where this record ends, and whether others follow it, is lost
        break;
      }
      at += extent;
    }
    return absl::OkStatus();
  }

  // Where the records start: after the magic, or (salvaging a file without it) at the first valid record.
  absl::StatusOr<size_t> SkipBadMagic() {
    if (data_.size() >= kMagic.size() && data_.substr(0, kMagic.size()) == kMagic) return kMagic.size();
    const std::string what = data_.empty() ? "an empty file, not an outbox journal (no magic at offset 0)"
                                           : "not an outbox journal (bad magic at offset 0)";
    // Salvage: whatever valid records the file holds, wherever they start.
    size_t next = data_.size() < kMagic.size() ? std::string_view::npos : NextValidFrame(data_, kMagic.size());
    RETURN_IF_ERROR(Damaged(0, data_.size() < kMagic.size() ? data_.size() : kMagic.size(), what));
    // Not one valid record in it (an empty file too): whatever it held is gone, names and all.
    if (next == std::string_view::npos) {
      next = data_.size();
      replay_.damage->unreadable = true;
    }
    if (next > kMagic.size()) RETURN_IF_ERROR(Damaged(kMagic.size(), next, what));
    return next;
  }

  // A record at `at` that does not parse: the offset of the next valid record, or npos when none follows
  // (a torn tail, recorded).
  absl::StatusOr<size_t> Resync(size_t at, FrameError error, const Frame& frame) {
    // Search for the next valid record after this one's extent when it can be told (a frame with a valid
    // header but a bad body has a trusted one), so that a payload's bytes are not searched.
    const size_t extent = error == FrameError::kBadBody ? frame.size : DamagedExtent(data_, at, data_.size());
    size_t next = extent == 0 ? std::string_view::npos : NextValidFrame(data_, at + extent);
    if (next == std::string_view::npos) next = NextValidFrame(data_, at + 1);
    if (next == std::string_view::npos) {
      // A torn tail: the record it cut short may still name its key.
      if (data_.size() - at >= kHeaderBytes) {
        const size_t body_end = extent == 0 ? data_.size() : at + extent;
        replay_.torn = ReadLost(data_.substr(at + kHeaderBytes, body_end - at - kHeaderBytes));
      }
      return std::string_view::npos;
    }
    RETURN_IF_ERROR(
        Damaged(at, next, "corrupt record at offset " + std::to_string(at) + " (valid records follow it)"));
    return next;
  }

  // A valid frame at `at`: one record applied, or (a record that does not decode) damage.
  absl::Status Apply(const Frame& frame, size_t at) {
    const auto corrupt = [&](std::string_view why) {
      return Damaged(at, at + frame.size, "bad record at offset " + std::to_string(at) + ": " + std::string(why));
    };
    switch (frame.type) {
      case kTypeAppend:
        return ApplyAppend(frame, corrupt);
      case kTypeAck:
        return ApplyAck(frame, corrupt);
      case kTypeNextId: {
        if (frame.body.size() != 8) return corrupt("bad next_id record");
        replay_.next_id = std::max(replay_.next_id, GetU64(frame.body, 0));
        return absl::OkStatus();
      }
      default:
        return corrupt("unknown record type " + std::to_string(frame.type));
    }
  }

  template <typename Corrupt>
  absl::Status ApplyAppend(const Frame& frame, const Corrupt& corrupt) {
    if (frame.body.size() < 16) return corrupt("short append record");
    OutboxRecord record;
    record.id = GetU64(frame.body, 0);
    const uint64_t kind_len = GetU32(frame.body, 8);
    const uint64_t key_len = GetU32(frame.body, 12);
    if (kind_len + key_len > frame.body.size() - 16) return corrupt("kind/key lengths past the record");
    if (record.id <= last_append_id_) return corrupt("id not increasing");
    record.kind = std::string(frame.body.substr(16, kind_len));
    record.key = std::string(frame.body.substr(16 + kind_len, key_len));
    record.payload = std::string(frame.body.substr(16 + kind_len + key_len));
    if (record.kind.empty() || record.kind.size() > Outbox::kMaxKindBytes || record.key.empty() ||
        record.key.size() > Outbox::kMaxKeyBytes || record.payload.size() > Outbox::kMaxPayloadBytes) {
      return corrupt("kind, key or payload outside Append's limits");
    }
    last_append_id_ = record.id;
    replay_.next_id = std::max(replay_.next_id, record.id + 1);
    replay_.record_bytes[record.id] = frame.size;
    replay_.records.emplace(record.id, std::move(record));
    return absl::OkStatus();
  }

  template <typename Corrupt>
  absl::Status ApplyAck(const Frame& frame, const Corrupt& corrupt) {
    if (frame.body.size() != 8) return corrupt("bad ack record");
    const uint64_t id = GetU64(frame.body, 0);
    replay_.dead_bytes += frame.size;
    if (auto it = replay_.records.find(id); it != replay_.records.end()) {
      replay_.dead_bytes += replay_.record_bytes[id];
      replay_.record_bytes.erase(id);
      replay_.records.erase(it);
    }
    // A damaged record this ack acknowledged was delivered: nothing of it is lost.
    if (replay_.damage) {
      std::erase_if(replay_.damage->lost, [id](const OutboxLostRecord& r) { return r.id == id; });
    }
    return absl::OkStatus();
  }

  const std::string_view data_;
  const std::string& path_;
  const bool salvage_;
  Replay replay_;
  uint64_t last_append_id_ = 0;  // appends are in id order (compaction keeps them so)
};

absl::StatusOr<Replay> ReplayJournal(std::string_view data, const std::string& path, bool salvage) {
  return JournalReplayer(data, path, salvage).Run();
}

// Takes the outbox's lock file (flock), waiting briefly for a previous agent's, and writes this pid in it.
absl::StatusOr<UniqueFd> TakeLock(int dir_fd, const std::string& dir) {
  const std::string lock_path = dir + "/" + kLockName;
  UniqueFd lock_fd(::openat(dir_fd, kLockName, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!lock_fd) return ErrnoToStatus(errno, "open " + lock_path);
  // NOTE: a previous agent SIGKILLed while a jail was being set up still "holds" the flock for a few
  // milliseconds through that jail child (it has a copy of the agent's fd table until its execve), so a
  // restart right away waits a little before calling the lock another agent's.
  const auto lock_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK &&
         std::chrono::steady_clock::now() < lock_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (::flock(lock_fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      // The owner wrote its pid into the lock file (a holder that is not an Outbox may not have).
      std::string holder;
      char buf[32] = {};
      const ssize_t n = ::pread(lock_fd.get(), buf, sizeof(buf) - 1, 0);
      if (n > 0) {
        std::string_view text(buf, static_cast<size_t>(n));
        while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.remove_suffix(1);
        if (!text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos) {
          holder = " (held by pid " + std::string(text) + ")";
        }
      }
      return absl::FailedPreconditionError(
          ToAbsl("outbox " + lock_path + " is locked" + holder + ": another agent owns this outbox"));
    }
    return ErrnoToStatus(errno, "flock " + lock_path);
  }
  {
    // For the error above in the next process that finds the lock taken. Best effort: the lock is what counts.
    const std::string pid = std::to_string(::getpid()) + "\n";
    if (::ftruncate(lock_fd.get(), 0) == 0) (void)WriteAll(lock_fd.get(), pid, 0, "write " + lock_path);
  }
  return lock_fd;
}

// Opens the journal (created when there is none). One that is not a regular file is refused, or set aside
// and replaced by an empty journal when salvaging (then *not_a_file says so).
absl::StatusOr<UniqueFd> OpenJournal(int dir_fd, const std::string& dir, bool salvage,
                                     const std::string& set_aside_name, std::optional<OutboxDamage>* not_a_file) {
  const std::string journal_path = dir + "/" + kJournalName;
  UniqueFd fd(::openat(dir_fd, kJournalName, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd && errno == ENOENT) {
    // Created whole by rename, so a journal without its magic is never a crash's leftover.
    ASSIGN_OR_RETURN(fd, ReplaceJournal(dir_fd, dir, kMagic));
    RETURN_IF_ERROR(Fsync(dir_fd, dir));
  }
  struct stat st;
  const int open_errno = errno;
  if ((!fd && (open_errno == EISDIR || open_errno == ELOOP)) ||
      (fd && ::fstat(fd.get(), &st) == 0 && !S_ISREG(st.st_mode))) {
    // Not a regular file (a directory, a symlink, a device): no record can be read from it.
    const std::string what = "not a regular file, not an outbox journal (offset 0)";
    if (!salvage) return absl::DataLossError(ToAbsl(journal_path + ": " + what));
    fd = UniqueFd();
    if (::renameat(dir_fd, kJournalName, dir_fd, set_aside_name.c_str()) != 0) {
      return ErrnoToStatus(errno, "set the damaged " + journal_path + " aside");
    }
    not_a_file->emplace();
    (*not_a_file)->what = what;
    (*not_a_file)->unreadable = true;  // whatever the journal held is gone
    (*not_a_file)->set_aside = dir + "/" + set_aside_name;
    ASSIGN_OR_RETURN(fd, ReplaceJournal(dir_fd, dir, kMagic));
    RETURN_IF_ERROR(Fsync(dir_fd, dir));
  }
  if (!fd) return ErrnoToStatus(open_errno, "open " + journal_path);
  // Opened non-blocking only so that a FIFO put there could not hang Open.
  if (const int flags = ::fcntl(fd.get(), F_GETFL); flags >= 0) ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

// After replay: a damaged journal is kept aside for a post-mortem and replaced by the compacted form of what
// replayed (*fd becomes the new one); a torn tail is truncated away.
absl::Status SettleJournal(int dir_fd, const std::string& dir, const std::string& set_aside_name,
                           const std::string& data, Replay* replay, UniqueFd* fd) {
  const std::string journal_path = dir + "/" + kJournalName;
  if (replay->damage) {
    // Keep the damaged journal for a post-mortem, then start from what replayed: the compacted form of it.
    if (!data.empty()) {
      RETURN_IF_ERROR(ReplaceJournalNamed(dir_fd, dir, set_aside_name, data).status());
      replay->damage->set_aside = dir + "/" + set_aside_name;
    }
    std::string contents(kMagic);
    contents += IdRecord(kTypeNextId, replay->next_id);
    replay->record_bytes.clear();
    for (const auto& [id, record] : replay->records) {
      const std::string bytes = AppendRecord(record);
      replay->record_bytes[id] = bytes.size();
      contents += bytes;
    }
    ASSIGN_OR_RETURN(*fd, ReplaceJournal(dir_fd, dir, contents));
    RETURN_IF_ERROR(Fsync(dir_fd, dir));
    replay->valid_size = contents.size();
    replay->dead_bytes = 0;
  } else if (replay->valid_size < data.size()) {
    if (::ftruncate(fd->get(), static_cast<off_t>(replay->valid_size)) != 0) {
      return ErrnoToStatus(errno, "truncate the torn tail of " + journal_path);
    }
    RETURN_IF_ERROR(Fsync(fd->get(), journal_path));
  }
  return absl::OkStatus();
}

}  // namespace

Outbox::Outbox(std::string dir, Options options, UniqueFd dir_fd, UniqueFd lock_fd, UniqueFd fd)
    : dir_(std::move(dir)),
      journal_path_(dir_ + "/" + kJournalName),
      options_(options),
      dir_fd_(std::move(dir_fd)),
      lock_fd_(std::move(lock_fd)),
      fd_(std::move(fd)) {}

Outbox::~Outbox() = default;

absl::StatusOr<std::unique_ptr<Outbox>> Outbox::Open(std::string_view dir_view, Options options) {
  std::string dir(dir_view);
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty()) return absl::InvalidArgumentError("outbox directory is empty");
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoToStatus(errno, "mkdir " + dir);
  UniqueFd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_fd) return ErrnoToStatus(errno, "open " + dir);

  ASSIGN_OR_RETURN(UniqueFd lock_fd, TakeLock(dir_fd.get(), dir));
  // A compaction that a crash interrupted before its rename: the journal is the old one, still whole.
  if (::unlinkat(dir_fd.get(), kTempName, 0) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "unlink " + dir + "/" + kTempName);
  }

  const bool salvage = options.on_damage == OutboxDamagePolicy::kSalvage;
  const std::string journal_path = dir + "/" + kJournalName;
  const std::string set_aside_name = std::string(kJournalName) + ".damaged-" +
                                     std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                        std::chrono::system_clock::now().time_since_epoch())
                                                        .count());
  std::optional<OutboxDamage> not_a_file;
  ASSIGN_OR_RETURN(UniqueFd fd, OpenJournal(dir_fd.get(), dir, salvage, set_aside_name, &not_a_file));
  ASSIGN_OR_RETURN(const std::string data, ReadAll(fd.get(), journal_path));
  ASSIGN_OR_RETURN(Replay replay, ReplayJournal(data, journal_path, salvage));
  RETURN_IF_ERROR(SettleJournal(dir_fd.get(), dir, set_aside_name, data, &replay, &fd));
  std::unique_ptr<Outbox> outbox(
      new Outbox(dir, options, std::move(dir_fd), std::move(lock_fd), std::move(fd)));
  outbox->dropped_tail_bytes_ = replay.damage ? 0 : data.size() - replay.valid_size;
  outbox->torn_record_ = std::move(replay.torn);
  outbox->damage_ = not_a_file ? std::move(not_a_file) : std::move(replay.damage);
  absl::MutexLock lock(&outbox->mu_);
  outbox->file_size_ = replay.valid_size;
  outbox->dead_bytes_ = replay.dead_bytes;
  outbox->next_id_ = replay.next_id;
  for (auto& [id, record] : replay.records) {
    outbox->pending_.emplace(id, Entry{std::move(record), replay.record_bytes[id]});
  }
  return outbox;
}

absl::Status Outbox::WriteDurablyLocked(const std::string& bytes) {
  RETURN_IF_ERROR(broken_);
  absl::Status status = WriteAll(fd_.get(), bytes, file_size_, "write " + journal_path_);
  if (!status.ok()) {
    // Roll back a partial write so the next record starts on a clean frame.
    if (::ftruncate(fd_.get(), static_cast<off_t>(file_size_)) != 0) {
      broken_ = Annotate(status, "outbox journal in an unknown state after a failed write and rollback");
    }
    return status;
  }
  status = Fsync(fd_.get(), journal_path_);
  if (!status.ok()) {
    broken_ = Annotate(status, "outbox journal in an unknown state after a failed fsync; reopen it");
    return status;
  }
  file_size_ += bytes.size();
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Outbox::Append(std::string_view kind, std::string_view key, std::string_view payload) {
  if (kind.empty() || kind.size() > kMaxKindBytes) {
    return absl::InvalidArgumentError(
        ToAbsl("outbox record kind must be 1.." + std::to_string(kMaxKindBytes) + " bytes, got " +
               std::to_string(kind.size())));
  }
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        ToAbsl("outbox record key must be 1.." + std::to_string(kMaxKeyBytes) + " bytes, got " +
               std::to_string(key.size())));
  }
  if (payload.size() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        ToAbsl("outbox record payload is " + std::to_string(payload.size()) + " bytes, over the limit of " +
               std::to_string(kMaxPayloadBytes)));
  }
  OutboxRecord record{0, std::string(kind), std::string(key), std::string(payload)};
  absl::MutexLock lock(&mu_);
  // NOTE: an id is used even when the write fails, so an id that may have reached the disk is never reused.
  record.id = next_id_++;
  const std::string bytes = AppendRecord(record);
  RETURN_IF_ERROR(WriteDurablyLocked(bytes));
  const uint64_t id = record.id;
  pending_.emplace(id, Entry{std::move(record), bytes.size()});
  return id;
}

absl::Status Outbox::Ack(uint64_t id) {
  absl::MutexLock lock(&mu_);
  const auto it = pending_.find(id);
  if (it == pending_.end()) return broken_;
  const std::string bytes = IdRecord(kTypeAck, id);
  RETURN_IF_ERROR(WriteDurablyLocked(bytes));
  dead_bytes_ += it->second.bytes + bytes.size();
  pending_.erase(it);
  if (dead_bytes_ > options_.compact_after_bytes) return CompactLocked();
  return absl::OkStatus();
}

std::vector<OutboxRecord> Outbox::Pending() const {
  absl::MutexLock lock(&mu_);
  std::vector<OutboxRecord> out;
  out.reserve(pending_.size());
  for (const auto& [id, entry] : pending_) out.push_back(entry.record);
  return out;
}

size_t Outbox::pending_count() const {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

std::vector<OutboxRecord> Outbox::Pending(std::string_view kind) const {
  absl::MutexLock lock(&mu_);
  std::vector<OutboxRecord> out;
  for (const auto& [id, entry] : pending_) {
    if (entry.record.kind == kind) out.push_back(entry.record);
  }
  return out;
}

size_t Outbox::pending_count(std::string_view kind) const {
  absl::MutexLock lock(&mu_);
  size_t n = 0;
  for (const auto& [id, entry] : pending_) n += entry.record.kind == kind ? 1 : 0;
  return n;
}

absl::Status Outbox::Compact() {
  absl::MutexLock lock(&mu_);
  return CompactLocked();
}

absl::Status Outbox::CompactLocked() {
  RETURN_IF_ERROR(broken_);
  std::string contents(kMagic);
  contents += IdRecord(kTypeNextId, next_id_);
  for (const auto& [id, entry] : pending_) contents += AppendRecord(entry.record);
  ASSIGN_OR_RETURN(UniqueFd fd, ReplaceJournal(dir_fd_.get(), dir_, contents));
  // From here the new journal is the one in the directory, so it is the one to append to.
  fd_ = std::move(fd);
  file_size_ = contents.size();
  dead_bytes_ = 0;
  if (absl::Status status = Fsync(dir_fd_.get(), dir_); !status.ok()) {
    // Until the rename is durable, a crash may bring back the old journal without later appends.
    broken_ = Annotate(status, "outbox compaction's rename may not be durable; reopen the outbox");
    return broken_;
  }
  return absl::OkStatus();
}

}  // namespace sbx::agent
