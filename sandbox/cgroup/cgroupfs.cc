#include "sandbox/cgroup/cgroupfs.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::sandbox::cgroup_internal {

// ---------------------------------------------------------------------------------------------------------
// Text helpers (std::string_view only; Debian's absl::string_view is another type).

std::string_view Trim(std::string_view s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> Split(std::string_view s, char sep, bool skip_empty) {
  std::vector<std::string_view> out;
  while (true) {
    const size_t pos = s.find(sep);
    const std::string_view piece = s.substr(0, pos);
    if (!piece.empty() || !skip_empty) out.push_back(piece);
    if (pos == std::string_view::npos) break;
    s.remove_prefix(pos + 1);
  }
  return out;
}

std::vector<std::string_view> Words(std::string_view s) {
  std::vector<std::string_view> out;
  for (std::string_view line : Split(s, '\n', true)) {
    for (std::string_view word : Split(line, ' ', true)) out.push_back(word);
  }
  return out;
}

bool Contains(const std::vector<std::string_view>& v, std::string_view x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

std::optional<uint64_t> ParseU64(std::string_view s) {
  s = Trim(s);
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return value;
}

// The value of the line "<key> <value>" in a flat-keyed cgroup file (cpu.stat, memory.events, pids.events,
// memory.oom_control, cpuacct.stat).
std::optional<uint64_t> KeyedValue(std::string_view text, std::string_view key) {
  for (std::string_view line : Split(text, '\n', true)) {
    const std::vector<std::string_view> words = Split(Trim(line), ' ', true);
    if (words.size() == 2 && words[0] == key) return ParseU64(words[1]);
  }
  return std::nullopt;
}

// "/a/b/c" -> "/a/b".
std::string Dirname(const std::string& path) {
  const size_t pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

// A single path component that cannot climb out of its parent.
absl::Status ValidateComponent(std::string_view name, std::string_view what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos || name.size() > 255) {
    return absl::InvalidArgumentError(
        absl::StrCat(ToAbsl(what), " must be a single path component, got \"", ToAbsl(name), "\""));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------------
// cgroupfs file access: raw POSIX, one write(2) per command.

absl::Status WithPermissionHint(absl::Status status) {
  if (status.code() != absl::StatusCode::kPermissionDenied) return status;
  return absl::PermissionDeniedError(absl::StrCat(
      status.message(), " (no write access to the cgroup tree: rootless without a delegated cgroup?)"));
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoToStatus(errno, "open " + path);
  std::string out;
  char buf[4096];
  while (true) {
    const ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxFileBytes) {
      return absl::ResourceExhaustedError(absl::StrCat(path, " is larger than ", kMaxFileBytes, " bytes"));
    }
  }
  return out;
}

// Writes `data` with a single write(2): cgroupfs treats each write as one command. `err` (optional) gets the
// errno of a failure, for callers that react to a specific one (EBUSY, ENOENT).
absl::Status WriteFile(const std::string& path, std::string_view data, int* err) {
  if (err != nullptr) *err = 0;
  int fd;
  do {
    fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (err != nullptr) *err = errno;
    return ErrnoToStatus(errno, "open " + path);
  }
  UniqueFd closer(fd);
  ssize_t n;
  do {
    n = write(fd, data.data(), data.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (err != nullptr) *err = errno;
    return ErrnoToStatus(errno, absl::StrCat("write \"", ToAbsl(Trim(data)), "\" to ", path));
  }
  if (static_cast<size_t>(n) != data.size()) {
    if (err != nullptr) *err = EIO;
    return absl::InternalError(absl::StrCat("short write to ", path, ": ", n, " of ", data.size(), " bytes"));
  }
  return absl::OkStatus();
}

absl::Status WriteIfExists(const std::string& path, std::string_view data) {
  if (!Exists(path)) return absl::OkStatus();
  return WriteFile(path, data);
}

absl::StatusOr<uint64_t> ReadU64(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::optional<uint64_t> value = ParseU64(text);
  if (!value) {
    return absl::InternalError(
        absl::StrCat("unexpected content in ", path, ": \"", ToAbsl(Trim(text)), "\""));
  }
  return *value;
}

absl::StatusOr<uint64_t> ReadKeyed(const std::string& path, std::string_view key) {
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::optional<uint64_t> value = KeyedValue(text, key);
  if (!value) return absl::InternalError(absl::StrCat("no \"", ToAbsl(key), " <n>\" line in ", path));
  return *value;
}

absl::Status MkdirAll(const std::string& path) {
  if (path.empty() || path[0] != '/') return absl::InvalidArgumentError("not an absolute path: " + path);
  // Usually all there already (every `run` prepares the same parents): one syscall instead of one per level.
  if (mkdir(path.c_str(), 0755) == 0 || errno == EEXIST) return absl::OkStatus();
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return WithPermissionHint(ErrnoToStatus(errno, "mkdir " + prefix));
    }
  }
  return absl::OkStatus();
}

// The pids in `dir`/cgroup.procs; an absent directory has none. Entries of 0 (processes outside our pid
// namespace) are dropped: kill(0) would hit our own process group.
absl::StatusOr<std::vector<pid_t>> ReadPids(const std::string& dir) {
  const std::string path = dir + "/cgroup.procs";
  absl::StatusOr<std::string> text = ReadFile(path);
  if (absl::IsNotFound(text.status())) return std::vector<pid_t>();
  if (!text.ok()) return text.status();
  std::vector<pid_t> pids;
  for (std::string_view line : Split(*text, '\n', true)) {
    std::optional<uint64_t> pid = ParseU64(line);
    if (!pid || *pid > 0x7fffffff) {
      return absl::InternalError(absl::StrCat("unexpected line in ", path, ": \"", ToAbsl(line), "\""));
    }
    if (*pid > 0) pids.push_back(static_cast<pid_t>(*pid));
  }
  return pids;
}

// SIGKILLs every process listed in the given directories. Returns how many were listed.
absl::StatusOr<size_t> KillListed(const std::vector<std::string>& dirs) {
  size_t listed = 0;
  const pid_t self = getpid();
  for (const std::string& dir : dirs) {
    ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(dir));
    for (pid_t pid : pids) {
      if (pid == self) continue;  // NOTE: the agent never belongs to a session cgroup; never kill ourselves.
      ++listed;
      if (kill(pid, SIGKILL) != 0 && errno != ESRCH) {
        return ErrnoToStatus(errno, absl::StrCat("kill ", pid, " in ", dir));
      }
    }
  }
  return listed;
}

// Short sleeps that grow from 1 ms to 10 ms.
void Backoff(int* round) {
  std::this_thread::sleep_for(milliseconds(std::min(10, 1 << std::min(*round, 4))));
  ++*round;
}

// Keeps killing until no process is listed (a process may fork while we read); bounded.
absl::Status KillUntilEmpty(const std::vector<std::string>& dirs) {
  const auto deadline = Clock::now() + kEmptyTimeout;
  for (int round = 0;; Backoff(&round)) {
    ASSIGN_OR_RETURN(size_t listed, KillListed(dirs));
    if (listed == 0) return absl::OkStatus();
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(listed, " processes still in ",
                                                      absl::StrJoin(dirs, ", "), " after ",
                                                      kEmptyTimeout.count(), " ms of SIGKILL"));
    }
  }
}

absl::Status WaitEmpty(const std::vector<std::string>& dirs) {
  const auto deadline = Clock::now() + kEmptyTimeout;
  for (int round = 0;; Backoff(&round)) {
    std::string busy;
    for (const std::string& dir : dirs) {
      ASSIGN_OR_RETURN(std::vector<pid_t> pids, ReadPids(dir));
      if (!pids.empty()) {
        busy = absl::StrCat(dir, " (", pids.size(), " processes)");
        break;
      }
    }
    if (busy.empty()) return absl::OkStatus();
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("cgroup not empty after ", kEmptyTimeout.count(), " ms: ", busy));
    }
  }
}

// Polls `path` until it reads `want` (after trimming). False on timeout.
absl::StatusOr<bool> WaitForContent(const std::string& path, std::string_view want) {
  const auto deadline = Clock::now() + kFreezeTimeout;
  for (int round = 0;; Backoff(&round)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    if (Trim(text) == want) return true;
    if (Clock::now() > deadline) return false;
  }
}

// Polls v2 cgroup.events until "frozen 1". False on timeout.
absl::StatusOr<bool> WaitV2Frozen(const std::string& dir) {
  const std::string path = dir + "/cgroup.events";
  const auto deadline = Clock::now() + kFreezeTimeout;
  for (int round = 0;; Backoff(&round)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    if (KeyedValue(text, "frozen") == uint64_t{1}) return true;
    if (Clock::now() > deadline) return false;
  }
}

absl::Status RmdirBounded(const std::string& dir) {
  const auto deadline = Clock::now() + kRmdirBusyTimeout;
  for (int round = 0;; Backoff(&round)) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) return absl::OkStatus();
    if (errno != EBUSY || Clock::now() > deadline) return ErrnoToStatus(errno, "rmdir " + dir);
  }
}

// The distinct non-empty directories, in order (v1 hierarchies may be co-mounted, e.g. "cpu,cpuacct").
std::vector<std::string> UniqueDirs(std::initializer_list<const std::string*> paths) {
  std::vector<std::string> out;
  for (const std::string* p : paths) {
    if (!p->empty() && std::find(out.begin(), out.end(), *p) == out.end()) out.push_back(*p);
  }
  return out;
}

absl::Status DirMaker::Make(const std::string& parent, std::string* dir) {
  if (parent.empty()) return absl::OkStatus();
  *dir = absl::StrCat(parent, "/", ToAbsl(name_));
  if (std::find(created_.begin(), created_.end(), *dir) != created_.end()) return absl::OkStatus();
  if (mkdir(dir->c_str(), 0755) != 0) return WithPermissionHint(ErrnoToStatus(errno, "mkdir " + *dir));
  created_.push_back(*dir);
  return absl::OkStatus();
}

void DirMaker::RemoveAll() {
  for (auto it = created_.rbegin(); it != created_.rend(); ++it) rmdir(it->c_str());
  created_.clear();
}

}  // namespace sbx::sandbox::cgroup_internal
