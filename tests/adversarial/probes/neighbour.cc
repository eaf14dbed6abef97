// neighbour: plays two sessions on one host. `hold MARKER` leaves traces a neighbour could find (a process
// whose argv names MARKER, an abstract unix socket, files in /tmp and /dev/shm, a SysV shared memory
// segment) and waits; `spy MARKER` looks for each of them and prints what it saw as key=value lines.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

key_t SysvKey(const char* marker) {
  key_t key = 0x5b00;
  for (const char* p = marker; *p; ++p) key = key * 31 + static_cast<unsigned char>(*p);
  return key & 0x7fffffff;
}

socklen_t AbstractAddr(const char* marker, sockaddr_un* addr) {
  memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  const size_t n = strnlen(marker, sizeof(addr->sun_path) - 2);
  memcpy(addr->sun_path + 1, marker, n);
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
}

int Hold(const char* marker) {
  const int s = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr;
  const socklen_t len = AbstractAddr(marker, &addr);
  if (s < 0 || bind(s, reinterpret_cast<sockaddr*>(&addr), len) < 0 || listen(s, 4) < 0) return perror("bind"), 1;
  for (const std::string dir : {"/tmp/", "/dev/shm/"}) {
    const int fd = open((dir + marker).c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd < 0) return perror("create"), 1;
    close(fd);
  }
  if (shmget(SysvKey(marker), 4096, IPC_CREAT | 0644) < 0) return perror("shmget"), 1;
  printf("held=1\n");
  fflush(stdout);
  for (;;) pause();
}

const char* Err(int err) {
  switch (err) {
    case 0: return "OK";
    case ENOENT: return "ENOENT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    default: return strerror(err);
  }
}

int Spy(const char* marker) {
  // Processes whose command line names the marker (our own argv names it too: count others).
  int procs = 0;
  if (DIR* d = opendir("/proc")) {
    while (dirent* e = readdir(d)) {
      const int pid = atoi(e->d_name);
      if (pid <= 0 || pid == getpid()) continue;
      char path[64], buf[4096];
      snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
      const int fd = open(path, O_RDONLY);
      if (fd < 0) continue;
      const ssize_t n = read(fd, buf, sizeof(buf) - 1);
      close(fd);
      if (n <= 0) continue;
      for (ssize_t i = 0; i < n; ++i) if (buf[i] == '\0') buf[i] = ' ';
      buf[n] = '\0';
      if (strstr(buf, "hold") != nullptr && strstr(buf, marker) != nullptr) ++procs;
    }
    closedir(d);
  }
  printf("marker_procs=%d\n", procs);
  const int s = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr;
  const socklen_t len = AbstractAddr(marker, &addr);
  printf("abstract=%s\n", Err(connect(s, reinterpret_cast<sockaddr*>(&addr), len) == 0 ? 0 : errno));
  struct stat st;
  printf("tmp=%s\n", Err(stat((std::string("/tmp/") + marker).c_str(), &st) == 0 ? 0 : errno));
  printf("shm=%s\n", Err(stat((std::string("/dev/shm/") + marker).c_str(), &st) == 0 ? 0 : errno));
  printf("sysv=%s\n", Err(shmget(SysvKey(marker), 0, 0) >= 0 ? 0 : errno));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "hold") == 0) return Hold(argv[2]);
  if (argc == 3 && strcmp(argv[1], "spy") == 0) return Spy(argv[2]);
  fprintf(stderr, "usage: neighbour hold|spy MARKER\n");
  return 2;
}
