// Probe: the calls Docker's default seccomp profile refuses and a jail must refuse too. Each line of output
// is "NAME rc=R errno=E" for one attempt; the test checks each was refused with EPERM (or, for the allowed
// personality values, that it ran). Plain libc and raw syscalls only.
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_memfd_secret
#define SYS_memfd_secret 447
#endif

namespace {

void Report(const char* name, long rc) {
  printf("%s rc=%ld errno=%d\n", name, rc, rc < 0 ? errno : 0);
  fflush(stdout);
}

}  // namespace

int main() {
  // ADDR_NO_RANDOMIZE: disables ASLR for what this process execs next.
  Report("personality_addr_no_randomize", syscall(SYS_personality, 0x0040000UL));
  // READ_IMPLIES_EXEC: makes readable mappings executable.
  Report("personality_read_implies_exec", syscall(SYS_personality, 0x0400000UL));
  // PER_BSD: another persona, not on Docker's list.
  Report("personality_bsd", syscall(SYS_personality, 0x0006UL));
  // An allowed value in the low 32 bits with garbage above: the kernel reads an unsigned int, the filter
  // the whole register, so it is refused like any value not on the list.
  Report("personality_high_bits", syscall(SYS_personality, 0x100000000UL));
  // Allowed: the query, and setting the default persona.
  Report("personality_query", syscall(SYS_personality, 0xffffffffUL));
  Report("personality_linux", syscall(SYS_personality, 0x0UL));
  Report("personality_uname26", syscall(SYS_personality, 0x20000UL));
  Report("personality_linux_again", syscall(SYS_personality, 0x0UL));

  char ldt[16];
  Report("modify_ldt", syscall(SYS_modify_ldt, 0, ldt, sizeof(ldt)));
  // FAN_CLASS_NOTIF (0), O_RDONLY: the unprivileged form (inode marks only) since 5.13.
  Report("fanotify_init", syscall(SYS_fanotify_init, 0u, O_RDONLY));
  Report("memfd_secret", syscall(SYS_memfd_secret, 0u));
  return 0;
}
