// The cost of seccomp denial audits, side by side in one run:
//  - a denied syscall (keyctl, refused by the built-in file policy) answered by the agent's supervisor
//    (SECCOMP_RET_USER_NOTIF, audit_denials on, the real rate limit) against the same denial as plain
//    SECCOMP_RET_ERRNO (audit_denials off);
//  - an allowed syscall loop (getppid) under the same filter with a listener against no filter at all, to
//    show that allowed calls never leave the kernel.
// Prints the median ns per call over the rounds and the ratios.
//
//   seccomp_notify_bench [--rounds N] [--denied N] [--allowed N]
#include <fcntl.h>
#include <linux/keyctl.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sandbox/policy/policy_loader.h"
#include "sandbox/seccomp_notify.h"
#include "sandbox/seccomp_program.h"
#include "tests/bench/bench_util.h"
#include "tests/common/fd_passing.h"

namespace {

using Clock = std::chrono::steady_clock;
using sbx::UniqueFd;
using ::sbx::testing::RecvFd;
using ::sbx::testing::SendFd;
namespace sb = sbx::sandbox;

enum class Filter { kNone, kPlain, kNotify };

// Runs `n` calls of `nr` in a forked child under `filter`; returns ns per call (the child's own clock).
double Measure(Filter filter, long nr, long n, const sb::SeccompPolicy& policy) {
  sb::SeccompPolicy p = policy;
  p.audit_denials = filter == Filter::kNotify;
  absl::StatusOr<sb::SeccompProgram> program = sb::CompileSeccomp(p);
  absl::StatusOr<sb::SeccompDenyTable> table = sb::SeccompDenyTable::Build(p);
  if (!program.ok() || !table.ok()) {
    fprintf(stderr, "compile: %s\n", program.ok() ? table.status().ToString().c_str()
                                                  : program.status().ToString().c_str());
    exit(1);
  }
  sock_fprog prog{static_cast<unsigned short>(program->instructions.size()), program->instructions.data()};
  int sv[2], result[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) != 0 || pipe2(result, O_CLOEXEC) != 0) exit(1);
  const pid_t pid = fork();
  if (pid < 0) exit(1);
  if (pid == 0) {
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) _exit(100);
    if (filter == Filter::kNotify) {
      const long listener =
          syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
      if (listener < 0 || SendFd(sv[1], static_cast<int>(listener)) != 0) _exit(101);
      close(static_cast<int>(listener));
    } else if (filter == Filter::kPlain) {
      if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) _exit(101);
    }
    const auto start = Clock::now();
    for (long i = 0; i < n; ++i) syscall(nr, KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0);
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count() / n;
    if (write(result[1], &ns, sizeof(ns)) != sizeof(ns)) _exit(102);
    _exit(0);
  }
  close(sv[1]);
  close(result[1]);
  std::unique_ptr<sb::SeccompSupervisor> supervisor;
  std::atomic<uint64_t> records{0};
  if (filter == Filter::kNotify) {
    UniqueFd listener(RecvFd(sv[0]));
    absl::StatusOr<std::unique_ptr<sb::SeccompSupervisor>> s = sb::SeccompSupervisor::Start(
        std::move(listener), *table, [&](const sb::SeccompAudit&) { records.fetch_add(1); });
    if (!s.ok()) {
      fprintf(stderr, "supervisor: %s\n", s.status().ToString().c_str());
      exit(1);
    }
    supervisor = std::move(*s);
  }
  close(sv[0]);
  double ns = -1;
  if (read(result[0], &ns, sizeof(ns)) != sizeof(ns)) ns = -1;
  close(result[0]);
  if (sbx::bench::Wait(pid) != 0 || ns < 0) {
    fprintf(stderr, "the measuring child failed\n");
    exit(1);
  }
  supervisor.reset();
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 7;
  long denied = 200000, allowed = 5000000;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--rounds") == 0) rounds = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--denied") == 0) denied = atol(argv[i + 1]);
    if (strcmp(argv[i], "--allowed") == 0) allowed = atol(argv[i + 1]);
  }
  absl::StatusOr<sb::Policy> policy = sb::DefaultFilePolicy();
  if (!policy.ok()) {
    fprintf(stderr, "policy: %s\n", policy.status().ToString().c_str());
    return 1;
  }
  const sb::SeccompPolicy& seccomp = policy->seccomp();
  std::vector<double> notify_denied, plain_denied, notify_allowed, none_allowed;
  for (int r = 0; r < rounds; ++r) {
    notify_denied.push_back(Measure(Filter::kNotify, SYS_keyctl, denied, seccomp));
    plain_denied.push_back(Measure(Filter::kPlain, SYS_keyctl, denied, seccomp));
    notify_allowed.push_back(Measure(Filter::kNotify, SYS_getppid, allowed, seccomp));
    none_allowed.push_back(Measure(Filter::kNone, SYS_getppid, allowed, seccomp));
  }
  const double nd = sbx::bench::Median(notify_denied), pd = sbx::bench::Median(plain_denied);
  const double na = sbx::bench::Median(notify_allowed), no = sbx::bench::Median(none_allowed);
  printf("denied keyctl, user notification + supervisor (audit_denials): %8.0f ns/call  (%.0f calls/s)\n", nd,
         1e9 / nd);
  printf("denied keyctl, plain SECCOMP_RET_ERRNO (audit_denials off):    %8.0f ns/call  (%.0f calls/s)\n", pd,
         1e9 / pd);
  printf("  ratio: %.1fx\n", nd / pd);
  printf("allowed getppid under the file policy's filter with a listener: %6.1f ns/call  (%.1f M calls/s)\n", na,
         1e3 / na);
  printf("allowed getppid, no filter:                                     %6.1f ns/call  (%.1f M calls/s)\n", no,
         1e3 / no);
  printf("  ratio: %.2fx  (the BPF program's own cost; no allowed call reaches the supervisor)\n", na / no);
  printf("(%d rounds; medians; %ld denied and %ld allowed calls per round)\n", rounds, denied, allowed);
  return 0;
}
