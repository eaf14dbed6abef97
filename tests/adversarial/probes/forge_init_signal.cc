// Probe: the workload sends PID 1 (sandbox-init --serve) a termination signal dressed up as one from outside
// the jail, hoping init ends the session and every running command with it.
//
//   forge_init_signal queue   rt_sigqueueinfo(1, SIGTERM, {si_code = SI_QUEUE, si_pid = 0}): the kernel lets
//                             a process pick si_pid for a negative si_code, so init sees ssi_pid 0.
//   forge_init_signal sigio   F_SETOWN 1 + F_SETSIG SIGTERM + O_ASYNC on a pipe, then a write: the kernel
//                             itself sends SIGTERM to init with si_code POLL_IN and no sender pid.
// Prints `<mode>=sent` (or the errno's name) per attempt, then waits 300 ms for init to react.
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

namespace {

const char* Result(int rc) { return rc == 0 ? "sent" : strerrorname_np(errno); }

int Queue() {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  info.si_signo = SIGTERM;
  info.si_code = SI_QUEUE;
  info.si_pid = 0;
  info.si_uid = 0;
  const int rc = static_cast<int>(syscall(SYS_rt_sigqueueinfo, 1, SIGTERM, &info));
  printf("queue=%s\n", Result(rc));
  return rc;
}

int Sigio() {
  int p[2];
  if (pipe(p) < 0) return -1;
  int rc = fcntl(p[0], F_SETOWN, 1);
  if (rc == 0) rc = fcntl(p[0], F_SETSIG, SIGTERM);
  if (rc == 0) rc = fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_ASYNC);
  if (rc == 0) rc = write(p[1], "x", 1) == 1 ? 0 : -1;
  printf("sigio=%s\n", Result(rc));
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  // Each line out before the next attempt: if init falls for one, the kernel kills this probe with the jail.
  setvbuf(stdout, nullptr, _IONBF, 0);
  bool any = false;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "queue") == 0) {
      Queue();
      any = true;
    } else if (strcmp(argv[i], "sigio") == 0) {
      Sigio();
      any = true;
    }
  }
  if (!any) {
    fprintf(stderr, "usage: forge_init_signal queue|sigio...\n");
    return 2;
  }
  fflush(stdout);
  const timespec wait{0, 300 * 1000 * 1000};
  nanosleep(&wait, nullptr);
  return 0;
}
