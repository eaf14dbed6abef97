#include "sandbox/cgroup/cgroup.h"

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

namespace sbx::sandbox {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr uint64_t kCpuPeriodUs = 100000;
constexpr size_t kMaxFileBytes = size_t{4} << 20;  // cgroup.procs of a big cgroup stays far below this
constexpr auto kFreezeTimeout = milliseconds(1000);
constexpr auto kEmptyTimeout = milliseconds(2000);
constexpr auto kRmdirBusyTimeout = milliseconds(1000);

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
absl::Status WriteFile(const std::string& path, std::string_view data, int* err = nullptr) {
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

// ---------------------------------------------------------------------------------------------------------
// /proc/self/mountinfo and /proc/self/cgroup.

struct Mount {
  std::string root;         // the path inside the hierarchy that is mounted (field 4)
  std::string mount_point;  // field 5
  std::string fstype;
  std::vector<std::string> super_options;
};

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeOctal(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const auto is_oct = [](char c) { return c >= '0' && c <= '7'; };
      if (is_oct(s[i + 1]) && is_oct(s[i + 2]) && is_oct(s[i + 3])) {
        out.push_back(
            static_cast<char>(((s[i + 1] - '0') << 6) | ((s[i + 2] - '0') << 3) | (s[i + 3] - '0')));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// Lines: "<id> <parent> <maj:min> <root> <mount point> <options> [optional fields...] - <fstype> <source>
// <super options>". Malformed lines are skipped.
std::vector<Mount> ParseMountinfo(std::string_view text) {
  std::vector<Mount> mounts;
  for (std::string_view line : Split(text, '\n', true)) {
    const std::vector<std::string_view> f = Split(line, ' ', true);
    size_t sep = 6;
    while (sep < f.size() && f[sep] != "-") ++sep;
    if (sep + 3 >= f.size()) continue;
    Mount m;
    m.root = UnescapeOctal(f[3]);
    m.mount_point = UnescapeOctal(f[4]);
    m.fstype = std::string(f[sep + 1]);
    for (std::string_view opt : Split(f[sep + 3], ',', true)) m.super_options.emplace_back(opt);
    mounts.push_back(std::move(m));
  }
  return mounts;
}

struct SelfCgroups {
  std::optional<std::string> v2;                        // "0::<path>"
  std::vector<std::pair<std::string, std::string>> v1;  // controller -> path
  const std::string* V1Path(std::string_view controller) const {
    for (const auto& [c, path] : v1) {
      if (c == controller) return &path;
    }
    return nullptr;
  }
};

// Lines: "<hierarchy id>:<controller,list>:<path>"; cgroup v2 is "0::<path>".
SelfCgroups ParseSelfCgroup(std::string_view text) {
  SelfCgroups self;
  for (std::string_view line : Split(text, '\n', true)) {
    const size_t c1 = line.find(':');
    if (c1 == std::string_view::npos) continue;
    const size_t c2 = line.find(':', c1 + 1);
    if (c2 == std::string_view::npos) continue;
    const std::string_view id = line.substr(0, c1);
    const std::string_view controllers = line.substr(c1 + 1, c2 - c1 - 1);
    const std::string path(line.substr(c2 + 1));
    if (id == "0" && controllers.empty()) {
      self.v2 = path;
      continue;
    }
    for (std::string_view c : Split(controllers, ',', true)) self.v1.emplace_back(std::string(c), path);
  }
  return self;
}

// Our cgroup `own` relative to the mounted `root` of its hierarchy ("" when they are the same), or nullopt
// when `own` is not below `root` (the mount shows another part of the hierarchy).
std::optional<std::string> RelativeToRoot(const std::string& own, const std::string& root) {
  if (root == "/") return own == "/" ? std::string() : own;
  if (own == root) return std::string();
  if (own.size() > root.size() && own.compare(0, root.size(), root) == 0 && own[root.size()] == '/') {
    return own.substr(root.size());
  }
  return std::nullopt;
}

std::string JoinUnder(const std::string& mount_point, const std::string& relative, std::string_view subdir) {
  std::string out = mount_point;
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (out == "/") out.clear();
  return absl::StrCat(out, relative, "/", ToAbsl(subdir));
}

bool IsV1MountOf(const Mount& m, std::string_view controller) {
  return m.fstype == "cgroup" &&
         std::find(m.super_options.begin(), m.super_options.end(), controller) != m.super_options.end();
}

bool HasV1Mount(const std::vector<Mount>& mounts, std::string_view controller) {
  return std::any_of(mounts.begin(), mounts.end(),
                     [&](const Mount& m) { return IsV1MountOf(m, controller); });
}

// `<mount point><own path below the mount root>/<subdir>` for a v1 controller; "" when it is not mounted.
absl::StatusOr<std::string> V1Dir(const std::vector<Mount>& mounts, const SelfCgroups& self,
                                  std::string_view controller, std::string_view subdir) {
  const Mount* first = nullptr;
  for (const Mount& m : mounts) {
    if (!IsV1MountOf(m, controller)) continue;
    if (first == nullptr) first = &m;
    const std::string* own = self.V1Path(controller);
    if (own == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("cgroup v1: the ", ToAbsl(controller),
                                                        " hierarchy is mounted at ", m.mount_point,
                                                        " but /proc/self/cgroup has no line for it"));
    }
    if (std::optional<std::string> rel = RelativeToRoot(*own, m.root)) {
      return JoinUnder(m.mount_point, *rel, subdir);
    }
  }
  if (first == nullptr) return std::string();
  return absl::FailedPreconditionError(absl::StrCat(
      "cgroup v1: our ", ToAbsl(controller), " cgroup ", *self.V1Path(controller), " is not below the root ",
      first->root, " of the hierarchy mounted at ", first->mount_point));
}

// Enables the controllers in `own` and in `parent` (a child of `own`), moving processes out of `own` into
// the leaf "<own>/agent" when the no-internal-processes rule refuses it.
absl::Status PrepareV2(const std::string& parent) {
  const std::string own = Dirname(parent);
  const std::string own_controllers_path = own + "/cgroup.controllers";
  ASSIGN_OR_RETURN(std::string own_controllers_text, ReadFile(own_controllers_path));
  const std::vector<std::string_view> own_controllers = Words(own_controllers_text);
  std::vector<std::string> missing;
  for (const char* c : {"memory", "pids"}) {
    if (!Contains(own_controllers, c)) missing.emplace_back(c);
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cgroup v2: controller(s) ", absl::StrJoin(missing, ", "), " not available in ", own_controllers_path,
        " (\"", ToAbsl(Trim(own_controllers_text)), "\"): the parent cgroup does not delegate them"));
  }
  const std::string enable = Contains(own_controllers, "cpu") ? "+memory +pids +cpu" : "+memory +pids";

  RETURN_IF_ERROR(MkdirAll(parent));

  const std::string own_subtree = own + "/cgroup.subtree_control";
  int err = 0;
  absl::Status status = WriteFile(own_subtree, enable, &err);
  if (err == EBUSY) {
    // No internal processes: a cgroup with controllers enabled for its children may not hold processes
    // itself. Move every process of our cgroup (us first) into a leaf and retry.
    const std::string leaf = own + "/agent";
    if (mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
      return WithPermissionHint(ErrnoToStatus(errno, "mkdir " + leaf));
    }
    const std::string leaf_procs = leaf + "/cgroup.procs";
    RETURN_IF_ERROR(WithPermissionHint(WriteFile(leaf_procs, "0")));
    ASSIGN_OR_RETURN(std::vector<pid_t> others, ReadPids(own));
    for (pid_t pid : others) {
      absl::Status moved = WriteFile(leaf_procs, std::to_string(pid), &err);
      if (!moved.ok() && err != ESRCH) {
        return Annotate(moved, "moving the processes of " + own + " into a leaf");
      }
    }
    status = WriteFile(own_subtree, enable);
  }
  RETURN_IF_ERROR(WithPermissionHint(status));

  RETURN_IF_ERROR(WithPermissionHint(WriteFile(parent + "/cgroup.subtree_control", enable)));

  const std::string parent_controllers_path = parent + "/cgroup.controllers";
  ASSIGN_OR_RETURN(std::string parent_controllers_text, ReadFile(parent_controllers_path));
  const std::vector<std::string_view> parent_controllers = Words(parent_controllers_text);
  for (const char* c : {"memory", "pids"}) {
    if (!Contains(parent_controllers, c)) missing.emplace_back(c);
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cgroup v2: controller(s) ", absl::StrJoin(missing, ", "), " missing from ", parent_controllers_path,
        " (\"", ToAbsl(Trim(parent_controllers_text)), "\") after enabling them"));
  }
  return absl::OkStatus();
}

}  // namespace

// -----------------------------------------------------------------------------------------------------------
// Layout.

absl::StatusOr<CgroupLayout> CgroupLayoutFromProc(std::string_view mountinfo, std::string_view self_cgroup,
                                                  std::string_view subdir) {
  RETURN_IF_ERROR(ValidateComponent(subdir, "cgroup subdir"));
  const std::vector<Mount> mounts = ParseMountinfo(mountinfo);
  const SelfCgroups self = ParseSelfCgroup(self_cgroup);
  const bool v1_memory = HasV1Mount(mounts, "memory");
  const bool v1_pids = HasV1Mount(mounts, "pids");
  const bool has_v2 =
      std::any_of(mounts.begin(), mounts.end(), [](const Mount& m) { return m.fstype == "cgroup2"; });

  CgroupLayout layout;
  if (has_v2 && !v1_memory && !v1_pids) {
    layout.version = CgroupVersion::kV2;
    if (!self.v2) {
      return absl::FailedPreconditionError("cgroup v2 is mounted but /proc/self/cgroup has no \"0::\" line");
    }
    const Mount* first = nullptr;
    for (const Mount& m : mounts) {
      if (m.fstype != "cgroup2") continue;
      if (first == nullptr) first = &m;
      if (std::optional<std::string> rel = RelativeToRoot(*self.v2, m.root)) {
        // Already in the leaf an agent makes for itself (PrepareV2 moved us, or the caller that started us,
        // there): our cgroup is the one above it. Otherwise each agent started from there would nest one
        // level deeper, and a restarted agent would look for a dead one's sessions in the wrong place.
        static constexpr std::string_view kLeaf = "/agent";
        if (rel->size() >= kLeaf.size() && std::string_view(*rel).substr(rel->size() - kLeaf.size()) == kLeaf) {
          rel->resize(rel->size() - kLeaf.size());
        }
        layout.v2_parent = JoinUnder(m.mount_point, *rel, subdir);
        return layout;
      }
    }
    return absl::FailedPreconditionError(absl::StrCat("cgroup v2: our cgroup ", *self.v2,
                                                      " is not below the root ", first->root,
                                                      " of the hierarchy mounted at ", first->mount_point));
  }

  std::vector<std::string> missing;
  if (!v1_memory) missing.emplace_back("memory");
  if (!v1_pids) missing.emplace_back("pids");
  if (!missing.empty()) {
    // Only reached with v2 mounted when the other required controller is on v1, which rules v2 out.
    const char* v2_note = !has_v2     ? "; no cgroup v2 mount either"
                          : v1_memory ? "; cgroup v2 is mounted but unusable while memory is on v1"
                                      : "; cgroup v2 is mounted but unusable while pids is on v1";
    return absl::FailedPreconditionError(
        absl::StrCat("cgroup v1: required controller(s) ", absl::StrJoin(missing, ", "), " not mounted",
                     " (no cgroup v1 hierarchy has them in /proc/self/mountinfo", v2_note, ")"));
  }
  layout.version = CgroupVersion::kV1;
  ASSIGN_OR_RETURN(layout.v1_memory, V1Dir(mounts, self, "memory", subdir));
  ASSIGN_OR_RETURN(layout.v1_pids, V1Dir(mounts, self, "pids", subdir));
  ASSIGN_OR_RETURN(layout.v1_cpu, V1Dir(mounts, self, "cpu", subdir));
  ASSIGN_OR_RETURN(layout.v1_cpuacct, V1Dir(mounts, self, "cpuacct", subdir));
  ASSIGN_OR_RETURN(layout.v1_freezer, V1Dir(mounts, self, "freezer", subdir));
  return layout;
}

// The parent may exist (made earlier by root) without being delegated to us: say so now, by path, rather
// than at the first session.
static absl::Status CheckWritable(const std::string& dir) {
  if (access(dir.c_str(), W_OK) == 0) return absl::OkStatus();
  return WithPermissionHint(ErrnoToStatus(errno, "no write access to " + dir));
}

absl::StatusOr<CgroupLayout> PrepareCgroupLayout(std::string_view subdir) {
  ASSIGN_OR_RETURN(std::string mountinfo, ReadFile("/proc/self/mountinfo"));
  ASSIGN_OR_RETURN(std::string self_cgroup, ReadFile("/proc/self/cgroup"));
  ASSIGN_OR_RETURN(CgroupLayout layout, CgroupLayoutFromProc(mountinfo, self_cgroup, subdir));
  if (layout.version == CgroupVersion::kV2) {
    if (subdir == "agent") {
      return absl::InvalidArgumentError("cgroup subdir \"agent\" is reserved for the agent's own leaf on v2");
    }
    RETURN_IF_ERROR(PrepareV2(layout.v2_parent));
    RETURN_IF_ERROR(CheckWritable(layout.v2_parent));
    return layout;
  }
  for (const std::string& dir : UniqueDirs(
           {&layout.v1_memory, &layout.v1_pids, &layout.v1_cpu, &layout.v1_cpuacct, &layout.v1_freezer})) {
    RETURN_IF_ERROR(MkdirAll(dir));
    RETURN_IF_ERROR(CheckWritable(dir));
  }
  return layout;
}

// -----------------------------------------------------------------------------------------------------------
// Cgroup.

absl::StatusOr<Cgroup> Cgroup::Create(const CgroupLayout& layout, std::string_view name,
                                      const CgroupLimits& limits) {
  RETURN_IF_ERROR(ValidateComponent(name, "cgroup name"));
  Cgroup cg;
  cg.version_ = layout.version;
  std::vector<std::string> created;

  // Makes `<parent>/<name>` (once per hierarchy: co-mounted controllers share the directory).
  const auto make_dir = [&](const std::string& parent, std::string* dir) -> absl::Status {
    if (parent.empty()) return absl::OkStatus();
    *dir = absl::StrCat(parent, "/", ToAbsl(name));
    if (std::find(created.begin(), created.end(), *dir) != created.end()) return absl::OkStatus();
    if (mkdir(dir->c_str(), 0755) != 0) return WithPermissionHint(ErrnoToStatus(errno, "mkdir " + *dir));
    created.push_back(*dir);
    return absl::OkStatus();
  };

  const auto create_v2 = [&]() -> absl::Status {
    if (layout.v2_parent.empty()) return absl::InvalidArgumentError("cgroup v2 layout without a parent");
    RETURN_IF_ERROR(make_dir(layout.v2_parent, &cg.memory_path_));
    cg.pids_path_ = cg.memory_path_;
    const std::string& dir = cg.memory_path_;
    if (limits.memory_max_bytes > 0) {
      RETURN_IF_ERROR(WriteFile(dir + "/memory.max", std::to_string(limits.memory_max_bytes)));
    }
    RETURN_IF_ERROR(WriteIfExists(dir + "/memory.swap.max", "0"));
    if (limits.pids_max > 0) RETURN_IF_ERROR(WriteFile(dir + "/pids.max", std::to_string(limits.pids_max)));
    // NOTE: cpu is optional; without the controller (no cpu.max) the cpu limit is not enforced.
    if (limits.cpu_millicores > 0 && Exists(dir + "/cpu.max")) {
      const uint64_t quota = uint64_t{limits.cpu_millicores} * kCpuPeriodUs / 1000;
      RETURN_IF_ERROR(WriteFile(dir + "/cpu.max", absl::StrCat(quota, " ", kCpuPeriodUs)));
      RETURN_IF_ERROR(WriteIfExists(dir + "/cpu.max.burst", std::to_string(quota)));
    }
    if (limits.cpu_background) RETURN_IF_ERROR(cg.SetCpuBackground(true));
    cg.v2_dir_fd_ = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cg.v2_dir_fd_ < 0) return ErrnoToStatus(errno, "open " + dir);
    return absl::OkStatus();
  };

  const auto create_v1 = [&]() -> absl::Status {
    if (layout.v1_memory.empty() || layout.v1_pids.empty()) {
      return absl::InvalidArgumentError("cgroup v1 layout without a memory or pids hierarchy");
    }
    RETURN_IF_ERROR(make_dir(layout.v1_memory, &cg.memory_path_));
    const std::string& mem = cg.memory_path_;
    if (limits.memory_max_bytes > 0) {
      const std::string bytes = std::to_string(limits.memory_max_bytes);
      RETURN_IF_ERROR(WriteFile(mem + "/memory.limit_in_bytes", bytes));
      // memory+swap at the same value, so the workload cannot escape into swap. memsw must be >= the memory
      // limit at all times, hence this order.
      RETURN_IF_ERROR(WriteIfExists(mem + "/memory.memsw.limit_in_bytes", bytes));
    }
    RETURN_IF_ERROR(WriteIfExists(mem + "/memory.swappiness", "0"));
    // memory.oom_control keeps its default: the kernel OOM-kills inside the cgroup.

    RETURN_IF_ERROR(make_dir(layout.v1_pids, &cg.pids_path_));
    if (limits.pids_max > 0) {
      RETURN_IF_ERROR(WriteFile(cg.pids_path_ + "/pids.max", std::to_string(limits.pids_max)));
    }

    // NOTE: cpu is optional; without its hierarchy the cpu limit is not enforced.
    RETURN_IF_ERROR(make_dir(layout.v1_cpu, &cg.cpu_path_));
    if (!cg.cpu_path_.empty() && limits.cpu_millicores > 0) {
      RETURN_IF_ERROR(WriteFile(cg.cpu_path_ + "/cpu.cfs_period_us", std::to_string(kCpuPeriodUs)));
      const uint64_t quota = uint64_t{limits.cpu_millicores} * kCpuPeriodUs / 1000;
      RETURN_IF_ERROR(WriteFile(cg.cpu_path_ + "/cpu.cfs_quota_us", std::to_string(quota)));
      RETURN_IF_ERROR(WriteIfExists(cg.cpu_path_ + "/cpu.cfs_burst_us", std::to_string(quota)));
    }
    if (limits.cpu_background) RETURN_IF_ERROR(cg.SetCpuBackground(true));
    // NOTE: cpuacct stays even as a hierarchy of its own (a mkdir, a join and an rmdir per start): the jail's
    // rusage is no substitute. When init dies the kernel kills the rest of the pid namespace and, with
    // SIGCHLD ignored, releases them unaccounted: a workload killed at its time limit would show ~0 CPU.
    RETURN_IF_ERROR(make_dir(layout.v1_cpuacct, &cg.cpuacct_path_));
    RETURN_IF_ERROR(make_dir(layout.v1_freezer, &cg.freezer_path_));
    return absl::OkStatus();
  };

  absl::Status status = layout.version == CgroupVersion::kV2 ? create_v2() : create_v1();
  if (!status.ok()) {
    if (cg.v2_dir_fd_ >= 0) close(std::exchange(cg.v2_dir_fd_, -1));
    // Nothing can have joined the new directories yet, so they are empty and rmdir succeeds.
    for (auto it = created.rbegin(); it != created.rend(); ++it) rmdir(it->c_str());
    return Annotate(status, absl::StrCat("create cgroup ", ToAbsl(name)));
  }
  cg.removed_ = false;
  return cg;
}

absl::Status Cgroup::SetCpuBackground(bool background) const {
  const std::string dir = version_ == CgroupVersion::kV2 ? memory_path_ : cpu_path_;
  if (dir.empty()) return absl::OkStatus();  // v1 without the cpu hierarchy
  // NOTE: the kernel refuses a weight for an idle group, so with cpu.idle the weight is left alone.
  if (Exists(dir + "/cpu.idle")) return WriteFile(dir + "/cpu.idle", background ? "1" : "0");
  if (version_ == CgroupVersion::kV2) return WriteIfExists(dir + "/cpu.weight", background ? "1" : "100");
  return WriteFile(dir + "/cpu.shares", background ? "2" : "1024");
}

Cgroup::Cgroup(Cgroup&& other) noexcept
    : version_(other.version_),
      memory_path_(std::move(other.memory_path_)),
      pids_path_(std::move(other.pids_path_)),
      cpu_path_(std::move(other.cpu_path_)),
      cpuacct_path_(std::move(other.cpuacct_path_)),
      freezer_path_(std::move(other.freezer_path_)),
      v2_dir_fd_(std::exchange(other.v2_dir_fd_, -1)),
      removed_(std::exchange(other.removed_, true)) {}

Cgroup& Cgroup::operator=(Cgroup&& other) noexcept {
  if (this != &other) {
    (void)Remove();  // NOTE: errors are dropped, as in the destructor.
    if (v2_dir_fd_ >= 0) close(v2_dir_fd_);
    version_ = other.version_;
    memory_path_ = std::move(other.memory_path_);
    pids_path_ = std::move(other.pids_path_);
    cpu_path_ = std::move(other.cpu_path_);
    cpuacct_path_ = std::move(other.cpuacct_path_);
    freezer_path_ = std::move(other.freezer_path_);
    v2_dir_fd_ = std::exchange(other.v2_dir_fd_, -1);
    removed_ = std::exchange(other.removed_, true);
  }
  return *this;
}

Cgroup::~Cgroup() {
  (void)Remove();  // NOTE: a destructor cannot report; callers who care call Remove() themselves.
  if (v2_dir_fd_ >= 0) close(v2_dir_fd_);
}

absl::Status Cgroup::AddProcess(pid_t pid) const {
  if (removed_) return absl::FailedPreconditionError("cgroup already removed");
  if (pid <= 0) return absl::InvalidArgumentError(absl::StrCat("invalid pid ", pid));
  const std::string text = std::to_string(pid);
  for (const std::string& dir :
       UniqueDirs({&memory_path_, &pids_path_, &cpu_path_, &cpuacct_path_, &freezer_path_})) {
    RETURN_IF_ERROR(WriteFile(dir + "/cgroup.procs", text));
  }
  return absl::OkStatus();
}

std::vector<std::string> Cgroup::V1SelfJoinFiles() const {
  std::vector<std::string> files;
  if (version_ == CgroupVersion::kV2 || removed_) return files;
  for (const std::string& dir :
       UniqueDirs({&memory_path_, &pids_path_, &cpu_path_, &cpuacct_path_, &freezer_path_})) {
    files.push_back(dir + "/tasks");
  }
  return files;
}

absl::StatusOr<uint64_t> Cgroup::ReadPidsMaxEvents() const {
  if (removed_) return absl::FailedPreconditionError("cgroup already removed");
  return ReadKeyed(pids_path_ + "/pids.events", "max");
}

absl::StatusOr<CgroupUsage> Cgroup::ReadUsage() const {
  if (removed_) return absl::FailedPreconditionError("cgroup already removed");
  CgroupUsage usage;
  ASSIGN_OR_RETURN(usage.pids_max_events, ReadPidsMaxEvents());
  if (version_ == CgroupVersion::kV2) {
    const std::string& dir = memory_path_;
    ASSIGN_OR_RETURN(usage.cpu_user_us, ReadKeyed(dir + "/cpu.stat", "user_usec"));
    ASSIGN_OR_RETURN(usage.cpu_sys_us, ReadKeyed(dir + "/cpu.stat", "system_usec"));
    usage.cpu_known = true;
    const std::string peak = dir + "/memory.peak";  // kernel >= 5.19
    ASSIGN_OR_RETURN(usage.memory_peak_bytes, ReadU64(Exists(peak) ? peak : dir + "/memory.current"));
    ASSIGN_OR_RETURN(usage.oom_kills, ReadKeyed(dir + "/memory.events", "oom_kill"));
    return usage;
  }

  if (!cpuacct_path_.empty()) {
    usage.cpu_known = true;
    const std::string user = cpuacct_path_ + "/cpuacct.usage_user";  // nanoseconds, kernel >= 4.16
    if (Exists(user)) {
      ASSIGN_OR_RETURN(uint64_t user_ns, ReadU64(user));
      ASSIGN_OR_RETURN(uint64_t sys_ns, ReadU64(cpuacct_path_ + "/cpuacct.usage_sys"));
      usage.cpu_user_us = user_ns / 1000;
      usage.cpu_sys_us = sys_ns / 1000;
    } else {
      const std::string stat = cpuacct_path_ + "/cpuacct.stat";  // USER_HZ ticks
      const long ticks_per_s = sysconf(_SC_CLK_TCK);
      const uint64_t hz = ticks_per_s > 0 ? static_cast<uint64_t>(ticks_per_s) : 100;
      ASSIGN_OR_RETURN(uint64_t user_ticks, ReadKeyed(stat, "user"));
      ASSIGN_OR_RETURN(uint64_t sys_ticks, ReadKeyed(stat, "system"));
      usage.cpu_user_us = user_ticks * 1000000 / hz;
      usage.cpu_sys_us = sys_ticks * 1000000 / hz;
    }
  }
  ASSIGN_OR_RETURN(usage.memory_peak_bytes, ReadU64(memory_path_ + "/memory.max_usage_in_bytes"));
  ASSIGN_OR_RETURN(std::string oom_control, ReadFile(memory_path_ + "/memory.oom_control"));
  usage.oom_kills = KeyedValue(oom_control, "oom_kill").value_or(0);  // the line exists since kernel 4.13
  return usage;
}

absl::Status Cgroup::KillAll() const {
  if (removed_) return absl::OkStatus();
  if (version_ == CgroupVersion::kV2) {
    const std::string& dir = memory_path_;
    int err = 0;
    absl::Status status = WriteFile(dir + "/cgroup.kill", "1", &err);
    if (status.ok() || err != ENOENT) return status;
    // Kernel < 5.14: freeze so nothing forks while we kill, kill what is listed, thaw so the kills land.
    RETURN_IF_ERROR(WriteFile(dir + "/cgroup.freeze", "1"));
    absl::StatusOr<bool> frozen = WaitV2Frozen(dir);
    absl::Status killed = frozen.ok() ? KillListed({dir}).status() : frozen.status();
    absl::Status thawed = WriteFile(dir + "/cgroup.freeze", "0");
    RETURN_IF_ERROR(killed);
    RETURN_IF_ERROR(thawed);
    if (*frozen) return absl::OkStatus();
    return KillUntilEmpty({dir});
  }

  const std::vector<std::string> dirs =
      UniqueDirs({&memory_path_, &pids_path_, &cpu_path_, &cpuacct_path_, &freezer_path_});
  if (!freezer_path_.empty()) {
    const std::string state = freezer_path_ + "/freezer.state";
    RETURN_IF_ERROR(WriteFile(state, "FROZEN"));
    absl::StatusOr<bool> frozen = WaitForContent(state, "FROZEN");
    absl::Status killed = frozen.ok() ? KillListed(dirs).status() : frozen.status();
    absl::Status thawed = WriteFile(state, "THAWED");
    RETURN_IF_ERROR(killed);
    RETURN_IF_ERROR(thawed);
    if (*frozen) return absl::OkStatus();
    // Freezing did not complete (e.g. a task stuck in the kernel): fall back to killing until empty.
  }
  return KillUntilEmpty(dirs);
}

absl::StatusOr<Cgroup> Cgroup::Adopt(const CgroupLayout& layout, std::string_view name) {
  RETURN_IF_ERROR(ValidateComponent(name, "cgroup name"));
  Cgroup cg;
  cg.version_ = layout.version;
  bool any = false;
  const auto adopt = [&](const std::string& parent, std::string* dir) {
    if (parent.empty()) return;
    std::string path = absl::StrCat(parent, "/", ToAbsl(name));
    if (!Exists(path)) return;
    *dir = std::move(path);
    any = true;
  };
  if (layout.version == CgroupVersion::kV2) {
    adopt(layout.v2_parent, &cg.memory_path_);
    cg.pids_path_ = cg.memory_path_;
  } else {
    adopt(layout.v1_memory, &cg.memory_path_);
    adopt(layout.v1_pids, &cg.pids_path_);
    adopt(layout.v1_cpu, &cg.cpu_path_);
    adopt(layout.v1_cpuacct, &cg.cpuacct_path_);
    adopt(layout.v1_freezer, &cg.freezer_path_);
  }
  if (!any) return absl::NotFoundError(absl::StrCat("no cgroup named ", ToAbsl(name)));
  cg.removed_ = false;
  return cg;
}

absl::Status Cgroup::Remove() {
  if (removed_) return absl::OkStatus();
  const std::vector<std::string> dirs =
      UniqueDirs({&memory_path_, &pids_path_, &cpu_path_, &cpuacct_path_, &freezer_path_});
  // Usually the jail's init is already reaped, and with it every process of its pid namespace: then there is
  // nothing to freeze and kill, and a lone start saves the freezer round trip.
  bool already_empty = true;
  for (const std::string& dir : dirs) {
    absl::StatusOr<std::vector<pid_t>> pids = ReadPids(dir);
    if (!pids.ok() || !pids->empty()) {
      already_empty = false;
      break;
    }
  }
  const absl::Status killed = already_empty ? absl::OkStatus() : KillAll();
  const absl::Status emptied = killed.ok() && !already_empty ? WaitEmpty(dirs) : absl::OkStatus();
  if (v2_dir_fd_ >= 0) close(std::exchange(v2_dir_fd_, -1));
  absl::Status removed = absl::OkStatus();
  for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
    absl::Status s = RmdirBounded(*it);
    if (removed.ok()) removed = s;
  }
  if (removed.ok()) {
    removed_ = true;  // everything is gone, whatever KillAll reported on the way
    return absl::OkStatus();
  }
  // Keep removed_ false so that a later Remove() retries; report the first cause.
  if (!killed.ok()) return Annotate(killed, "remove cgroup");
  if (!emptied.ok()) return Annotate(emptied, "remove cgroup");
  return Annotate(removed, "remove cgroup");
}

}  // namespace sbx::sandbox
