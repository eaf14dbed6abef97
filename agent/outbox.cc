#include "agent/outbox.h"

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

#include "sandbox/status.h"

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

// Whether any valid record starts at or after `from`.
bool AnyValidFrameFrom(std::string_view data, size_t from) {
  Frame frame;
  for (size_t at = from; at + kHeaderBytes <= data.size(); ++at) {
    if (ParseFrame(data, at, &frame) == FrameError::kNone) return true;
  }
  return false;
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

// Writes `contents` to dir/journal.tmp, fsyncs it, renames it over dir/journal and returns its fd. The caller
// fsyncs the directory. On failure the temp file is removed and the journal is untouched.
absl::StatusOr<UniqueFd> ReplaceJournal(int dir_fd, const std::string& dir, std::string_view contents) {
  const std::string temp_path = dir + "/" + kTempName;
  UniqueFd fd(::openat(dir_fd, kTempName, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return ErrnoToStatus(errno, "create " + temp_path);
  absl::Status status = WriteAll(fd.get(), contents, 0, "write " + temp_path);
  if (status.ok()) status = Fsync(fd.get(), temp_path);
  if (status.ok() && ::renameat(dir_fd, kTempName, dir_fd, kJournalName) != 0) {
    status = ErrnoToStatus(errno, "rename " + temp_path);
  }
  if (!status.ok()) {
    ::unlinkat(dir_fd, kTempName, 0);
    return status;
  }
  return fd;
}

// The journal replayed into memory.
struct Replay {
  std::map<uint64_t, OutboxRecord> records;
  std::map<uint64_t, uint64_t> record_bytes;
  uint64_t next_id = 1;
  uint64_t dead_bytes = 0;
  uint64_t valid_size = 0;  // where the torn tail (if any) starts
};

absl::StatusOr<Replay> ReplayJournal(std::string_view data, const std::string& path) {
  if (data.size() < kMagic.size() || data.substr(0, kMagic.size()) != kMagic) {
    return absl::DataLossError(ToAbsl(path + ": not an outbox journal (bad magic at offset 0)"));
  }
  Replay replay;
  size_t at = kMagic.size();
  uint64_t last_append_id = 0;  // appends are in id order (compaction keeps them so)
  while (at < data.size()) {
    Frame frame;
    const FrameError error = ParseFrame(data, at, &frame);
    if (error == FrameError::kPastEnd) break;  // a trusted header, its body cut short: a torn tail
    if (error != FrameError::kNone) {
      // A frame with a valid header but a bad body has a trusted extent: search after it.
      const size_t resume = error == FrameError::kBadBody ? at + frame.size : at + 1;
      if (AnyValidFrameFrom(data, resume)) {
        return absl::DataLossError(ToAbsl(path + ": corrupt record at offset " + std::to_string(at) +
                                          " (valid records follow it)"));
      }
      break;  // a torn tail
    }
    const auto corrupt = [&](std::string_view why) {
      return absl::DataLossError(
          ToAbsl(path + ": bad record at offset " + std::to_string(at) + ": " + std::string(why)));
    };
    switch (frame.type) {
      case kTypeAppend: {
        if (frame.body.size() < 16) return corrupt("short append record");
        OutboxRecord record;
        record.id = GetU64(frame.body, 0);
        const uint64_t kind_len = GetU32(frame.body, 8);
        const uint64_t key_len = GetU32(frame.body, 12);
        if (kind_len + key_len > frame.body.size() - 16) return corrupt("kind/key lengths past the record");
        if (record.id <= last_append_id) return corrupt("id not increasing");
        record.kind = std::string(frame.body.substr(16, kind_len));
        record.key = std::string(frame.body.substr(16 + kind_len, key_len));
        record.payload = std::string(frame.body.substr(16 + kind_len + key_len));
        last_append_id = record.id;
        replay.next_id = std::max(replay.next_id, record.id + 1);
        replay.record_bytes[record.id] = frame.size;
        replay.records.emplace(record.id, std::move(record));
        break;
      }
      case kTypeAck: {
        if (frame.body.size() != 8) return corrupt("bad ack record");
        const uint64_t id = GetU64(frame.body, 0);
        replay.dead_bytes += frame.size;
        if (auto it = replay.records.find(id); it != replay.records.end()) {
          replay.dead_bytes += replay.record_bytes[id];
          replay.record_bytes.erase(id);
          replay.records.erase(it);
        }
        break;
      }
      case kTypeNextId: {
        if (frame.body.size() != 8) return corrupt("bad next_id record");
        replay.next_id = std::max(replay.next_id, GetU64(frame.body, 0));
        break;
      }
      default:
        return corrupt("unknown record type " + std::to_string(frame.type));
    }
    at += frame.size;
  }
  replay.valid_size = at;
  return replay;
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

  const std::string lock_path = dir + "/" + kLockName;
  UniqueFd lock_fd(::openat(dir_fd.get(), kLockName, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
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
      return absl::FailedPreconditionError(
          ToAbsl("outbox " + lock_path + " is locked: another agent owns this outbox"));
    }
    return ErrnoToStatus(errno, "flock " + lock_path);
  }

  // A compaction that a crash interrupted before its rename: the journal is the old one, still whole.
  if (::unlinkat(dir_fd.get(), kTempName, 0) != 0 && errno != ENOENT) {
    return ErrnoToStatus(errno, "unlink " + dir + "/" + kTempName);
  }

  const std::string journal_path = dir + "/" + kJournalName;
  UniqueFd fd(::openat(dir_fd.get(), kJournalName, O_RDWR | O_CLOEXEC));
  if (!fd && errno == ENOENT) {
    // Created whole by rename, so a journal without its magic is never a crash's leftover.
    ASSIGN_OR_RETURN(fd, ReplaceJournal(dir_fd.get(), dir, kMagic));
    RETURN_IF_ERROR(Fsync(dir_fd.get(), dir));
  }
  if (!fd) return ErrnoToStatus(errno, "open " + journal_path);

  ASSIGN_OR_RETURN(const std::string data, ReadAll(fd.get(), journal_path));
  ASSIGN_OR_RETURN(Replay replay, ReplayJournal(data, journal_path));
  if (replay.valid_size < data.size()) {
    if (::ftruncate(fd.get(), static_cast<off_t>(replay.valid_size)) != 0) {
      return ErrnoToStatus(errno, "truncate the torn tail of " + journal_path);
    }
    RETURN_IF_ERROR(Fsync(fd.get(), journal_path));
  }

  std::unique_ptr<Outbox> outbox(
      new Outbox(dir, options, std::move(dir_fd), std::move(lock_fd), std::move(fd)));
  outbox->dropped_tail_bytes_ = data.size() - replay.valid_size;
  std::lock_guard lock(outbox->mu_);
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
  std::lock_guard lock(mu_);
  // NOTE: an id is used even when the write fails, so an id that may have reached the disk is never reused.
  record.id = next_id_++;
  const std::string bytes = AppendRecord(record);
  RETURN_IF_ERROR(WriteDurablyLocked(bytes));
  const uint64_t id = record.id;
  pending_.emplace(id, Entry{std::move(record), bytes.size()});
  return id;
}

absl::Status Outbox::Ack(uint64_t id) {
  std::lock_guard lock(mu_);
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
  std::lock_guard lock(mu_);
  std::vector<OutboxRecord> out;
  out.reserve(pending_.size());
  for (const auto& [id, entry] : pending_) out.push_back(entry.record);
  return out;
}

size_t Outbox::pending_count() const {
  std::lock_guard lock(mu_);
  return pending_.size();
}

absl::Status Outbox::Compact() {
  std::lock_guard lock(mu_);
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
