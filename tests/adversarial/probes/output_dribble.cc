// The hostile workload of issue 11 item 7: writes one byte to stdout every ~5 us (a busy wait, so timer
// slack does not slow it) for argv[1] seconds (default 3), then reports how many writes it made on stderr as
// "writes=N". Each write is one init output frame: without coalescing, one event each in the agent's memory.
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

namespace {

long long NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

}  // namespace

int main(int argc, char** argv) {
  const double seconds = argc > 1 ? atof(argv[1]) : 3.0;
  const long long end = NowNs() + static_cast<long long>(seconds * 1e9);
  long long writes = 0;
  for (long long now = NowNs(); now < end; now = NowNs()) {
    if (write(1, "x", 1) == 1) ++writes;
    const long long until = NowNs() + 5000;
    while (NowNs() < until) {
    }
  }
  fprintf(stderr, "writes=%lld\n", writes);
  return 0;
}
