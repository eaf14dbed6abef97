// Probe: the workload of a one-shot jail looks at and tries to reach PID 1, which in `sandbox-agent run` is
// the agent's own jail child (an in-process reaper, sandbox/jail.h in_process_init) rather than an exec of
// sandbox-init. It runs as the same uid as PID 1. Prints one key=RESULT line per step (OK or the errno's name):
//   ppid            our parent's pid (1: PID 1 is the reaper we target)
//   comm            PID 1's /proc/1/comm (readable by anyone)
//   exe_readlink    readlink /proc/1/exe (needs ptrace access)
//   mem_read        open /proc/1/mem for reading
//   fd_dir          opendir /proc/1/fd
//   ptrace_attach   ptrace(PTRACE_ATTACH, 1)
//   vm_read         process_vm_readv of PID 1
//   pidfd_getfd     pidfd_getfd(pidfd_open(1), 3): a copy of PID 1's report channel
//   own_fds         how many fds >= 3 the workload was given (0: no report channel, nothing of the agent's)
//   own_uid         our uid
//   pid1_owner      the owner of /proc/1/environ: the task's euid while it is dumpable, root once it is not
#include <dirent.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>

namespace {

const char* ErrName(int err) {
  if (err == 0) return "OK";
  const char* name = strerrorname_np(err);
  return name != nullptr ? name : "E?";
}

int Result(long rc) { return rc < 0 ? errno : 0; }

}  // namespace

int main() {
  // Counted first, before this probe opens anything itself.
  int own_fds = 0;
  for (int fd = 3; fd < 4096; ++fd) {
    if (fcntl(fd, F_GETFD) >= 0) ++own_fds;
  }
  printf("own_fds=%d\n", own_fds);
  printf("ppid=%d\n", static_cast<int>(getppid()));
  printf("own_uid=%d\n", static_cast<int>(getuid()));
  struct stat st;
  if (stat("/proc/1/environ", &st) == 0) {
    printf("pid1_owner=%d\n", static_cast<int>(st.st_uid));
  } else {
    printf("pid1_owner=%s\n", ErrName(errno));
  }

  char comm[64] = {};
  int f = open("/proc/1/comm", O_RDONLY | O_CLOEXEC);
  ssize_t n = f >= 0 ? read(f, comm, sizeof(comm) - 1) : -1;
  if (n > 0 && comm[n - 1] == '\n') comm[n - 1] = '\0';
  printf("comm=%s\n", n > 0 ? comm : "<unreadable>");
  if (f >= 0) close(f);

  char target[256];
  printf("exe_readlink=%s\n", ErrName(Result(readlink("/proc/1/exe", target, sizeof(target)))));

  int mem = open("/proc/1/mem", O_RDONLY | O_CLOEXEC);
  printf("mem_read=%s\n", ErrName(mem < 0 ? errno : 0));
  if (mem >= 0) close(mem);

  DIR* dir = opendir("/proc/1/fd");
  printf("fd_dir=%s\n", ErrName(dir == nullptr ? errno : 0));
  if (dir != nullptr) closedir(dir);

  const long attached = ptrace(PTRACE_ATTACH, 1, nullptr, nullptr);
  printf("ptrace_attach=%s\n", ErrName(Result(attached)));
  if (attached == 0) ptrace(PTRACE_DETACH, 1, nullptr, nullptr);

  char buf[16];
  iovec local{buf, sizeof(buf)};
  iovec remote{reinterpret_cast<void*>(0x400000), sizeof(buf)};
  printf("vm_read=%s\n", ErrName(Result(syscall(SYS_process_vm_readv, 1, &local, 1, &remote, 1, 0))));

  const long pidfd = syscall(SYS_pidfd_open, 1, 0);
  if (pidfd < 0) {
    printf("pidfd_getfd=%s\n", ErrName(errno));
  } else {
    printf("pidfd_getfd=%s\n", ErrName(Result(syscall(SYS_pidfd_getfd, static_cast<int>(pidfd), 3, 0))));
  }
  return 0;
}
