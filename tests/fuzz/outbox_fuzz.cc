// Fuzzes the fleet outbox's journal replay (agent/fleet/outbox.h): the input is the journal file, opened twice. A
// refusing Open replays it (torn tails truncated, damage refused); a salvaging Open must always open, with
// the damaged file set aside and a clean journal written. Whenever it opens, what replay found must hold up:
// the pending records (and the lost ones it names) are within the limits Append enforces, ids increase, and
// a new Append gets an id above every one of them and survives a strict reopen. One private directory for the
// process (under TMPDIR: run.sh uses /dev/shm, as Open and Append fsync); every file in it (the set-aside
// copies too) is removed after each input.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>

#include "agent/fleet/outbox.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using sbx::agent::Outbox;

void Check(bool ok) {
  if (!ok) std::abort();
}

const std::string& Dir() {
  static const std::string* dir = new std::string(sbx::fuzz::ScratchDir("sbx-outbox-fuzz") + "/outbox");
  return *dir;
}

void WriteFile(const std::string& path, const uint8_t* data, size_t size) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  Check(fd >= 0);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = write(fd, data + done, size - done);
    Check(n > 0);
    done += static_cast<size_t>(n);
  }
  close(fd);
}

// Checks what an opened outbox replayed and appends one record (the caller reopens it).
void CheckOpened(Outbox& outbox) {
  uint64_t last = 0;
  for (const sbx::agent::OutboxRecord& r : outbox.Pending()) {
    Check(r.id > last);
    last = r.id;
    Check(!r.kind.empty() && r.kind.size() <= Outbox::kMaxKindBytes);
    Check(!r.key.empty() && r.key.size() <= Outbox::kMaxKeyBytes);
    Check(r.payload.size() <= Outbox::kMaxPayloadBytes);
  }
  if (outbox.damage().has_value()) {
    for (const sbx::agent::OutboxLostRecord& r : outbox.damage()->lost) {
      Check(!r.kind.empty() && r.kind.size() <= Outbox::kMaxKindBytes);
      Check(!r.key.empty() && r.key.size() <= Outbox::kMaxKeyBytes);
    }
  }
  absl::StatusOr<uint64_t> id = outbox.Append("fuzz", "k", "p");
  Check(id.ok() && *id > last);
}

void RemoveAll(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d != nullptr) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      unlink((dir + "/" + e->d_name).c_str());
    }
    closedir(d);
  }
  rmdir(dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = Dir();
  std::optional<size_t> strict_pending;  // what a refusing Open kept, when it opened
  // Refused: opens (and then behaves) or says why.
  mkdir(dir.c_str(), 0700);
  WriteFile(dir + "/journal", data, size);
  {
    absl::StatusOr<std::unique_ptr<Outbox>> outbox = Outbox::Open(dir);
    if (outbox.ok()) {
      const size_t pending = (*outbox)->pending_count();
      strict_pending = pending;
      CheckOpened(**outbox);
      outbox->reset();
      absl::StatusOr<std::unique_ptr<Outbox>> again = Outbox::Open(dir);
      Check(again.ok() && (*again)->pending_count() == pending + 1);
    } else {
      Check(!outbox.status().message().empty());
    }
  }
  RemoveAll(dir);
  // Salvaged: always opens, keeps at least what a refusing Open would, and leaves a clean journal.
  mkdir(dir.c_str(), 0700);
  WriteFile(dir + "/journal", data, size);
  {
    sbx::agent::OutboxOptions salvage;
    salvage.on_damage = sbx::agent::OutboxDamagePolicy::kSalvage;
    absl::StatusOr<std::unique_ptr<Outbox>> outbox = Outbox::Open(dir, salvage);
    Check(outbox.ok());
    const size_t pending = (*outbox)->pending_count();
    // A journal a refusing Open took is not damaged: salvage keeps exactly the same.
    Check(!strict_pending || (*strict_pending == pending && !(*outbox)->damage().has_value()));
    CheckOpened(**outbox);
    outbox->reset();
    absl::StatusOr<std::unique_ptr<Outbox>> again = Outbox::Open(dir);
    Check(again.ok() && !(*again)->damage().has_value() && (*again)->pending_count() == pending + 1);
  }
  RemoveAll(dir);
  sbx::fuzz::CheckNoFdLeak();
  return 0;
}
