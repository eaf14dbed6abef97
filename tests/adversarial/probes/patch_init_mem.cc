// Probe: the workload of a one-shot jail tries to take over PID 1 (sandbox-init), which runs as the same uid.
//
//   patch_init_mem attack   opens /proc/1/mem read-write (and, when that works, reads a byte of init's code
//                           and writes it back: a real patch, harmless only because the byte is the same);
//                           opens /proc/1/fd/3, init's report channel, for writing (and, when that works,
//                           writes a forged report "the workload exited 0"); reads /proc/1/environ. Prints one
//                           key=RESULT line per step (OK or the errno's name), then dies of SIGSYS the way a
//                           seccomp kill ends a workload: the outcome must say seccomp_violation, not exited 0.
//   patch_init_mem oom-child
//                           a child allocates until the OOM killer ends it; the probe itself exits 0 (so init
//                           truthfully reports "exited 0" while memory.events says oom_kill).
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace {

const char* ErrName(int err) {
  switch (err) {
    case 0: return "OK";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case EFAULT: return "EFAULT";
    default: return strerrorname_np(err) != nullptr ? strerrorname_np(err) : "E?";
  }
}

// The start of init's first executable mapping, from /proc/1/maps (readable or not).
uintptr_t InitTextStart() {
  FILE* f = fopen("/proc/1/maps", "re");
  if (f == nullptr) return 0;
  char line[512];
  uintptr_t start = 0;
  while (fgets(line, sizeof(line), f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {};
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && perms[2] == 'x') {
      start = lo;
      break;
    }
  }
  fclose(f);
  return start;
}

void Attack() {
  // 1. init's memory, read-write.
  int mem = open("/proc/1/mem", O_RDWR | O_CLOEXEC);
  printf("mem_open=%s\n", ErrName(mem < 0 ? errno : 0));
  if (mem >= 0) {
    const uintptr_t text = InitTextStart();
    unsigned char byte = 0;
    int err = 0;
    if (text == 0) {
      err = ENOENT;
    } else if (pread(mem, &byte, 1, static_cast<off_t>(text)) != 1) {
      err = errno;
    } else if (pwrite(mem, &byte, 1, static_cast<off_t>(text)) != 1) {
      err = errno;
    }
    printf("mem_patch=%s\n", ErrName(err));
    close(mem);
  }
  // 2. init's report channel: a forged "exited 0" (the layout of wire/init_report.h).
  int report = open("/proc/1/fd/3", O_WRONLY | O_CLOEXEC);
  printf("report_open=%s\n", ErrName(report < 0 ? errno : 0));
  if (report >= 0) {
    const uint32_t forged[4] = {0x53425852, 1, 0, 0};
    printf("report_forge=%s\n", ErrName(write(report, forged, sizeof(forged)) > 0 ? 0 : errno));
    close(report);
  }
  // 3. init's environment (PTRACE_MODE_READ).
  int env = open("/proc/1/environ", O_RDONLY | O_CLOEXEC);
  printf("environ_open=%s\n", ErrName(env < 0 ? errno : 0));
  if (env >= 0) close(env);
  fflush(stdout);
  signal(SIGSYS, SIG_DFL);
  raise(SIGSYS);
  _exit(99);  // not reached
}

int OomChild() {
  const pid_t child = fork();
  if (child < 0) return 2;
  if (child == 0) {
    for (;;) {
      void* p = mmap(nullptr, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) continue;
      memset(p, 1, 8 << 20);
    }
  }
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  printf("child=%s\n", WIFSIGNALED(status) ? strsignal(WTERMSIG(status)) : "exited");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "attack") == 0) Attack();
  if (strcmp(mode, "oom-child") == 0) return OomChild();
  fprintf(stderr, "usage: patch_init_mem attack|oom-child\n");
  return 2;
}
