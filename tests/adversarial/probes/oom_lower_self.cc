// Probe: the workload tries to make itself a worse target for the OOM killer than the agent, by lowering its
// own oom_score_adj (the agent sets every jail's to 1000, its own to -900).
//   oom_lower_self [SLEEP_MS]   prints score=<its oom_score_adj>, then lower=<result of writing 0> and
//                               score_after=<its oom_score_adj again>, then sleeps SLEEP_MS (so the test can
//                               look at the agent and the jail from outside while the jail runs).
//   oom_lower_self SLEEP_MS keep  the same without trying to lower (without CAP_SYS_RESOURCE in the agent
//                               the kernel lets a workload lower its score back down, which would race
//                               with a look from outside).
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>

namespace {

void PrintScore(const char* key) {
  char buf[32] = {};
  const int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
  const ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
  if (fd >= 0) close(fd);
  if (n <= 0) {
    printf("%s=%s\n", key, strerrorname_np(errno));
    return;
  }
  buf[strcspn(buf, "\n")] = '\0';
  printf("%s=%s\n", key, buf);
}

}  // namespace

int main(int argc, char** argv) {
  PrintScore("score");
  if (!(argc > 2 && strcmp(argv[2], "keep") == 0)) {
    const int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) {
      if (write(fd, "0", 1) != 1) err = errno;
      close(fd);
    }
    printf("lower=%s\n", err == 0 ? "OK" : strerrorname_np(err));
    PrintScore("score_after");
  }
  fflush(stdout);
  if (argc > 1) {
    const long ms = atol(argv[1]);
    const timespec t{ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&t, nullptr);
  }
  return 0;
}
