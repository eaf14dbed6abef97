// no_clone3 COMMAND [ARGS...]: runs COMMAND where clone3 fails with ENOSYS, as under older container seccomp
// profiles and kernels before 5.3, so tests can exercise the clone(2) fallback.
#include <errno.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: no_clone3 COMMAND [ARGS...]\n");
    return 2;
  }
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr || seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0) != 0 ||
      seccomp_load(ctx) != 0) {
    fprintf(stderr, "no_clone3: could not install the seccomp filter\n");
    return 2;
  }
  seccomp_release(ctx);
  execv(argv[1], argv + 1);
  fprintf(stderr, "no_clone3: exec %s: %s\n", argv[1], strerror(errno));
  return 127;
}
