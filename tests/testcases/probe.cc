// probe: a helper run inside jails by the integration tests. Each subcommand looks at one property of its
// environment, or does one hostile thing, and prints what it saw as "key=value" lines.
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <netinet/in.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

extern char** environ;

namespace {

const char* ErrName(int err) {
  switch (err) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    case ENOSPC: return "ENOSPC";
    case ENOSYS: return "ENOSYS";
    case EAGAIN: return "EAGAIN";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EINVAL: return "EINVAL";
    case EFBIG: return "EFBIG";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case ENOTTY: return "ENOTTY";
    case EEXIST: return "EEXIST";
    case EISDIR: return "EISDIR";
    default: return strerror(err);
  }
}

int Pids() {
  DIR* d = opendir("/proc");
  if (!d) return perror("opendir /proc"), 1;
  std::string list;
  int count = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    ++count;
    list += std::string(list.empty() ? "" : ",") + e->d_name;
  }
  closedir(d);
  printf("count=%d\npids=%s\nself=%d\n", count, list.c_str(), getpid());
  return 0;
}

int Net() {
  FILE* f = fopen("/proc/net/dev", "r");
  if (!f) return perror("/proc/net/dev"), 1;
  char line[512];
  std::string ifaces;
  int n = 0;
  while (fgets(line, sizeof(line), f)) {
    if (++n <= 2) continue;
    char* colon = strchr(line, ':');
    if (!colon) continue;
    *colon = 0;
    char* name = line;
    while (*name == ' ') ++name;
    ifaces += std::string(ifaces.empty() ? "" : ",") + name;
  }
  fclose(f);
  printf("interfaces=%s\n", ifaces.c_str());
  // Loopback works: listen and connect on 127.0.0.1.
  int l = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int rc = bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  rc = rc == 0 ? listen(l, 1) : rc;
  getsockname(l, reinterpret_cast<sockaddr*>(&a), &len);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  rc = rc == 0 ? connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) : rc;
  printf("loopback=%s\n", ErrName(rc == 0 ? 0 : errno));
  // Anything else is unreachable.
  int o = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in out{};
  out.sin_family = AF_INET;
  out.sin_port = htons(53);
  inet_pton(AF_INET, "8.8.8.8", &out.sin_addr);
  rc = connect(o, reinterpret_cast<sockaddr*>(&out), sizeof(out));
  printf("external=%s\n", ErrName(rc == 0 ? 0 : errno));
  return 0;
}

int Status() {
  FILE* f = fopen("/proc/self/status", "r");
  if (!f) return perror("/proc/self/status"), 1;
  char line[512];
  while (fgets(line, sizeof(line), f)) {
    if (!strncmp(line, "Cap", 3) || !strncmp(line, "NoNewPrivs", 10) || !strncmp(line, "Seccomp:", 8) ||
        !strncmp(line, "Uid:", 4) || !strncmp(line, "Gid:", 4)) {
      fputs(line, stdout);
    }
  }
  fclose(f);
  printf("uid=%d\ngid=%d\n", getuid(), getgid());
  return 0;
}

int Fds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return perror("opendir"), 1;
  std::string list;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    if (atoi(e->d_name) == dirfd(d)) continue;
    list += std::string(list.empty() ? "" : ",") + e->d_name;
  }
  closedir(d);
  printf("fds=%s\n", list.c_str());
  return 0;
}

int Env() {
  for (char** e = environ; *e; ++e) printf("env:%s\n", *e);
  return 0;
}

int Hostname() {
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  printf("hostname=%s\n", name);
  return 0;
}

// Tries to create and write `path`; prints write_<path>=ERR.
int Write(const char* path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else {
    if (write(fd, "x", 1) != 1) err = errno;
    close(fd);
  }
  printf("write %s=%s\n", path, ErrName(err));
  return 0;
}

int Exists(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    struct stat st;
    printf("exists %s=%s\n", argv[i], lstat(argv[i], &st) == 0 ? "yes" : "no");
  }
  return 0;
}

#define TRY(name, call)                                                     \
  do {                                                                      \
    errno = 0;                                                              \
    long rc_ = (call);                                                      \
    printf("syscall %s=%s\n", name, ErrName(rc_ < 0 ? errno : 0));          \
  } while (0)

int Syscalls() {
  TRY("mount", mount("none", "/tmp", "tmpfs", 0, nullptr));
  TRY("umount2", umount2("/proc", MNT_DETACH));
  TRY("pivot_root", syscall(SYS_pivot_root, "/tmp", "/tmp"));
  TRY("unshare", unshare(CLONE_NEWUSER));
  TRY("setns", syscall(SYS_setns, 0, 0));
  TRY("ptrace", syscall(SYS_ptrace, 0 /*PTRACE_TRACEME*/, 0, 0, 0));
  TRY("process_vm_readv", syscall(SYS_process_vm_readv, 1, nullptr, 0, nullptr, 0, 0));
  TRY("process_vm_writev", syscall(SYS_process_vm_writev, 1, nullptr, 0, nullptr, 0, 0));
  TRY("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
  TRY("add_key", syscall(SYS_add_key, "user", "x", "y", 1, 0));
  TRY("request_key", syscall(SYS_request_key, "user", "x", nullptr, 0));
  TRY("bpf", syscall(SYS_bpf, 0, nullptr, 0));
  TRY("perf_event_open", syscall(SYS_perf_event_open, nullptr, 0, -1, -1, 0));
  TRY("userfaultfd", syscall(SYS_userfaultfd, 0));
  TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, nullptr, 0));
  TRY("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, nullptr, 0));
  TRY("init_module", syscall(SYS_init_module, nullptr, 0, ""));
  TRY("finit_module", syscall(SYS_finit_module, -1, "", 0));
  TRY("delete_module", syscall(SYS_delete_module, "x", 0));
  TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, nullptr, 0));
  TRY("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", nullptr, nullptr, 0));
  TRY("reboot", syscall(SYS_reboot, 0, 0, 0, nullptr));
  TRY("swapon", syscall(SYS_swapon, "/x", 0));
  TRY("swapoff", syscall(SYS_swapoff, "/x"));
  TRY("settimeofday", syscall(SYS_settimeofday, nullptr, nullptr));
  TRY("clock_settime", syscall(SYS_clock_settime, CLOCK_REALTIME, nullptr));
  TRY("acct", syscall(SYS_acct, nullptr));
  TRY("quotactl", syscall(SYS_quotactl, 0, nullptr, 0, nullptr));
  TRY("lookup_dcookie", syscall(SYS_lookup_dcookie, 0, nullptr, 0));
  TRY("io_uring_setup", syscall(SYS_io_uring_setup, 1, nullptr));
  TRY("io_uring_enter", syscall(SYS_io_uring_enter, -1, 0, 0, 0, nullptr, 0));
  TRY("io_uring_register", syscall(SYS_io_uring_register, -1, 0, nullptr, 0));
  // clone3 answers ENOSYS so libc falls back to clone, whose flags the filter can see.
  clone_args args{};
  args.flags = CLONE_NEWUSER;
  args.exit_signal = SIGCHLD;
  TRY("clone3", syscall(SYS_clone3, &args, sizeof(args)));
  for (unsigned long flag : {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWUTS, CLONE_NEWIPC,
                             CLONE_NEWCGROUP}) {
    char name[64];
    snprintf(name, sizeof(name), "clone_0x%lx", flag);
    errno = 0;
    long rc = syscall(SYS_clone, flag | SIGCHLD, nullptr, nullptr, nullptr, nullptr);
    if (rc == 0) _exit(0);
    if (rc > 0) waitpid(static_cast<pid_t>(rc), nullptr, 0);
    printf("syscall %s=%s\n", name, ErrName(rc < 0 ? errno : 0));
  }
  // A plain fork still works.
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  if (pid > 0) waitpid(pid, nullptr, 0);
  printf("syscall fork=%s\n", ErrName(pid < 0 ? errno : 0));
  return 0;
}

int Tiocsti() {
  int master, slave;
  if (openpty(&master, &slave, nullptr, nullptr, nullptr) < 0) {
    printf("openpty=%s\n", ErrName(errno));
    return 0;
  }
  printf("openpty=OK\n");
  char c = 'x';
  int rc = ioctl(slave, TIOCSTI, &c);
  printf("tiocsti_pty=%s\n", ErrName(rc < 0 ? errno : 0));
  rc = ioctl(0, TIOCSTI, &c);
  printf("tiocsti_stdin=%s\n", ErrName(rc < 0 ? errno : 0));
  return 0;
}

int ForkBomb() {
  for (;;) {
    pid_t pid = fork();
    if (pid == 0) {
      for (;;) pause();
    }
  }
}

int MemHog(long mib) {
  const size_t chunk = 1 << 20;
  for (long i = 0; i < mib; ++i) {
    char* p = static_cast<char*>(malloc(chunk));
    if (!p) return printf("malloc failed at %ld MiB\n", i), 1;
    memset(p, 1, chunk);
  }
  printf("allocated=%ld\n", mib);
  return 0;
}

int Spin() {
  volatile unsigned long x = 0;
  for (;;) x = x + 1;
}

int Fill(const char* path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return printf("fill=%s\n", ErrName(errno)), 0;
  static char buf[1 << 20];
  memset(buf, 7, sizeof(buf));
  long total = 0;
  for (;;) {
    ssize_t n = write(fd, buf, sizeof(buf));
    if (n < 0) {
      printf("fill=%s\nwritten_mib=%ld\n", ErrName(errno), total >> 20);
      close(fd);
      unlink(path);
      return 0;
    }
    total += n;
  }
}

// A syscall through the i386 ABI (int 0x80): the filter refuses foreign ABIs by killing the process.
int I386() {
  long ret;
  asm volatile("int $0x80" : "=a"(ret) : "a"(20 /* i386 getpid */) : "memory");
  printf("i386 getpid returned %ld\n", ret);
  return 0;
}

int X32() {
  long ret = syscall(0x40000000 | 39 /* getpid */);
  printf("x32 getpid returned %ld errno=%s\n", ret, ErrName(errno));
  return 0;
}

int Sleep(int seconds) {
  printf("sleeping pid=%d\n", getpid());
  fflush(stdout);
  sleep(seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // `now` first, before anything else runs: CLOCK_REALTIME in ns, for start-latency benchmarks.
  if (argc == 2 && argv[1][0] == 'n' && strcmp(argv[1], "now") == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("%lld\n", static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec);
    return 0;
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 2) {
    fprintf(stderr, "usage: probe SUBCOMMAND [ARGS]\n");
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "pids") return Pids();
  if (cmd == "net") return Net();
  if (cmd == "status") return Status();
  if (cmd == "fds") return Fds();
  if (cmd == "env") return Env();
  if (cmd == "hostname") return Hostname();
  if (cmd == "write" && argc > 2) {
    for (int i = 2; i < argc; ++i) Write(argv[i]);
    return 0;
  }
  if (cmd == "exists") return Exists(argc - 2, argv + 2);
  if (cmd == "syscalls") return Syscalls();
  if (cmd == "tiocsti") return Tiocsti();
  if (cmd == "forkbomb") return ForkBomb();
  if (cmd == "memhog" && argc > 2) return MemHog(atol(argv[2]));
  if (cmd == "spin") return Spin();
  if (cmd == "fill" && argc > 2) return Fill(argv[2]);
  if (cmd == "i386") return I386();
  if (cmd == "x32") return X32();
  if (cmd == "sleep" && argc > 2) return Sleep(atoi(argv[2]));
  if (cmd == "exit" && argc > 2) return atoi(argv[2]);
  if (cmd == "kill" && argc > 2) return kill(getpid(), atoi(argv[2]));
  fprintf(stderr, "probe: unknown subcommand %s\n", cmd.c_str());
  return 2;
}
