#include "sandbox/init/drivers/driver_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

namespace sbx::init::internal {

namespace {

// SpawnInSession's child between fork and execve: raw syscalls only (`moved`, one slot per entry of `fds`, was
// allocated by the parent). A failure's errno goes to the parent over `errpipe`.
[[noreturn]] void ExecInChild(char* const* args, char* const* envp, int out_fd, int null_fd, int above,
                              const std::vector<std::pair<int, int>>& fds, int* moved, int errpipe) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);  // fails harmlessly for some
  setsid();
  int err = 0;
  const int out_source = out_fd >= 0 ? out_fd : null_fd;
  const int in = null_fd >= 0 ? fcntl(null_fd, F_DUPFD_CLOEXEC, above) : -1;
  const int out = out_source >= 0 ? fcntl(out_source, F_DUPFD_CLOEXEC, above) : -1;
  if ((null_fd >= 0 && in < 0) || (out_source >= 0 && out < 0)) err = errno;
  for (size_t i = 0; err == 0 && i < fds.size(); ++i) {
    moved[i] = fcntl(fds[i].first, F_DUPFD_CLOEXEC, above);
    if (moved[i] < 0) err = errno;
  }
  if (err == 0) {
    if (in >= 0) {
      if (dup2(in, 0) < 0) err = errno;
    } else {
      close(0);
    }
  }
  if (err == 0 && out >= 0 && (dup2(out, 1) < 0 || dup2(out, 2) < 0)) err = errno;
  for (size_t i = 0; err == 0 && i < fds.size(); ++i) {
    if (dup2(moved[i], fds[i].second) < 0) err = errno;
  }
  if (err == 0) {
    syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC);  // best effort (Linux >= 5.11)
    for (const auto& fd : fds) fcntl(fd.second, F_SETFD, 0);
    execve(args[0], args, envp);
    err = errno;
  }
  (void)!write(errpipe, &err, sizeof(err));
  _exit(127);
}

}  // namespace

pid_t SpawnInSession(const std::vector<std::string>& argv, const std::vector<std::string>& env, int out_fd,
                     const std::vector<std::pair<int, int>>& fds, std::string* error) {
  if (argv.empty()) {
    *error = "spawn: no command";
    return -1;
  }
  std::vector<char*> args;
  for (const std::string& s : argv) args.push_back(const_cast<char*>(s.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& s : env) envp.push_back(const_cast<char*>(s.c_str()));
  envp.push_back(nullptr);
  int above = 3;  // the child first moves every source above 0..2 and every target, so no dup2 clobbers one
  for (const auto& [source, target] : fds) above = std::max(above, target + 1);
  std::vector<int> moved(fds.size(), -1);  // written by the child: nothing is allocated there
  int errpipe[2];
  if (pipe2(errpipe, O_CLOEXEC) < 0) {
    *error = ErrnoMessage("pipe2", errno);
    return -1;
  }
  const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);  // may fail: stdin is then closed
  const pid_t pid = fork();
  if (pid == 0) ExecInChild(args.data(), envp.data(), out_fd, null_fd, above, fds, moved.data(), errpipe[1]);
  const int fork_errno = errno;
  close(errpipe[1]);
  if (null_fd >= 0) close(null_fd);
  if (pid < 0) {
    close(errpipe[0]);
    *error = ErrnoMessage("fork", fork_errno);
    return -1;
  }
  int err = 0;
  ssize_t n;
  do {
    n = read(errpipe[0], &err, sizeof(err));
  } while (n < 0 && errno == EINTR);
  close(errpipe[0]);
  if (n == sizeof(err)) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    *error = ErrnoMessage("exec " + argv[0], err);
    return -1;
  }
  return pid;
}

bool CheckScreenSize(const char* what, uint32_t width, uint32_t height, std::string* error) {
  if (width >= kMinScreenWidth && width <= kMaxScreenWidth && height >= kMinScreenHeight &&
      height <= kMaxScreenHeight) {
    return true;
  }
  *error = std::string("the ") + what + " " + std::to_string(width) + "x" + std::to_string(height) +
           " is outside " + std::to_string(kMinScreenWidth) + "x" + std::to_string(kMinScreenHeight) + ".." +
           std::to_string(kMaxScreenWidth) + "x" + std::to_string(kMaxScreenHeight);
  return false;
}

int OutputMemfd(const char* name) {
  return static_cast<int>(syscall(SYS_memfd_create, name, 1U /* MFD_CLOEXEC */));
}

bool WaitExit(pid_t pid, int ms, int* status) {
  const int64_t deadline = NowMs() + ms;
  for (;;) {
    const pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno != EINTR) return true;  // not ours any more (reaped elsewhere)
    if (NowMs() >= deadline) return false;
    SleepMs(2);
  }
}

int KillAndReap(pid_t pid, int grace_ms) {
  int status = 0;
  kill(-pid, SIGTERM);
  kill(pid, SIGTERM);
  if (WaitExit(pid, grace_ms, &status)) {
    kill(-pid, SIGKILL);  // what it left in its group (renderers, xkbcomp)
    return status;
  }
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

std::string OutputTail(int fd, bool (*skip)(std::string_view line)) {
  constexpr size_t kMax = 600;
  if (fd < 0) return "";
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size <= 0) return "";
  std::string buf(8192, '\0');
  const off_t from = std::max<off_t>(0, st.st_size - static_cast<off_t>(buf.size()));
  const ssize_t n = pread(fd, buf.data(), buf.size(), from);
  if (n <= 0) return "";
  buf.resize(static_cast<size_t>(n));
  std::vector<std::string> lines;
  size_t pos = from > 0 ? buf.find('\n') + 1 : 0;  // skip a partial first line
  while (pos < buf.size()) {
    size_t end = buf.find('\n', pos);
    if (end == std::string::npos) end = buf.size();
    const std::string_view line(buf.data() + pos, end - pos);
    pos = end + 1;
    if (skip != nullptr && skip(line)) continue;
    std::string clean;
    bool space = false;
    for (char ch : line) {
      const unsigned char c = static_cast<unsigned char>(ch);
      if (c == '\t' || c == '\r' || c == ' ') {
        space = !clean.empty();
        continue;
      }
      if (c < 0x20) continue;
      if (space) clean.push_back(' ');
      space = false;
      clean.push_back(ch);
    }
    if (!clean.empty()) lines.push_back(std::move(clean));
  }
  std::string out;
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (!out.empty() && out.size() + it->size() > kMax) break;
    out = out.empty() ? *it : *it + " | " + out;
  }
  return out.size() > kMax ? "..." + out.substr(out.size() - kMax) : out;
}

}  // namespace sbx::init::internal
