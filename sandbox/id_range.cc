#include "sandbox/id_range.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::sandbox {

namespace {

// Creates `dir` (and missing parents, 0755) and checks that it is a directory owned by root that only root
// can write: whoever can create files in it could take every slot (and a non-directory or symlink there is
// not ours).
absl::Status PrepareLockDir(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i != dir.size() && dir[i] != '/') continue;
    const std::string prefix = dir.substr(0, i);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoToStatus(errno, absl::StrCat("id range: mkdir ", prefix));
    }
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) return ErrnoToStatus(errno, absl::StrCat("id range: lstat ", dir));
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("id range: the lock directory ", dir,
                     " must be a directory (not a symlink) owned by root and writable by root only"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<IdRange> IdRange::Acquire(uint32_t host_base, uint32_t slots, std::string_view lock_dir) {
  IdRange range;
  if (geteuid() != 0) {
    range.rootless_ = true;
    range.host_uid_ = geteuid();
    range.host_gid_ = getegid();
    return range;
  }
  if (slots == 0 || uint64_t{host_base} + uint64_t{slots} * kIdsPerJail > 0xFFFFFFFEull) {
    return absl::InvalidArgumentError(
        absl::StrCat("id range: base ", host_base, " with ", slots, " slots overflows the uid space"));
  }
  if (lock_dir.empty() || lock_dir[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("id range: lock directory \"", std::string(lock_dir), "\" is not absolute"));
  }
  std::string root(lock_dir);
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  RETURN_IF_ERROR(PrepareLockDir(root));
  const std::string dir = absl::StrCat(root, "/", host_base);
  RETURN_IF_ERROR(PrepareLockDir(dir));
  // Start at a random slot so concurrent agents rarely contend. (getrandom(2) directly: std::random_device
  // probes the CPU first, which costs a VM exit per start.)
  uint32_t seed = 0;
  if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) seed = static_cast<uint32_t>(getpid());
  const uint32_t start = seed % slots;
  for (uint32_t i = 0; i < slots; ++i) {
    const uint32_t slot = (start + i) % slots;
    const std::string path = absl::StrCat(dir, "/", slot, ".lock");
    // NOTE: never unlinked. Every lessee must lock the same inode; removing a file another agent holds would
    // let the next one create a new inode and lock it too.
    UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600));
    if (!fd) return ErrnoToStatus(errno, absl::StrCat("id range: open ", path));
    if (flock(fd.get(), LOCK_EX | LOCK_NB) == 0) {
      range.slot_ = static_cast<int>(slot);
      range.host_uid_ = host_base + slot * kIdsPerJail;
      range.host_gid_ = range.host_uid_;
      range.lock_ = std::move(fd);
      return range;
    }
    if (errno != EWOULDBLOCK) return ErrnoToStatus(errno, absl::StrCat("id range: flock ", path));
  }
  return absl::ResourceExhaustedError(absl::StrCat("id range: all ", slots, " uid slots are in use (", dir, ")"));
}

std::string IdRange::UidMap(uint32_t inside_uid) const {
  if (rootless_) return absl::StrCat(inside_uid, " ", host_uid_, " 1\n");
  return absl::StrCat("0 ", host_uid_, " ", kIdsPerJail, "\n");
}

std::string IdRange::GidMap(uint32_t inside_gid) const {
  if (rootless_) return absl::StrCat(inside_gid, " ", host_gid_, " 1\n");
  return absl::StrCat("0 ", host_gid_, " ", kIdsPerJail, "\n");
}

}  // namespace sbx::sandbox
