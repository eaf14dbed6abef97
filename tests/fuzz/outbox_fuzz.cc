// Fuzzes the fleet outbox's journal replay (agent/outbox.h): the input is the journal file, Open replays it
// (torn tails truncated, corruption refused), and when it opens, what replay found must hold up: the pending
// records are within the limits Append enforces, ids increase, and a new Append gets an id above every one of
// them and survives a reopen. One private directory for the process (under TMPDIR: run.sh uses /dev/shm,
// as Open and Append fsync); the files are removed after each input.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "agent/outbox.h"
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = Dir();
  mkdir(dir.c_str(), 0700);
  WriteFile(dir + "/journal", data, size);
  {
    absl::StatusOr<std::unique_ptr<Outbox>> outbox = Outbox::Open(dir);
    if (outbox.ok()) {
      uint64_t last = 0;
      for (const sbx::agent::OutboxRecord& r : (*outbox)->Pending()) {
        Check(r.id > last);
        last = r.id;
        Check(!r.kind.empty() && r.kind.size() <= Outbox::kMaxKindBytes);
        Check(!r.key.empty() && r.key.size() <= Outbox::kMaxKeyBytes);
        Check(r.payload.size() <= Outbox::kMaxPayloadBytes);
      }
      const size_t pending = (*outbox)->pending_count();
      absl::StatusOr<uint64_t> id = (*outbox)->Append("fuzz", "k", "p");
      Check(id.ok() && *id > last);
      outbox->reset();
      absl::StatusOr<std::unique_ptr<Outbox>> again = Outbox::Open(dir);
      Check(again.ok() && (*again)->pending_count() == pending + 1);
    } else {
      Check(!outbox.status().message().empty());
    }
  }
  for (const char* f : {"/journal", "/journal.tmp", "/lock"}) unlink((dir + f).c_str());
  rmdir(dir.c_str());
  sbx::fuzz::CheckNoFdLeak();
  return 0;
}
