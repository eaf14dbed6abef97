#include "wire/landlock.h"

#include <linux/landlock.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

namespace sbx::init {

int CreateWorkloadRuleset() {
  // A ruleset must handle at least one access right. Device nodes cannot be made in the jail anyway, so
  // handling these two (with no rule allowing them) restricts nothing new: the domain is for its ptrace
  // scoping, which every domain has (Landlock ABI 1).
  landlock_ruleset_attr attr{};
  attr.handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_BLOCK;
  // ABI 1's struct size: accepted by every kernel with Landlock. (Newer fields, e.g. `scoped`, stay unused
  // on purpose: see landlock.h.)
  const long fd = syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0);
  return fd < 0 ? -errno : static_cast<int>(fd);
}

int EnterWorkloadDomain(int ruleset_fd) {
  // landlock_restrict_self needs no_new_privs (or CAP_SYS_ADMIN). The jail sets it before init runs; setting
  // it again is harmless and keeps this function correct on its own.
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return errno;
  if (syscall(SYS_landlock_restrict_self, ruleset_fd, 0) < 0) return errno;
  return 0;
}

bool LandlockMissing(int err) { return err == ENOSYS || err == EOPNOTSUPP; }

}  // namespace sbx::init
