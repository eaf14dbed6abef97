// Probe: a command in a browser session tries to take over Chromium, which sandbox-init started as the same
// uid: find the browser process (the one with --remote-debugging-pipe, not a --type= child) through
// /proc/*/cmdline, then
//   - open its CDP pipe (/proc/<pid>/fd/3, the end Chromium reads commands from) for writing, and, when that
//     works, write a CDP command (Browser.close: the browser's death would prove the command was obeyed);
//   - open /proc/<pid>/mem for reading and writing;
//   - read where its fd 4 leads (readlink /proc/<pid>/fd/4) and read /proc/<pid>/environ.
// Prints pid=N and one key=RESULT line per step (OK or the errno's name).
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace {

const char* Name(int err) { return err == 0 ? "OK" : strerrorname_np(err); }

std::string Cmdline(const char* pid) {
  std::string path = std::string("/proc/") + pid + "/cmdline";
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  for (char& c : out) {
    if (c == '\0') c = ' ';
  }
  return out;
}

int FindBrowser() {
  DIR* d = opendir("/proc");
  if (d == nullptr) return -1;
  int found = -1;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string cmd = Cmdline(e->d_name);
    if (cmd.find("--remote-debugging-pipe") != std::string::npos && cmd.find("--type=") == std::string::npos) {
      found = atoi(e->d_name);
      break;
    }
  }
  closedir(d);
  return found;
}

}  // namespace

int main() {
  const int pid = FindBrowser();
  printf("pid=%d\n", pid);
  if (pid < 0) return 1;
  const std::string proc = "/proc/" + std::to_string(pid);

  int pipe_fd = open((proc + "/fd/3").c_str(), O_WRONLY | O_CLOEXEC);
  printf("pipe_open=%s\n", Name(pipe_fd < 0 ? errno : 0));
  if (pipe_fd >= 0) {
    // One write below PIPE_BUF: it cannot interleave with init's own commands.
    static const char kCommand[] = "{\"id\":424242,\"method\":\"Browser.close\"}";
    const ssize_t n = write(pipe_fd, kCommand, sizeof(kCommand));  // with its NUL: the pipe's framing
    printf("pipe_write=%s\n", Name(n == static_cast<ssize_t>(sizeof(kCommand)) ? 0 : errno));
    close(pipe_fd);
  }

  int mem = open((proc + "/mem").c_str(), O_RDWR | O_CLOEXEC);
  printf("mem_open=%s\n", Name(mem < 0 ? errno : 0));
  if (mem >= 0) close(mem);

  // Where its fds lead (listing /proc/<pid>/fd needs only the uid; following an entry needs ptrace access).
  char target[256];
  const ssize_t len = readlink((proc + "/fd/4").c_str(), target, sizeof(target));
  printf("fd_readlink=%s\n", Name(len < 0 ? errno : 0));

  int env = open((proc + "/environ").c_str(), O_RDONLY | O_CLOEXEC);
  printf("environ_open=%s\n", Name(env < 0 ? errno : 0));
  if (env >= 0) close(env);
  return 0;
}
