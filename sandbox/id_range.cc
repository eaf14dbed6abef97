#include "sandbox/id_range.h"

#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "sandbox/status.h"

namespace sbx::sandbox {

absl::StatusOr<IdRange> IdRange::Acquire(uint32_t host_base, uint32_t slots) {
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
  // Start at a random slot so concurrent agents rarely contend. (getrandom(2) directly: std::random_device
  // probes the CPU first, which costs a VM exit per start.)
  uint32_t seed = 0;
  if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) seed = static_cast<uint32_t>(getpid());
  const uint32_t start = seed % slots;
  for (uint32_t i = 0; i < slots; ++i) {
    const uint32_t slot = (start + i) % slots;
    UniqueFd sock(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!sock) return ErrnoToStatus(errno, "id range: socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string name = absl::StrCat("sandbox-agent/ids/", host_base, "/", slot);
    // Abstract namespace: sun_path[0] == '\0'.
    std::memcpy(addr.sun_path + 1, name.data(), name.size());
    const socklen_t len = offsetof(sockaddr_un, sun_path) + 1 + name.size();
    if (bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) {
      range.slot_ = static_cast<int>(slot);
      range.host_uid_ = host_base + slot * kIdsPerJail;
      range.host_gid_ = range.host_uid_;
      range.lock_ = std::move(sock);
      return range;
    }
    if (errno != EADDRINUSE) return ErrnoToStatus(errno, "id range: bind lock socket");
  }
  return absl::ResourceExhaustedError(absl::StrCat("id range: all ", slots, " uid slots are in use"));
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
