// Probe: calls what the built-in policies deny, and reports what each call returned.
//   seccomp_denied_calls all        unshare(CLONE_NEWUSER), ptrace(PTRACE_TRACEME), bpf(BPF_MAP_CREATE) and
//                                   keyctl(KEYCTL_JOIN_SESSION_KEYRING), one line each: "NAME rc=R errno=E"
//   seccomp_denied_calls loop N     keyctl N times; "loop denied=D other=O" (D: calls that failed with EPERM)
//   seccomp_denied_calls ptrace     ptrace(PTRACE_TRACEME) once (a KILL rule ends the probe here), then
//                                   "survived" when it did not
#include <errno.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace {

void Report(const char* name, long rc) { printf("%s rc=%ld errno=%d\n", name, rc, rc < 0 ? errno : 0); }

}  // namespace

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "all";
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (strcmp(mode, "all") == 0) {
    Report("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
    Report("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    Report("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, nullptr, 0));
    Report("keyctl", syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0));
    return 0;
  }
  if (strcmp(mode, "loop") == 0 && argc > 2) {
    const long n = atol(argv[2]);
    long denied = 0, other = 0;
    for (long i = 0; i < n; ++i) {
      if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0) < 0 && errno == EPERM) {
        ++denied;
      } else {
        ++other;
      }
    }
    printf("loop denied=%ld other=%ld\n", denied, other);
    return 0;
  }
  if (strcmp(mode, "ptrace") == 0) {
    Report("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
    printf("survived\n");
    return 0;
  }
  fprintf(stderr, "usage: %s all | loop N | ptrace\n", argv[0]);
  return 2;
}
