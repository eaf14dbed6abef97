// overwrite_init: the CVE-2019-5736 class (runc's host binary overwritten through /proc/self/exe). The jail's
// PID 1 is the host's own sandbox-init binary, bound read-only into every jail: if a workload could write it,
// every later jail (and the host) would run its code. Tries every way a same-uid workload has to write or
// replace it, and prints key=RESULT for each.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

namespace {

const char* Err(int err) {
  switch (err) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case ETXTBSY: return "ETXTBSY";
    case ENOENT: return "ENOENT";
    case EBUSY: return "EBUSY";
    case EXDEV: return "EXDEV";
    default: return strerror(err);
  }
}

void TryOpen(const char* key, const char* path, int flags) {
  const int fd = open(path, flags | O_CLOEXEC);
  if (fd >= 0) {
    // Opened for writing: say whether a write would land (it must never get here).
    const ssize_t n = write(fd, "", 0);
    printf("%s=OPENED%s\n", key, n == 0 ? "" : "_NOWRITE");
    close(fd);
    return;
  }
  printf("%s=%s\n", key, Err(errno));
}

}  // namespace

int main() {
  TryOpen("proc1_exe_write", "/proc/1/exe", O_WRONLY);
  TryOpen("proc1_exe_rdwr", "/proc/1/exe", O_RDWR);
  TryOpen("init_path_write", "/.sandbox/init", O_WRONLY);
  TryOpen("init_path_trunc", "/.sandbox/init", O_WRONLY | O_TRUNC);
  TryOpen("self_exe_write", "/proc/self/exe", O_WRONLY);
  printf("init_path_unlink=%s\n", Err(unlink("/.sandbox/init") == 0 ? 0 : errno));
  const int fd = open("/tmp/fake-init", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  if (fd >= 0) close(fd);
  printf("init_path_rename=%s\n", Err(rename("/tmp/fake-init", "/.sandbox/init") == 0 ? 0 : errno));
  printf("proc1_exe_rename=%s\n", Err(rename("/tmp/fake-init", "/proc/1/exe") == 0 ? 0 : errno));
  return 0;
}
