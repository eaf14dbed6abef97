#include "sandbox/init/init_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "sandbox/init/actions.h"
#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/desktop.h"
#include "sandbox/init/drivers/driver_util.h"
#include "wire/frame.h"
#include "wire/init_protocol.pb.h"
#include "sandbox/init/landlock.h"
#include "base/sha256.h"
#include "base/unique_fd.h"

extern char** environ;

namespace sbx::sandbox {
namespace {

namespace pb = ::sbx::init;

// Above this many unsent bytes to the agent, the commands' pipes are no longer read (their writers block in
// the kernel); reading resumes below kResumeOutputBytes.
constexpr size_t kPauseOutputBytes = 4u << 20;
constexpr size_t kResumeOutputBytes = 1u << 20;
// Above this many unsent bytes, requests are no longer read either (only file answers get it this far).
constexpr size_t kPauseRequestsBytes = 8u << 20;
constexpr size_t kControlReadBytes = 64u << 10;
constexpr size_t kMaxExecs = 256;
constexpr size_t kMaxStdinQueuedBytes = 4u << 20;
constexpr size_t kMaxListEntries = 10'000;
constexpr int kMaxRemoveDepth = 256;
// After a timeout kill: output still buffered in a pipe is read, up to this much per stream.
constexpr int kDrainReadsAfterTimeout = 8;
// After a read of a command's output, that stream is not watched for kReadCoalesce: what the command writes
// meanwhile waits in the pipe and goes out as one chunk. Watching it all the time woke init (and then the
// agent, and the client) for every write(2) of a fast writer: `head` writes 8 KiB at a time, and a 1 GiB
// stream was ~25000 small frames, each a wakeup along the whole path, where a syscall or a context switch is
// what costs (under a paravirtualized guest, many microseconds). 250 us is invisible next to the agent's
// own 5 ms output hold, and a writer at 1 GB/s fills one 256 KiB chunk in about that time.
constexpr auto kReadCoalesce = std::chrono::microseconds(250);
// Full chunks read back to back in one go: the 1 MiB pipe (StartExec sets its size).
constexpr int kReadsPerWake = 4;
using Clock = std::chrono::steady_clock;
// A driver call's deadline (Request.timeout_ms): this when the agent sends none, and this much at most.
constexpr uint32_t kDefaultDriverCallMs = 30000;
constexpr uint32_t kMaxDriverCallMs = 600000;
// Driver calls waiting for their driver (the running one included); more are refused.
constexpr size_t kMaxQueuedDriverCalls = 16;

// epoll data: the source kind in the top byte, the command's serial (never reused) below it.
enum class Src : uint64_t { kControl = 1, kSignals, kStdout, kStderr, kStdin, kTimer, kDriver, kCdp };
constexpr uint64_t kSerialMask = (uint64_t{1} << 56) - 1;
uint64_t Tag(Src src, uint64_t serial) { return static_cast<uint64_t>(src) << 56 | serial; }

// What a command's child reports over its CLOEXEC pipe when a step before (or the) execve fails.
enum ChildStep : int32_t { kStepSetsid = 1, kStepTerminal, kStepStdio, kStepCwd, kStepExec, kStepLandlock };
struct ChildFailure {
  int32_t step;
  int32_t err;
};

// ---- Errors -------------------------------------------------------------------------------------------

// A path for a message: quoted, and cut short when long (paths come from the agent, may be anything).
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = "\"";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "\"";
  return out;
}

pb::Code CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
      return pb::CODE_NOT_FOUND;
    case EACCES:
    case EPERM:
    case EROFS:
    case EXDEV:  // RESOLVE_BENEATH: the path leads out of the workspace
      return pb::CODE_PERMISSION_DENIED;
    case EEXIST:
      return pb::CODE_ALREADY_EXISTS;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EAGAIN:
      return pb::CODE_RESOURCE_EXHAUSTED;
    case EINVAL:
    case ENAMETOOLONG:
      return pb::CODE_INVALID_ARGUMENT;
    case ELOOP:
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY:
    case EBUSY:
    case ETXTBSY:
    case ENXIO:
      return pb::CODE_FAILED_PRECONDITION;
    default:
      return pb::CODE_INTERNAL;
  }
}

void SetError(pb::Response* r, pb::Code code, std::string message) {
  pb::Error* e = r->mutable_error();
  e->set_code(code);
  e->set_message(std::move(message));
}

// "<op> "<path>": <strerror>", with the errno's code.
void SetErrnoError(pb::Response* r, std::string_view op, std::string_view path, int err) {
  std::string message(op);
  message += " " + Quote(path) + ": ";
  message += strerror(err);
  if (err == ELOOP) message += " (not followed here: a final symlink on write/remove, or a /proc magic link)";
  if (err == EXDEV) message = std::string(op) + " " + Quote(path) + ": the path leads outside the workspace (through a symlink)";
  SetError(r, CodeForErrno(err), std::move(message));
}

// Paths from the agent: not empty, no NUL, no ".." component. True when acceptable; else fills `r`.
bool CheckPath(std::string_view op, const std::string& path, pb::Response* r) {
  if (path.empty()) {
    SetError(r, pb::CODE_INVALID_ARGUMENT, std::string(op) + ": the path is empty");
    return false;
  }
  if (path.find('\0') != std::string::npos) {
    SetError(r, pb::CODE_INVALID_ARGUMENT, std::string(op) + " " + Quote(path) + ": the path contains a NUL byte");
    return false;
  }
  for (size_t i = 0; i <= path.size();) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j - i == 2 && path.compare(i, 2, "..") == 0) {
      SetError(r, pb::CODE_INVALID_ARGUMENT,
               std::string(op) + " " + Quote(path) + ": a \"..\" path component is not allowed");
      return false;
    }
    i = j + 1;
  }
  return true;
}

// The workspace: the workdir sandbox-init was started in (its cwd, which never changes).
const std::string& Workspace() {
  static const std::string* const kWorkspace = [] {
    char buf[PATH_MAX];
    return new std::string(getcwd(buf, sizeof(buf)) != nullptr ? buf : "/");
  }();
  return *kWorkspace;
}

// File tools work inside the workspace: a relative path resolves against it, an absolute path must lie
// under it (and is made relative), and every open uses RESOLVE_BENEATH so no symlink leads out of it.
bool ConfineToWorkspace(std::string_view op, std::string* path, pb::Response* r) {
  if (path->empty() || (*path)[0] != '/') return true;
  const std::string& ws = Workspace();
  std::string rest;
  if (ws == "/") {
    rest = path->substr(1);
  } else if (*path == ws || (path->size() > ws.size() && path->compare(0, ws.size(), ws) == 0 &&
                             (*path)[ws.size()] == '/')) {
    rest = path->substr(ws.size());
  } else {
    SetError(r, pb::CODE_INVALID_ARGUMENT,
             std::string(op) + " " + Quote(*path) + ": the path is outside the workspace " + ws);
    return false;
  }
  while (!rest.empty() && rest[0] == '/') rest.erase(0, 1);
  *path = rest.empty() ? "." : rest;
  return true;
}

// Splits a checked path into its parent directory and final name ("a/b/" -> "a", "b"; "x" -> ".", "x";
// "/x" -> "/", "x"). False (filling `r`) when it names no entry that could be created or removed ("/", ".").
bool SplitParent(std::string_view op, const std::string& path, std::string* parent, std::string* name,
                 pb::Response* r) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  if (slash == std::string::npos) {
    *parent = ".";
    *name = p;
  } else {
    *name = p.substr(slash + 1);
    *parent = p.substr(0, slash);
    while (parent->size() > 1 && parent->back() == '/') parent->pop_back();
    if (parent->empty()) *parent = "/";
  }
  if (name->empty() || *name == ".") {
    SetError(r, pb::CODE_INVALID_ARGUMENT, std::string(op) + " " + Quote(path) + ": the path names no entry");
    return false;
  }
  return true;
}

// openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: resolution stays beneath `dirfd` (AT_FDCWD: the
// workspace, init's cwd) — an absolute symlink or a ".." that climbs out fails with EXDEV — and never goes
// through /proc/<pid>/fd/*, /proc/<pid>/root and the like.
int OpenAt2(int dirfd, const char* path, uint64_t flags, uint64_t mode = 0) {
  open_how how{};
  how.flags = flags;
  how.mode = (flags & O_CREAT) ? mode : 0;
  how.resolve = RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH;
  int fd;
  do {
    fd = static_cast<int>(syscall(SYS_openat2, dirfd, path, &how, sizeof(how)));
  } while (fd < 0 && errno == EINTR);
  if (fd < 0 && errno == ENOSYS) {
    // Kernels before 5.6 have no openat2; the magic-link guard is then lost, the rest holds.
    fd = openat(dirfd, path, static_cast<int>(flags), static_cast<mode_t>(how.mode));
  }
  return fd;
}

// ---- File tools ---------------------------------------------------------------------------------------

void FillInfo(const std::string& name, const struct stat& st, pb::FileInfo* info) {
  info->set_name(name);
  if (S_ISREG(st.st_mode)) {
    info->set_type(pb::FileInfo::TYPE_FILE);
  } else if (S_ISDIR(st.st_mode)) {
    info->set_type(pb::FileInfo::TYPE_DIRECTORY);
  } else if (S_ISLNK(st.st_mode)) {
    info->set_type(pb::FileInfo::TYPE_SYMLINK);
  } else {
    info->set_type(pb::FileInfo::TYPE_OTHER);
  }
  info->set_size(static_cast<uint64_t>(st.st_size));
  info->set_mode(st.st_mode & 07777);
  info->set_mtime_ns(static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec);
}

std::string ReadLinkAt(int dirfd, const char* name) {
  char buf[PATH_MAX];
  const ssize_t n = readlinkat(dirfd, name, buf, sizeof(buf));
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Opens a regular file for reading (a final symlink is followed, inside the jail). O_NONBLOCK so that a FIFO
// cannot stall init; anything but a regular file is refused.
UniqueFd OpenRegularForRead(std::string_view op, const std::string& path, pb::Response* r) {
  UniqueFd fd(OpenAt2(AT_FDCWD, path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    SetErrnoError(r, op, path, errno);
    return fd;
  }
  struct stat st;
  if (fstat(fd.get(), &st) < 0) {
    SetErrnoError(r, op, path, errno);
    return UniqueFd();
  }
  if (!S_ISREG(st.st_mode)) {
    SetError(r, pb::CODE_FAILED_PRECONDITION,
             std::string(op) + " " + Quote(path) + (S_ISDIR(st.st_mode) ? ": is a directory" : ": not a regular file"));
    return UniqueFd();
  }
  return fd;
}

void WriteFileOp(const pb::WriteFile& q, pb::Response* r) {
  if (!CheckPath("write_file", q.path(), r)) return;
  if (q.offset() > static_cast<uint64_t>(INT64_MAX) - q.data().size()) {
    SetError(r, pb::CODE_INVALID_ARGUMENT, "write_file " + Quote(q.path()) + ": offset out of range");
    return;
  }
  uint64_t flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
  if (q.truncate()) flags |= O_TRUNC;
  const uint32_t mode = q.mode() == 0 ? 0644 : (q.mode() & 07777);
  // NOTE: O_NOFOLLOW: a symlink planted at the final component (say to /etc/shadow) is refused, not written
  // through. Intermediate symlinks resolve inside the jail only.
  UniqueFd fd(OpenAt2(AT_FDCWD, q.path().c_str(), flags, mode));
  if (!fd) return SetErrnoError(r, "write_file", q.path(), errno);
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return SetErrnoError(r, "write_file", q.path(), errno);
  if (!S_ISREG(st.st_mode)) {
    SetError(r, pb::CODE_FAILED_PRECONDITION, "write_file " + Quote(q.path()) + ": not a regular file");
    return;
  }
  const std::string& data = q.data();
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = pwrite(fd.get(), data.data() + done, data.size() - done,
                             static_cast<off_t>(q.offset() + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return SetErrnoError(r, "write_file", q.path(), errno);
    }
    done += static_cast<size_t>(n);
  }
  r->mutable_ok();
}

void ReadFileOp(const pb::ReadFile& q, pb::Response* r) {
  if (!CheckPath("read_file", q.path(), r)) return;
  if (q.offset() > static_cast<uint64_t>(INT64_MAX)) {
    SetError(r, pb::CODE_INVALID_ARGUMENT, "read_file " + Quote(q.path()) + ": offset out of range");
    return;
  }
  UniqueFd fd = OpenRegularForRead("read_file", q.path(), r);
  if (!fd) return;
  const size_t length = static_cast<size_t>(std::min<uint64_t>(q.length(), kMaxChunkBytes));
  std::string* data = r->mutable_file_data()->mutable_data();
  data->resize(length);
  size_t done = 0;
  while (done < length) {
    const ssize_t n = pread(fd.get(), data->data() + done, length - done, static_cast<off_t>(q.offset() + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      r->Clear();
      return SetErrnoError(r, "read_file", q.path(), errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  data->resize(done);
}

void Sha256Op(const pb::Sha256& q, pb::Response* r) {
  if (!CheckPath("sha256", q.path(), r)) return;
  UniqueFd fd = OpenRegularForRead("sha256", q.path(), r);
  if (!fd) return;
  // NOTE: hashing runs on the event loop; at a few hundred MB/s a file within the policy's file size cap
  // holds the loop for seconds at most, while output keeps queueing in the kernel's pipes.
  Sha256 hash;
  std::vector<char> buf(64u << 10);
  for (;;) {
    const ssize_t n = read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return SetErrnoError(r, "sha256", q.path(), errno);
    }
    if (n == 0) break;
    hash.Update(buf.data(), static_cast<size_t>(n));
  }
  r->mutable_sha256()->set_hex(Sha256::Hex(hash.Final()));
}

void ListFilesOp(const pb::ListFiles& q, pb::Response* r) {
  if (!CheckPath("list_files", q.path(), r)) return;
  const int fd = OpenAt2(AT_FDCWD, q.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return SetErrnoError(r, "list_files", q.path(), errno);
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    const int err = errno;
    close(fd);
    return SetErrnoError(r, "list_files", q.path(), err);
  }
  std::vector<std::string> names;
  bool too_many = false;
  errno = 0;
  while (dirent* entry = readdir(dir)) {
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    if (names.size() >= kMaxListEntries) {
      too_many = true;
      break;
    }
    names.emplace_back(entry->d_name);
  }
  if (too_many) {
    closedir(dir);
    SetError(r, pb::CODE_RESOURCE_EXHAUSTED,
             "list_files " + Quote(q.path()) + ": more than " + std::to_string(kMaxListEntries) + " entries");
    return;
  }
  std::sort(names.begin(), names.end());
  pb::FileList* list = r->mutable_file_list();
  for (const std::string& name : names) {
    struct stat st;
    if (fstatat(dirfd(dir), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) continue;  // removed meanwhile
    pb::FileInfo* info = list->add_entries();
    FillInfo(name, st, info);
    if (S_ISLNK(st.st_mode)) info->set_symlink_target(ReadLinkAt(dirfd(dir), name.c_str()));
  }
  closedir(dir);
}

void StatOp(const pb::Stat& q, pb::Response* r) {
  if (!CheckPath("stat", q.path(), r)) return;
  // O_PATH | O_NOFOLLOW: describes a final symlink (even a magic one) instead of following it.
  UniqueFd fd(OpenAt2(AT_FDCWD, q.path().c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return SetErrnoError(r, "stat", q.path(), errno);
  struct stat st;
  if (fstatat(fd.get(), "", &st, AT_EMPTY_PATH) < 0) return SetErrnoError(r, "stat", q.path(), errno);
  pb::FileInfo* info = r->mutable_file_info();
  FillInfo(q.path(), st, info);
  if (S_ISLNK(st.st_mode)) info->set_symlink_target(ReadLinkAt(fd.get(), ""));
}

void MkdirOp(const pb::Mkdir& q, pb::Response* r) {
  if (!CheckPath("mkdir", q.path(), r)) return;
  const std::string& path = q.path();
  if (!q.parents()) {
    std::string parent, name;
    if (!SplitParent("mkdir", path, &parent, &name, r)) return;
    UniqueFd dir(OpenAt2(AT_FDCWD, parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir) return SetErrnoError(r, "mkdir", path, errno);
    if (mkdirat(dir.get(), name.c_str(), 0755) < 0) return SetErrnoError(r, "mkdir", path, errno);
    r->mutable_ok();
    return;
  }
  // mkdir -p: one component at a time, each opened (not re-resolved) before the next.
  UniqueFd cur(OpenAt2(AT_FDCWD, path[0] == '/' ? "/" : ".", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!cur) return SetErrnoError(r, "mkdir", path, errno);
  for (size_t i = 0; i <= path.size();) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    const std::string name = path.substr(i, j - i);
    i = j + 1;
    if (name.empty() || name == ".") continue;
    if (mkdirat(cur.get(), name.c_str(), 0755) < 0 && errno != EEXIST) {
      return SetErrnoError(r, "mkdir", path, errno);
    }
    UniqueFd next(OpenAt2(cur.get(), name.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!next) {
      if (errno == ENOTDIR) {
        SetError(r, pb::CODE_ALREADY_EXISTS,
                 "mkdir " + Quote(path) + ": " + Quote(name) + " exists and is not a directory");
        return;
      }
      return SetErrnoError(r, "mkdir", path, errno);
    }
    cur = std::move(next);
  }
  r->mutable_ok();
}

// Removes `name` in `parent_fd` and everything below it, never following a symlink: a symlink is unlinked
// itself, and a directory is opened with O_NOFOLLOW, so a swap for a symlink meanwhile fails instead.
// Returns 0 or an errno.
int RemoveTree(int parent_fd, const char* name, int depth) {
  if (depth > kMaxRemoveDepth) return ELOOP;
  const int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno;
  DIR* dir = fdopendir(fd);
  if (dir == nullptr) {
    const int err = errno;
    close(fd);
    return err;
  }
  std::vector<std::string> names;
  while (dirent* entry = readdir(dir)) {
    if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
    names.emplace_back(entry->d_name);
  }
  int result = 0;
  for (const std::string& child : names) {
    struct stat st;
    if (fstatat(dirfd(dir), child.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
      if (errno != ENOENT && result == 0) result = errno;
      continue;
    }
    int err = 0;
    if (S_ISDIR(st.st_mode)) {
      err = RemoveTree(dirfd(dir), child.c_str(), depth + 1);
    } else if (unlinkat(dirfd(dir), child.c_str(), 0) < 0 && errno != ENOENT) {
      err = errno;
    }
    if (err != 0 && result == 0) result = err;
  }
  closedir(dir);
  if (result != 0) return result;
  if (unlinkat(parent_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT) return errno;
  return 0;
}

void RemoveOp(const pb::Remove& q, pb::Response* r) {
  if (!CheckPath("remove", q.path(), r)) return;
  std::string parent, name;
  if (!SplitParent("remove", q.path(), &parent, &name, r)) return;
  UniqueFd dir(OpenAt2(AT_FDCWD, parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return SetErrnoError(r, "remove", q.path(), errno);
  struct stat st;
  if (fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) {
    return SetErrnoError(r, "remove", q.path(), errno);
  }
  if (S_ISDIR(st.st_mode)) {
    if (q.recursive()) {
      if (const int err = RemoveTree(dir.get(), name.c_str(), 0); err != 0) {
        if (err == ELOOP) {
          SetError(r, pb::CODE_FAILED_PRECONDITION,
                   "remove " + Quote(q.path()) + ": nested deeper than " + std::to_string(kMaxRemoveDepth) +
                       " levels, or a directory was swapped for a symlink");
          return;
        }
        return SetErrnoError(r, "remove", q.path(), err);
      }
    } else if (unlinkat(dir.get(), name.c_str(), AT_REMOVEDIR) < 0) {
      if (errno == ENOTEMPTY || errno == EEXIST) {
        SetError(r, pb::CODE_FAILED_PRECONDITION,
                 "remove " + Quote(q.path()) + ": the directory is not empty (remove it recursively)");
        return;
      }
      return SetErrnoError(r, "remove", q.path(), errno);
    }
  } else if (unlinkat(dir.get(), name.c_str(), 0) < 0) {
    // NOTE: unlinkat on a symlink removes the link itself; its target is never touched.
    return SetErrnoError(r, "remove", q.path(), errno);
  }
  r->mutable_ok();
}

// ---- Commands -----------------------------------------------------------------------------------------

// An fd in the epoll set, with the events it is registered for (0: not registered). Deregistering instead
// of asking for no events matters: epoll reports EPOLLHUP whatever was asked for.
struct Watch {
  UniqueFd fd;
  uint32_t events = 0;
};

struct StdinChunk {
  uint64_t call_id = 0;  // the StdinWrite request, answered once the chunk is written
  std::string data;
  size_t written = 0;
  bool eof = false;
};

// One running command.
struct Exec {
  uint64_t call_id = 0;
  uint64_t serial = 0;
  pid_t pid = -1;  // also its process group and session id
  bool pty = false;
  Watch out;  // stdout pipe, or the pty master (which also carries stdin)
  Watch err;  // stderr pipe (none with a pty)
  Watch in;   // stdin pipe (stdin_open without a pty)
  Watch timer;
  uint64_t offset[3] = {0, 0, 0};  // by stream (1: stdout, 2: stderr)
  bool eof[3] = {false, false, false};  // by stream; set at EOF, or when there is no such stream
  // By stream: read recently, so not watched until read_at (kReadCoalesce); the loop reads it then.
  bool deferred[3] = {false, false, false};
  Clock::time_point read_at[3];
  bool stdin_opened = false;       // a pipe or the pty: StdinWrite is possible at all
  bool stdin_writable = false;     // StdinWrite is accepted (until eof, or the command closed it)
  std::deque<StdinChunk> stdin_queue;
  size_t stdin_queued_bytes = 0;
  bool reaped = false;
  int wait_status = 0;
  bool timed_out = false;
};

struct ChildArgs {
  int errpipe = -1;
  bool pty = false;
  int terminal = -1;  // pty slave
  int in = -1;
  int out = -1;
  int err = -1;
  const char* cwd = nullptr;
  char** argv = nullptr;
  char** envp = nullptr;
  int landlock_ruleset = -1;  // the workload's Landlock ruleset; -1: the kernel has none
};

[[noreturn]] void ChildFail(int errpipe, int32_t step) {
  const ChildFailure failure{step, errno};
  ssize_t unused = write(errpipe, &failure, sizeof(failure));
  (void)unused;
  _exit(127);
}

// The command's child between fork and execve. init is single-threaded, but this sticks to plain syscalls
// anyway.
[[noreturn]] void RunChild(const ChildArgs& a) {
  if (setsid() < 0) ChildFail(a.errpipe, kStepSetsid);
  if (a.pty) {
    if (ioctl(a.terminal, TIOCSCTTY, 0) < 0) ChildFail(a.errpipe, kStepTerminal);
    if (dup2(a.terminal, 0) < 0 || dup2(a.terminal, 1) < 0 || dup2(a.terminal, 2) < 0) {
      ChildFail(a.errpipe, kStepStdio);
    }
  } else if (dup2(a.in, 0) < 0 || dup2(a.out, 1) < 0 || dup2(a.err, 2) < 0) {
    ChildFail(a.errpipe, kStepStdio);
  }
  if (a.cwd != nullptr && a.cwd[0] != '\0' && chdir(a.cwd) < 0) ChildFail(a.errpipe, kStepCwd);
  // Default dispositions for every signal: init ignores SIGPIPE/SIGXFSZ itself, and a signal ignored by
  // whoever started the agent (e.g. SIGINT for a background job) would otherwise reach the command.
  for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  // Last before execve: the command and all it starts go into a Landlock domain of their own, from which
  // init, Chromium, Xvfb and other calls' commands (same uid, all of them) cannot be inspected: no
  // /proc/<pid>/mem, /proc/<pid>/fd/* (Chromium's CDP pipe), /proc/<pid>/environ. See landlock.h.
  if (a.landlock_ruleset >= 0) {
    const int err = init::EnterWorkloadDomain(a.landlock_ruleset);
    if (err != 0) {
      errno = err;
      ChildFail(a.errpipe, kStepLandlock);
    }
  }
  // execvpe searches the PATH of `environ`, not of envp: make them the same.
  environ = a.envp;
  execvpe(a.argv[0], a.argv, a.envp);
  ChildFail(a.errpipe, kStepExec);
}

void SetNonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// ---- Driver calls off the loop ----------------------------------------------------------------------

// One driver's (the browser's or the desktop's) calls, carried out one at a time, in order, on a worker thread
// of its own, so that a call that waits (a wait_for of a minute, a page that does not load) does not hold the
// loop: exec output, file tools, signals and reaping go on meanwhile.
//
// NOTE: the thread rules.
// - The worker runs only the jobs posted to it: each touches its driver and what it captured, nothing else.
//   It never reaps (PID 1 reaps with waitpid(-1) on the loop), never sends a frame, never touches the
//   Server. It is started after Setup blocked every signal, so it inherits that mask: signals stay the
//   signalfd's.
// - While the lane has calls outstanding (posted, not yet finished on the loop: !idle()), the driver object
//   belongs to the worker: the loop neither calls, starts, replaces nor destroys it. The only thing the loop
//   reads then is the driver's child pids, which nothing but the loop (ChildExited) and the driver's
//   Start/destructor write. A driver child the loop reaps meanwhile is kept in pending_exits and handed to
//   the driver (ChildExited) once the lane is idle again.
// - A finished call's result goes back through done_ (under mu_) and the done eventfd the loop watches; the
//   loop sends the answer and keeps the screenshot, so frames and the last screenshot stay the loop's alone.
// - At most kMaxQueuedDriverCalls calls are outstanding per driver; the loop refuses more. A call whose
//   deadline passed while it waited behind another is answered DEADLINE_EXCEEDED without running.
// - Stop (the end of serving) makes the cancel eventfd readable, which ends the browser's waits at once,
//   drops the calls still queued, and joins the worker; the drivers are destroyed after that, on the loop.
class DriverLane {
 public:
  using Job = std::function<void(int64_t deadline_ms, DriverResult* result)>;

  explicit DriverLane(const char* what) : what_(what) {}
  ~DriverLane() { Stop(); }
  DriverLane(const DriverLane&) = delete;
  DriverLane& operator=(const DriverLane&) = delete;

  // Creates the eventfds and starts the worker, once. False (with *error) when the kernel refuses.
  bool Start(std::string* error) {
    if (worker_.joinable()) return true;
    done_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    cancel_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!done_fd_ || !cancel_fd_) {
      *error = std::string(what_) + ": eventfd: " + strerror(errno);
      return false;
    }
    try {
      worker_ = std::jthread([this](std::stop_token stop) { Work(stop); });
    } catch (const std::system_error& e) {
      *error = std::string(what_) + ": cannot start its worker thread: " + e.what();
      return false;
    }
    return true;
  }
  bool started() const { return worker_.joinable(); }
  int done_fd() const { return done_fd_.get(); }
  int cancel_fd() const { return cancel_fd_.get(); }
  const char* what() const { return what_; }

  // Loop only.
  bool idle() const { return outstanding_ == 0; }
  size_t outstanding() const { return outstanding_; }
  void Post(uint64_t call_id, int64_t deadline_ms, Job job) {
    ++outstanding_;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(Queued{call_id, deadline_ms, std::move(job)});
    }
    cv_.notify_one();
  }
  // The calls finished since the last time (after the done eventfd became readable).
  std::vector<DriverResult> TakeDone() {
    uint64_t count = 0;
    ssize_t unused = read(done_fd_.get(), &count, sizeof(count));
    (void)unused;
    std::vector<DriverResult> done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done.swap(done_);
    }
    outstanding_ -= std::min(outstanding_, done.size());
    return done;
  }
  // Ends the worker: the running call is canceled (the browser's waits end at once), queued ones dropped.
  void Stop() {
    if (!worker_.joinable()) return;
    const uint64_t one = 1;
    ssize_t unused = write(cancel_fd_.get(), &one, sizeof(one));
    (void)unused;
    worker_.request_stop();
    cv_.notify_all();
    worker_.join();
  }

  std::vector<std::pair<pid_t, int>> pending_exits;  // loop only: driver children reaped while not idle

 private:
  struct Queued {
    uint64_t call_id = 0;
    int64_t deadline_ms = 0;
    Job job;
  };

  void Work(std::stop_token stop) {
    for (;;) {
      Queued next;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, stop, [this] { return !queue_.empty(); });
        if (stop.stop_requested()) return;
        next = std::move(queue_.front());
        queue_.pop_front();
      }
      DriverResult result;
      result.response.set_call_id(next.call_id);
      if (init::internal::NowMs() >= next.deadline_ms) {
        SetError(&result.response, pb::CODE_DEADLINE_EXCEEDED,
                 std::string(what_) + ": the call's deadline passed while it waited for the " + what_ +
                     "'s previous call");
      } else {
        next.job(next.deadline_ms, &result);
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.push_back(std::move(result));
      }
      const uint64_t one = 1;
      ssize_t unused = write(done_fd_.get(), &one, sizeof(one));
      (void)unused;
    }
  }

  const char* const what_;
  UniqueFd done_fd_;    // eventfd: one count per finished call
  UniqueFd cancel_fd_;  // eventfd: readable once Stop began
  size_t outstanding_ = 0;  // loop only
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Queued> queue_;        // guarded by mu_
  std::vector<DriverResult> done_;  // guarded by mu_
  std::jthread worker_;  // NOTE: last member: joined (by Stop) before the rest goes
};

// ---- The server ---------------------------------------------------------------------------------------

class Server {
 public:
  explicit Server(int control_fd) { control_.fd.Reset(control_fd); }
  // The workers first (their running calls canceled), then the drivers they used.
  ~Server() {
    browser_lane_.Stop();
    desktop_lane_.Stop();
    browser_.reset();
    desktop_.reset();
  }
  int Run();

 private:
  bool Setup();
  void Dispatch(const epoll_event& event);
  void SetEvents(Watch& w, uint32_t events, uint64_t tag);
  void Close(Watch& w);

  // The control socket.
  void OnControl(uint32_t events);
  void ProcessFrames();
  void Handle(const pb::Request& request);
  void Send(const pb::Response& response);
  void Flush();
  void UpdateControlEvents();
  void UpdatePause();
  // Ends serving: every command is killed, and the loop stops.
  void Stop(const std::string& why, int status);

  // Desktop sessions.
  void DesktopStartOp(const pb::DesktopStart& q, pb::Response* r);
  void DesktopFetchOp(const pb::DesktopFetch& q, pb::Response* r);
  // Keeps a screenshot (desktop or browser) for DesktopFetch and answers with its info and first chunk.
  void StoreScreenshot(std::string image, uint32_t width, uint32_t height, uint32_t display_width,
                       uint32_t display_height, pb::Response* r);
  void BrowserStartOp(const pb::BrowserStart& q, pb::Response* r);

  // Driver calls (DriverLane): posted to the driver's worker, answered when they come back.
  void PostDriverCall(DriverLane& lane, const pb::Request& q, DriverLane::Job job);
  void PostBrowserCall(const pb::Request& q);
  // The external CDP client (init::CdpMux; one at a time): its stream is the CdpOpen call's id. The loop
  // watches the browser's client eventfd always, and Chromium's pipe and the client's input only while no
  // browser call runs (then the worker carries them, in its waits).
  void CdpOpenOp(uint64_t call_id);
  void CdpSendOp(const pb::CdpSend& q, pb::Response* r);
  void OnCdp(uint64_t which);
  void UpdateCdpWatch();
  void DrainCdp();
  void PostDesktopCall(const pb::Request& q);
  // Starts a lane's worker (once) and watches its done eventfd. False with the error in `r`.
  bool StartLane(DriverLane& lane, uint64_t tag, pb::Response* r);
  void OnDriverDone(uint64_t which);
  // A reaped driver child: handed to its driver now, or once its lane is idle.
  void DriverChildExited(pid_t pid, int status);
  void DeliverPendingExits(DriverLane& lane);

  // Signals and children.
  void OnSignals();
  void ReapChildren();
  void KillAll(int sig);

  // Commands.
  Exec* FindExec(uint64_t call_id);
  void StartExec(uint64_t call_id, const pb::ExecStart& q);
  void OnExecEvent(Src src, uint64_t serial, uint32_t events);
  void ReadOutput(Exec& e, int stream);
  // The epoll_wait timeout until the first deferred stream is due (nullptr: none, wait for events), and
  // the reads of the streams that are due.
  const timespec* DeferredReadTimeout(timespec* storage) const;
  void ReadDeferred();
  void WriteStdin(uint64_t call_id, const pb::StdinWrite& q);
  void FlushStdin(Exec& e);
  void FailStdin(Exec& e, const std::string& why);
  void SignalExec(const pb::ExecSignal& q, pb::Response* r);
  void ResizeExec(const pb::ExecResize& q, pb::Response* r);
  void UpdateExecEvents(Exec& e);
  // Sends ExecEnd and forgets the command once it was reaped and its output is complete. May destroy `e`.
  void MaybeFinish(Exec& e);

  Watch control_;
  UniqueFd epoll_;
  Watch signals_;
  // The Landlock ruleset every command enters before its execve (invalid: the kernel lacks Landlock, and
  // Setup said so on stderr). Drivers' processes (Xvfb, Chromium) are started without it, on purpose.
  UniqueFd landlock_ruleset_;
  FrameReader reader_;
  std::deque<std::string> out_;  // encoded frames to the agent
  size_t out_sent_ = 0;          // bytes of out_.front() already sent
  size_t out_bytes_ = 0;         // unsent bytes in out_
  bool paused_ = false;          // command output is not read while the agent catches up
  bool stop_ = false;
  int exit_status_ = 0;
  bool terminating_ = false;
  uint64_t next_serial_ = 1;
  std::map<uint64_t, std::unique_ptr<Exec>> execs_;  // by call id
  std::map<uint64_t, uint64_t> serials_;             // serial -> call id
  std::map<pid_t, uint64_t> pids_;                   // unreaped command pid -> call id
  std::unique_ptr<init::Desktop> desktop_;
  std::unique_ptr<init::Browser> browser_;
  uint64_t cdp_stream_ = 0;   // the client's CdpOpen call id, 0: none
  uint64_t cdp_offset_ = 0;   // of its output stream
  std::string cdp_buf_;       // taken from the browser, not yet framed (the agent is behind)
  bool cdp_ended_ = false;    // the browser ended the client: after cdp_buf_, its end
  std::string cdp_error_;
  std::vector<int> cdp_watched_;  // fds in the epoll set for the client (Src::kCdp, serial = index)
  std::string last_png_;          // the last screenshot, for DesktopFetch
  uint64_t last_image_id_ = 0;
  // NOTE: after the drivers: joined (and their calls canceled) before the drivers are destroyed.
  DriverLane browser_lane_{"browser"};
  DriverLane desktop_lane_{"desktop"};
};

constexpr uint64_t kBrowserLane = 0, kDesktopLane = 1;

bool SetupFailed(const char* what) {
  fprintf(stderr, "sandbox-init: --serve: %s: %s\n", what, strerror(errno));
  return false;
}

bool Server::Setup() {
  // fds 0-2 stay taken, so no pipe end ever lands there (a child's dup2 onto itself would keep CLOEXEC).
  for (int fd = 0; fd < 3; ++fd) {
    if (fcntl(fd, F_GETFD) < 0 && open("/", O_RDONLY | O_DIRECTORY) != fd) return SetupFailed("fds 0-2");
  }
  if (fcntl(control_.fd.get(), F_SETFD, FD_CLOEXEC) < 0) {
    fprintf(stderr, "sandbox-init: --serve needs the control socket on fd %d\n", control_.fd.get());
    return false;
  }
  SetNonblocking(control_.fd.get());
  // Not dumpable: the workload (same uid) can then neither ptrace-attach, read or write init's memory
  // through /proc/1/mem, nor take the control socket with pidfd_getfd.
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  // The commands' Landlock domain (landlock.h). Without Landlock in the kernel the commands still run, and
  // this line in the agent's log says they are not kept out of Chromium and the other commands.
  const int ruleset = init::CreateWorkloadRuleset();
  if (ruleset >= 0) {
    landlock_ruleset_.Reset(ruleset);
  } else if (init::LandlockMissing(-ruleset)) {
    fprintf(stderr,
            "sandbox-init: --serve: warning: this kernel lacks Landlock (%s): commands are NOT separated from "
            "sandbox-init, the browser or each other (only init's non-dumpable state protects init)\n",
            strerror(-ruleset));
  } else {
    errno = -ruleset;
    return SetupFailed("landlock_create_ruleset");
  }

  sigset_t all;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, nullptr);
  // EPIPE / EFBIG as errors instead of signals; children get the defaults back.
  signal(SIGPIPE, SIG_IGN);
  signal(SIGXFSZ, SIG_IGN);
  sigset_t handled;
  sigemptyset(&handled);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT}) sigaddset(&handled, sig);
  signals_.fd.Reset(signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signals_.fd) return SetupFailed("signalfd");
  epoll_.Reset(epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return SetupFailed("epoll_create1");
  SetEvents(signals_, EPOLLIN, Tag(Src::kSignals, 0));
  UpdateControlEvents();
  return true;
}

int Server::Run() {
  if (!Setup()) return 125;
  epoll_event events[64];
  while (!stop_) {
    if (terminating_ && execs_.empty() && out_.empty()) break;
    timespec storage;
    const timespec* timeout = DeferredReadTimeout(&storage);
    int n = epoll_pwait2(epoll_.get(), events, 64, timeout, nullptr);
    if (n < 0 && (errno == ENOSYS || errno == EPERM)) {
      // A kernel before 5.11 (or a filter that refuses it): whole milliseconds, rounded up (a deferred read
      // comes later, never early).
      const int ms = timeout == nullptr ? -1 : static_cast<int>(timeout->tv_sec * 1000 + timeout->tv_nsec / 1'000'000 + 1);
      n = epoll_wait(epoll_.get(), events, 64, ms);
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      Stop(std::string("epoll_wait: ") + strerror(errno), 125);
      break;
    }
    for (int i = 0; i < n && !stop_; ++i) Dispatch(events[i]);
    if (!stop_) ReadDeferred();
  }
  KillAll(SIGKILL);
  return exit_status_;
}

void Server::Dispatch(const epoll_event& event) {
  const Src src = static_cast<Src>(event.data.u64 >> 56);
  switch (src) {
    case Src::kControl:
      OnControl(event.events);
      break;
    case Src::kSignals:
      OnSignals();
      break;
    case Src::kDriver:
      OnDriverDone(event.data.u64 & kSerialMask);
      break;
    case Src::kCdp:
      OnCdp(event.data.u64 & kSerialMask);
      break;
    default:
      OnExecEvent(src, event.data.u64 & kSerialMask, event.events);
  }
}

void Server::SetEvents(Watch& w, uint32_t events, uint64_t tag) {
  if (!w.fd || events == w.events) return;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = tag;
  if (events == 0) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, w.fd.get(), nullptr);
  } else if (w.events == 0) {
    epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, w.fd.get(), &ev);
  } else {
    epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, w.fd.get(), &ev);
  }
  w.events = events;
}

void Server::Close(Watch& w) {
  SetEvents(w, 0, 0);
  w.fd.Reset();
}

void Server::Stop(const std::string& why, int status) {
  if (!why.empty()) fprintf(stderr, "sandbox-init: %s; killing every command and exiting\n", why.c_str());
  KillAll(SIGKILL);
  stop_ = true;
  exit_status_ = status;
}

// ---- Control socket ----

void Server::OnControl(uint32_t events) {
  if (events & (EPOLLOUT | EPOLLERR)) Flush();
  if (stop_) return;
  ProcessFrames();
  if (stop_ || !(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  if (reader_.ready() || out_bytes_ >= kPauseRequestsBytes) return;  // not reading now
  static char buf[kControlReadBytes];
  const ssize_t n = read(control_.fd.get(), buf, sizeof(buf));
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    return Stop(std::string("reading the control socket: ") + strerror(errno), 0);
  }
  if (n == 0) {
    // The agent is gone (or dropped us). A frame cut short is reported; a clean close is the normal end.
    const bool clean = reader_.Finish();
    return Stop(clean ? "" : reader_.error(), clean ? 0 : 2);
  }
  if (!reader_.Feed(buf, static_cast<size_t>(n))) return Stop("protocol error: " + reader_.error(), 2);
  ProcessFrames();
}

void Server::ProcessFrames() {
  std::string_view payload;
  while (!stop_ && out_bytes_ < kPauseRequestsBytes && reader_.Next(&payload)) {
    pb::Request request;
    if (!request.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      return Stop("protocol error: a request frame of " + std::to_string(payload.size()) + " bytes is malformed", 2);
    }
    Handle(request);
  }
  UpdateControlEvents();
}

void Server::UpdateControlEvents() {
  uint32_t events = 0;
  if (!stop_ && out_bytes_ < kPauseRequestsBytes && !reader_.ready()) events |= EPOLLIN;
  if (!out_.empty()) events |= EPOLLOUT;
  SetEvents(control_, events, Tag(Src::kControl, 0));
}

void Server::Handle(const pb::Request& q) {
  pb::Response r;
  r.set_call_id(q.call_id());
  switch (q.kind_case()) {
    case pb::Request::kExecStart:
      return StartExec(q.call_id(), q.exec_start());
    case pb::Request::kStdinWrite:
      return WriteStdin(q.call_id(), q.stdin_write());  // answered once written
    case pb::Request::kSignal:
      SignalExec(q.signal(), &r);
      break;
    case pb::Request::kResize:
      ResizeExec(q.resize(), &r);
      break;
    case pb::Request::kWriteFile: {
      pb::WriteFile w = q.write_file();
      if (CheckPath("write_file", w.path(), &r) && ConfineToWorkspace("write_file", w.mutable_path(), &r)) WriteFileOp(w, &r);
      break;
    }
    case pb::Request::kSha256: {
      pb::Sha256 h = q.sha256();
      if (CheckPath("sha256", h.path(), &r) && ConfineToWorkspace("sha256", h.mutable_path(), &r)) Sha256Op(h, &r);
      break;
    }
    case pb::Request::kReadFile: {
      pb::ReadFile f = q.read_file();
      if (CheckPath("read_file", f.path(), &r) && ConfineToWorkspace("read_file", f.mutable_path(), &r)) ReadFileOp(f, &r);
      break;
    }
    case pb::Request::kListFiles: {
      pb::ListFiles l = q.list_files();
      if (CheckPath("list_files", l.path(), &r) && ConfineToWorkspace("list_files", l.mutable_path(), &r)) ListFilesOp(l, &r);
      break;
    }
    case pb::Request::kStat: {
      pb::Stat st = q.stat();
      if (CheckPath("stat", st.path(), &r) && ConfineToWorkspace("stat", st.mutable_path(), &r)) StatOp(st, &r);
      break;
    }
    case pb::Request::kMkdir: {
      pb::Mkdir m = q.mkdir();
      if (CheckPath("mkdir", m.path(), &r) && ConfineToWorkspace("mkdir", m.mutable_path(), &r)) MkdirOp(m, &r);
      break;
    }
    case pb::Request::kRemove: {
      pb::Remove rm = q.remove();
      if (CheckPath("remove", rm.path(), &r) && ConfineToWorkspace("remove", rm.mutable_path(), &r)) RemoveOp(rm, &r);
      break;
    }
    case pb::Request::kDesktopStart:
      DesktopStartOp(q.desktop_start(), &r);
      break;
    case pb::Request::kDesktopInput:
      return PostDesktopCall(q);  // answered when the desktop's worker is done
    case pb::Request::kDesktopFetch:
      DesktopFetchOp(q.desktop_fetch(), &r);
      break;
    case pb::Request::kBrowserStart:
      BrowserStartOp(q.browser_start(), &r);
      break;
    case pb::Request::kBrowserRequest:
      return PostBrowserCall(q);  // answered when the browser's worker is done
    case pb::Request::kCdpOpen:
      return CdpOpenOp(q.call_id());  // answered with the client's messages, then its end
    case pb::Request::kCdpSend:
      CdpSendOp(q.cdp_send(), &r);
      break;
    case pb::Request::KIND_NOT_SET:
      SetError(&r, pb::CODE_INVALID_ARGUMENT, "a request without a kind (is the agent newer than sandbox-init?)");
      break;
  }
  Send(r);
}

void Server::Send(const pb::Response& r) {
  if (stop_) return;
  const size_t size = r.ByteSizeLong();
  if (size > kMaxFrameBytes) {
    pb::Response too_big;
    too_big.set_call_id(r.call_id());
    SetError(&too_big, pb::CODE_RESOURCE_EXHAUSTED,
             "the answer of " + std::to_string(size) + " bytes exceeds the " + std::to_string(kMaxFrameBytes) +
                 "-byte frame cap");
    return Send(too_big);
  }
  std::string frame(kFrameHeaderBytes + size, '\0');
  EncodeFrameHeader(static_cast<uint32_t>(size), frame.data());
  r.SerializeToArray(frame.data() + kFrameHeaderBytes, static_cast<int>(size));
  out_bytes_ += frame.size();
  out_.push_back(std::move(frame));
  Flush();
}

void Server::Flush() {
  while (!out_.empty() && !stop_) {
    const std::string& frame = out_.front();
    const ssize_t n = send(control_.fd.get(), frame.data() + out_sent_, frame.size() - out_sent_,
                           MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Stop(std::string("writing to the agent: ") + strerror(errno), 0);
    }
    out_sent_ += static_cast<size_t>(n);
    out_bytes_ -= static_cast<size_t>(n);
    if (out_sent_ == frame.size()) {
      out_.pop_front();
      out_sent_ = 0;
    }
  }
  UpdateControlEvents();
  UpdatePause();
}

void Server::UpdatePause() {
  const bool pause = paused_ ? out_bytes_ > kResumeOutputBytes : out_bytes_ >= kPauseOutputBytes;
  if (pause == paused_) return;
  paused_ = pause;
  for (auto& [id, e] : execs_) UpdateExecEvents(*e);
  if (!paused_ && cdp_stream_ != 0) DrainCdp();
}

// ---- Signals ----

void Server::OnSignals() {
  signalfd_siginfo info;
  while (read(signals_.fd.get(), &info, sizeof(info)) == sizeof(info)) {
    if (info.ssi_signo == SIGCHLD) continue;  // reaped below
    // NOTE: only the agent may end the jail this way; the workload runs as init's uid and may signal PID 1
    // too. Trusted: kill(2) or pidfd_send_signal from outside the pid namespace, which the kernel marks
    // SI_USER with no sender pid visible here (0). Everything else is ignored:
    //  - kill(2) from inside the jail: SI_USER, but the sender's pid is set;
    //  - rt_sigqueueinfo/pidfd_send_signal with a siginfo of the workload's making: it may put 0 in si_pid,
    //    but the kernel refuses si_code >= 0 (SI_USER is 0) for a signal to another process;
    //  - F_SETOWN 1 + F_SETSIG + O_ASYNC: the kernel sends the signal itself, with si_code POLL_* and no pid.
    if (info.ssi_code != SI_USER || info.ssi_pid != 0) continue;
    if (!terminating_) {
      terminating_ = true;
      KillAll(static_cast<int>(info.ssi_signo));
    } else {
      KillAll(SIGKILL);  // a second one: no more grace
    }
  }
  ReapChildren();
  if (terminating_) {
    // Shutting down, a command ends when it is reaped, even if a process outside its group still holds its
    // output open.
    std::vector<uint64_t> ids;
    for (const auto& [id, e] : execs_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (Exec* e = FindExec(id)) MaybeFinish(*e);
    }
  }
}

void Server::ReapChildren() {
  for (;;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    DriverChildExited(pid, status);
    const auto it = pids_.find(pid);
    if (it == pids_.end()) continue;  // an orphan re-parented to PID 1
    Exec* e = FindExec(it->second);
    pids_.erase(it);
    if (e == nullptr) continue;
    e->reaped = true;
    e->wait_status = status;
    // Its last output is read at once: no read waits for more writes of a command that has ended (ExecEnd
    // would come kReadCoalesce late).
    e->deferred[1] = e->deferred[2] = false;
    UpdateExecEvents(*e);
    MaybeFinish(*e);
  }
}

void Server::KillAll(int sig) {
  for (auto& [id, e] : execs_) kill(-e->pid, sig);
}

// ---- Desktop ----

void Server::DesktopStartOp(const pb::DesktopStart& q, pb::Response* r) {
  // NOTE: the driver belongs to the worker while calls are outstanding (DriverLane).
  if (!desktop_lane_.idle()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "desktop: a call is still running on the display");
  }
  if (desktop_ && desktop_->alive()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "the desktop is already started");
  }
  desktop_.reset();  // a display that is gone can be started again
  if (!StartLane(desktop_lane_, kDesktopLane, r)) return;
  init::DesktopConfig config;
  config.width = q.width() == 0 ? 1280 : q.width();
  config.height = q.height() == 0 ? 800 : q.height();
  config.window_manager = q.window_manager();
  for (char** e = environ; *e != nullptr; ++e) config.env.emplace_back(*e);
  std::string error;
  desktop_ = init::Desktop::Start(config, &error);
  if (!desktop_) return SetError(r, pb::CODE_FAILED_PRECONDITION, "desktop: " + error);
  pb::DesktopInfo* info = r->mutable_desktop_info();
  info->set_width(desktop_->width());
  info->set_height(desktop_->height());
  info->set_display(desktop_->display_name());
}

void Server::StoreScreenshot(std::string image, uint32_t width, uint32_t height, uint32_t display_width,
                             uint32_t display_height, pb::Response* r) {
  last_png_ = std::move(image);
  ++last_image_id_;
  pb::ScreenshotInfo* info = r->mutable_screenshot_info();
  info->set_image_id(last_image_id_);
  info->set_width(width);
  info->set_height(height);
  info->set_display_width(display_width);
  info->set_display_height(display_height);
  info->set_size(last_png_.size());
  info->set_sha256(Sha256Hex(last_png_));
  info->set_data(last_png_.substr(0, std::min<size_t>(last_png_.size(), kMaxChunkBytes)));
}

void Server::DesktopFetchOp(const pb::DesktopFetch& q, pb::Response* r) {
  if (q.image_id() != last_image_id_ || last_image_id_ == 0) {
    return SetError(r, pb::CODE_NOT_FOUND, "desktop_fetch: not the last screenshot");
  }
  if (q.offset() >= last_png_.size()) return SetError(r, pb::CODE_INVALID_ARGUMENT, "desktop_fetch: offset past the end");
  r->mutable_file_data()->set_data(
      last_png_.substr(q.offset(), std::min<size_t>(last_png_.size() - q.offset(), kMaxChunkBytes)));
}

// ---- Browser ----

void Server::BrowserStartOp(const pb::BrowserStart& q, pb::Response* r) {
  // NOTE: the driver belongs to the worker while calls are outstanding (DriverLane).
  if (!browser_lane_.idle()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "browser: a call is still running in the browser");
  }
  if (browser_ && browser_->alive()) {
    return SetError(r, pb::CODE_FAILED_PRECONDITION, "the browser is already started");
  }
  if (cdp_stream_ != 0) {  // the gone browser's client ends with it
    DrainCdp();
    if (cdp_stream_ != 0) {
      pb::Response end;
      end.set_call_id(cdp_stream_);
      SetError(&end, pb::CODE_UNAVAILABLE, "cdp: the browser is gone");
      cdp_stream_ = 0;
      Send(end);
    }
    UpdateCdpWatch();
  }
  browser_.reset();  // a browser that is gone can be started again
  if (!StartLane(browser_lane_, kBrowserLane, r)) return;
  init::BrowserConfig config;
  config.profile_dir = "/tmp/.browser-profile";
  config.width = q.width() == 0 ? 1280 : q.width();
  config.height = q.height() == 0 ? 800 : q.height();
  config.proxy = q.proxy();
  // Downloads land in the workspace's downloads/ (the agent streams each back as file events).
  config.download_dir = (Workspace() == "/" ? "" : Workspace()) + "/downloads";
  if (mkdir(config.download_dir.c_str(), 0755) < 0 && errno != EEXIST) {
    return SetErrnoError(r, "browser: mkdir", config.download_dir, errno);
  }
  for (char** e = environ; *e != nullptr; ++e) {
    if (strncmp(*e, "TMPDIR=", 7) != 0) config.env.emplace_back(*e);
  }
  config.env.emplace_back("TMPDIR=/tmp");
  std::string error;
  browser_ = init::Browser::Start(config, &error);
  if (!browser_) return SetError(r, pb::CODE_FAILED_PRECONDITION, "browser: " + error);
  browser_->set_cancel_fd(browser_lane_.cancel_fd());
  r->mutable_ok();
}

// ---- Driver calls ----

bool Server::StartLane(DriverLane& lane, uint64_t tag, pb::Response* r) {
  if (lane.started()) return true;
  std::string error;
  if (!lane.Start(&error)) {
    SetError(r, pb::CODE_INTERNAL, error);
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = Tag(Src::kDriver, tag);
  if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, lane.done_fd(), &ev) < 0) {
    SetErrnoError(r, lane.what(), "epoll_ctl", errno);
    lane.Stop();
    return false;
  }
  return true;
}

void Server::PostDriverCall(DriverLane& lane, const pb::Request& q, DriverLane::Job job) {
  if (lane.outstanding() >= kMaxQueuedDriverCalls) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_RESOURCE_EXHAUSTED,
             std::string(lane.what()) + ": " + std::to_string(kMaxQueuedDriverCalls) + " calls already wait for the " +
                 lane.what() + " (one runs at a time)");
    return Send(r);
  }
  // The deadline counts from now, when the call arrived, including any wait behind an earlier call.
  const uint32_t timeout_ms = q.timeout_ms() == 0 ? kDefaultDriverCallMs : std::min(q.timeout_ms(), kMaxDriverCallMs);
  lane.Post(q.call_id(), init::internal::NowMs() + timeout_ms, std::move(job));
}

void Server::PostBrowserCall(const pb::Request& q) {
  if (!browser_) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "not a browser session (no browser was started)");
    return Send(r);
  }
  init::Browser* b = browser_.get();  // NOTE: not replaced or destroyed while the lane is not idle
  PostDriverCall(browser_lane_, q, [b, request = q.browser_request()](int64_t deadline_ms, DriverResult* result) {
    RunBrowserRequest(*b, request, Workspace(), deadline_ms, result);
  });
  UpdateCdpWatch();  // the worker holds the browser now
}

// ---- The external CDP client ----

void Server::CdpOpenOp(uint64_t call_id) {
  pb::Response r;
  r.set_call_id(call_id);
  // NOTE: alive() is the loop's to read only while no call runs; a browser gone meanwhile ends the client.
  if (!browser_ || (browser_lane_.idle() && !browser_->alive())) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: the browser is not running in this session");
    return Send(r);
  }
  if (cdp_stream_ != 0) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: a CDP client is already connected to this session (one at a time)");
    return Send(r);
  }
  std::string error;
  if (!browser_->ClientOpen(&error)) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "cdp: " + error);
    return Send(r);
  }
  cdp_stream_ = call_id;
  cdp_offset_ = 0;
  cdp_buf_.clear();
  cdp_ended_ = false;
  cdp_error_.clear();
  // An empty first chunk: the client is accepted (the agent answers its caller only then).
  r.mutable_output()->set_stream(pb::OUTPUT_STREAM_STDOUT);
  Send(r);
  UpdateCdpWatch();
  if (browser_lane_.idle()) browser_->RelayPump();
}

void Server::CdpSendOp(const pb::CdpSend& q, pb::Response* r) {
  if (cdp_stream_ == 0 || q.stream_id() != cdp_stream_ || !browser_) {
    return SetError(r, pb::CODE_NOT_FOUND, "cdp: no such CDP client (it ended)");
  }
  browser_->ClientInput(q.data(), q.close());
  if (browser_lane_.idle()) browser_->RelayPump();
  r->mutable_ok();
}

void Server::UpdateCdpWatch() {
  std::vector<int> want;
  if (browser_ && cdp_stream_ != 0) {
    want.push_back(browser_->client_fd());
    if (browser_lane_.idle()) {
      want.push_back(browser_->chromium_fd());
      want.push_back(browser_->client_input_fd());
    }
  }
  if (want == cdp_watched_) return;
  for (int fd : cdp_watched_) epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  cdp_watched_.clear();
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] < 0) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = Tag(Src::kCdp, i);
    if (epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, want[i], &ev) == 0) cdp_watched_.push_back(want[i]);
  }
  // NOTE: an fd that could not be added is left out; compare by what is watched next time.
  if (cdp_watched_.size() != want.size()) cdp_watched_ = want;
}

void Server::OnCdp(uint64_t which) {
  if (!browser_ || cdp_stream_ == 0) return UpdateCdpWatch();
  if (which != 0 && browser_lane_.idle()) browser_->RelayPump();
  DrainCdp();
}

void Server::DrainCdp() {
  if (!browser_ || cdp_stream_ == 0) return;
  if (paused_) {
    // The agent is behind: what waits stays in the browser, which cuts the client off past its bound.
    uint64_t count = 0;
    ssize_t unused = read(browser_->client_fd(), &count, sizeof(count));
    (void)unused;
    return;
  }
  init::Browser::ClientOutput out = browser_->TakeClientOutput();
  cdp_buf_.append(out.data);
  if (out.ended) {
    cdp_ended_ = true;
    cdp_error_ = out.error;
  }
  size_t sent = 0;
  while (sent < cdp_buf_.size() && !paused_ && !stop_) {
    const size_t n = std::min<size_t>(cdp_buf_.size() - sent, kMaxChunkBytes);
    pb::Response r;
    r.set_call_id(cdp_stream_);
    pb::Output* o = r.mutable_output();
    o->set_stream(pb::OUTPUT_STREAM_STDOUT);
    o->set_data(cdp_buf_.substr(sent, n));
    o->set_offset(cdp_offset_);
    cdp_offset_ += n;
    sent += n;
    Send(r);
  }
  cdp_buf_.erase(0, sent);
  if (cdp_ended_ && cdp_buf_.empty()) {
    pb::Response r;
    r.set_call_id(cdp_stream_);
    if (cdp_error_.empty()) {
      r.mutable_exec_end()->set_exit_code(0);
    } else {
      SetError(&r, pb::CODE_UNAVAILABLE, "cdp: " + cdp_error_);
    }
    cdp_stream_ = 0;
    cdp_ended_ = false;
    UpdateCdpWatch();
    Send(r);
  }
}

void Server::PostDesktopCall(const pb::Request& q) {
  if (!desktop_) {
    pb::Response r;
    r.set_call_id(q.call_id());
    SetError(&r, pb::CODE_FAILED_PRECONDITION, "not a desktop session (no display was started)");
    return Send(r);
  }
  init::Desktop* d = desktop_.get();  // NOTE: not replaced or destroyed while the lane is not idle
  const int cancel_fd = desktop_lane_.cancel_fd();
  PostDriverCall(desktop_lane_, q,
                 [d, cancel_fd, request = q.desktop_input()](int64_t deadline_ms, DriverResult* result) {
                   RunDesktopInput(*d, request, cancel_fd, deadline_ms, result);
                 });
}

void Server::OnDriverDone(uint64_t which) {
  DriverLane& lane = which == kBrowserLane ? browser_lane_ : desktop_lane_;
  for (DriverResult& done : lane.TakeDone()) {
    if (done.has_image) {
      StoreScreenshot(std::move(done.image), done.width, done.height, done.display_width, done.display_height,
                      &done.response);
    }
    Send(done.response);
  }
  if (lane.idle()) DeliverPendingExits(lane);
  if (&lane == &browser_lane_ && cdp_stream_ != 0) {
    UpdateCdpWatch();  // the loop holds the browser again
    if (lane.idle() && browser_) browser_->RelayPump();
    DrainCdp();
  }
}

void Server::DriverChildExited(pid_t pid, int status) {
  // NOTE: reading the pids while a worker runs a call is safe: only this thread writes them (ChildExited),
  // besides the drivers' Start and destructor, which run here with the lane idle.
  if (desktop_ && (pid == desktop_->xvfb_pid() || pid == desktop_->wm_pid())) {
    desktop_lane_.pending_exits.emplace_back(pid, status);
    if (desktop_lane_.idle()) DeliverPendingExits(desktop_lane_);
  }
  if (browser_ && pid == browser_->pid()) {
    browser_lane_.pending_exits.emplace_back(pid, status);
    if (browser_lane_.idle()) DeliverPendingExits(browser_lane_);
  }
}

void Server::DeliverPendingExits(DriverLane& lane) {
  for (const auto& [pid, status] : lane.pending_exits) {
    if (&lane == &desktop_lane_ && desktop_) desktop_->ChildExited(pid);
    if (&lane == &browser_lane_ && browser_) browser_->ChildExited(pid, status);
  }
  lane.pending_exits.clear();
}

// ---- Commands ----

Exec* Server::FindExec(uint64_t call_id) {
  const auto it = execs_.find(call_id);
  return it == execs_.end() ? nullptr : it->second.get();
}

// NOTE: commands are started with fork + execvpe here, not Boost.Process: as PID 1, init reaps every process
// of the namespace with waitpid(-1) (a process library's own per-child waits would race it and lose exit
// statuses); a pty command needs setsid + TIOCSCTTY on a terminal opened with TIOCGPTPEER between fork and
// exec; and each command's pipes must be nonblocking ends of this epoll loop with backpressure. Boost.Process
// 1.74 offers none of these hooks without fighting it.
void Server::StartExec(uint64_t call_id, const pb::ExecStart& q) {
  pb::Response r;
  r.set_call_id(call_id);
  auto fail = [&](pb::Code code, std::string message) {
    SetError(&r, code, std::move(message));
    Send(r);
  };
  auto fail_errno = [&](const char* what, int err) {
    fail(CodeForErrno(err), std::string("exec: ") + what + ": " + strerror(err));
  };
  if (terminating_) return fail(pb::CODE_FAILED_PRECONDITION, "exec: sandbox-init is shutting down");
  if (call_id == 0 || execs_.count(call_id) > 0) {
    return fail(pb::CODE_INVALID_ARGUMENT, "exec: call id " + std::to_string(call_id) + " is 0 or in use");
  }
  if (q.argv_size() == 0 || q.argv(0).empty()) return fail(pb::CODE_INVALID_ARGUMENT, "exec: argv is empty");
  if (execs_.size() >= kMaxExecs) {
    return fail(pb::CODE_RESOURCE_EXHAUSTED,
                "exec: " + std::to_string(kMaxExecs) + " commands are running already");
  }
  if (q.rows() > 0xffff || q.cols() > 0xffff) {
    return fail(pb::CODE_INVALID_ARGUMENT, "exec: the window size is out of range");
  }
  auto has_nul = [](const std::string& s) { return s.find('\0') != std::string::npos; };
  bool nul = has_nul(q.cwd());
  for (const std::string& s : q.argv()) nul = nul || has_nul(s);
  for (const std::string& s : q.env()) nul = nul || has_nul(s);
  if (nul) return fail(pb::CODE_INVALID_ARGUMENT, "exec: argv, env and cwd may not contain NUL bytes");

  std::vector<char*> argv;
  for (const std::string& s : q.argv()) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> env;
  for (const std::string& s : q.env()) env.push_back(const_cast<char*>(s.c_str()));
  env.push_back(nullptr);

  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return fail_errno("pipe2", errno);
  UniqueFd errpipe_read(fds[0]), errpipe_write(fds[1]);
  UniqueFd out_read, out_write, err_read, err_write, in_read, in_write, master, terminal;
  if (q.pty() && q.socket_stdio()) {
    return fail(pb::CODE_INVALID_ARGUMENT, "exec: socket_stdio is not for a pty command");
  }
  if (q.pty()) {
    master.Reset(posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!master) return fail_errno("opening a pseudo-terminal", errno);
    if (unlockpt(master.get()) < 0) return fail_errno("unlockpt", errno);
    // TIOCGPTPEER opens the slave from the master itself, with no path lookup in /dev/pts.
    terminal.Reset(ioctl(master.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!terminal) return fail_errno("opening the terminal (TIOCGPTPEER)", errno);
    winsize ws{};
    ws.ws_row = static_cast<unsigned short>(q.rows());
    ws.ws_col = static_cast<unsigned short>(q.cols());
    if (ioctl(master.get(), TIOCSWINSZ, &ws) < 0) return fail_errno("TIOCSWINSZ", errno);
  } else {
    if (q.socket_stdio()) {
      if (!q.stdin_open()) return fail(pb::CODE_INVALID_ARGUMENT, "exec: socket_stdio needs stdin_open");
      if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) < 0) return fail_errno("socketpair", errno);
      out_read.Reset(fds[0]);
      out_write.Reset(fds[1]);
      in_write.Reset(fcntl(out_read.get(), F_DUPFD_CLOEXEC, 3));
      in_read.Reset(fcntl(out_write.get(), F_DUPFD_CLOEXEC, 3));
      if (!in_write || !in_read) return fail_errno("dup", errno);
    } else if (pipe2(fds, O_CLOEXEC) < 0) {
      return fail_errno("pipe2", errno);
    } else {
      out_read.Reset(fds[0]);
      out_write.Reset(fds[1]);
    }
    // A 1 MiB stdout pipe (the unprivileged maximum) lets each read fill a whole 256 KiB chunk: 4x fewer
    // frames for bulk output. Best effort: a smaller pipe only costs speed.
    (void)fcntl(out_read.get(), F_SETPIPE_SZ, 1 << 20);
    if (pipe2(fds, O_CLOEXEC) < 0) return fail_errno("pipe2", errno);
    err_read.Reset(fds[0]);
    err_write.Reset(fds[1]);
    // Without stdin_open, stdin is a pipe whose write end is closed at once: EOF on the first read, like
    // /dev/null, with no dependence on the jail's device nodes.
    if (!q.socket_stdio()) {
      if (pipe2(fds, O_CLOEXEC) < 0) return fail_errno("pipe2", errno);
      in_read.Reset(fds[0]);
      in_write.Reset(fds[1]);
      if (!q.stdin_open()) in_write.Reset();
    }
  }

  ChildArgs args;
  args.errpipe = errpipe_write.get();
  args.pty = q.pty();
  args.terminal = terminal.get();
  args.in = in_read.get();
  args.out = out_write.get();
  args.err = err_write.get();
  args.cwd = q.cwd().c_str();
  args.argv = argv.data();
  args.envp = q.env_size() > 0 ? env.data() : environ;
  args.landlock_ruleset = landlock_ruleset_.get();

  const pid_t pid = fork();
  if (pid < 0) return fail_errno("fork", errno);
  if (pid == 0) RunChild(args);  // never returns
  errpipe_write.Reset();
  out_write.Reset();
  err_write.Reset();
  in_read.Reset();
  terminal.Reset();

  // EOF on the CLOEXEC pipe: execve succeeded. The child gets there (or fails) without waiting on anything.
  ChildFailure failure{};
  ssize_t n;
  do {
    n = read(errpipe_read.get(), &failure, sizeof(failure));
  } while (n < 0 && errno == EINTR);
  if (n == sizeof(failure)) {
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    switch (failure.step) {
      case kStepExec: {
        pb::ExecEnd* end = r.mutable_exec_end();
        end->set_exit_code(-1);
        end->set_exec_errno(failure.err);
        return Send(r);
      }
      case kStepCwd:
        return fail(CodeForErrno(failure.err), "exec: cwd " + Quote(q.cwd()) + ": " + strerror(failure.err));
      case kStepSetsid:
        return fail_errno("setsid", failure.err);
      case kStepTerminal:
        return fail_errno("making the pty the controlling terminal", failure.err);
      case kStepLandlock:
        return fail_errno("entering the command's Landlock domain", failure.err);
      default:
        return fail_errno("setting up stdio", failure.err);
    }
  }

  auto e = std::make_unique<Exec>();
  e->call_id = call_id;
  e->serial = next_serial_++;
  e->pid = pid;
  e->pty = q.pty();
  if (q.pty()) {
    e->out.fd = std::move(master);
    e->eof[2] = true;  // stderr is the terminal too
    e->stdin_writable = true;
  } else {
    e->out.fd = std::move(out_read);
    e->err.fd = std::move(err_read);
    e->in.fd = std::move(in_write);
    e->stdin_writable = e->in.fd.valid();
  }
  e->stdin_opened = e->stdin_writable;
  for (Watch* w : {&e->out, &e->err, &e->in}) {
    if (w->fd) SetNonblocking(w->fd.get());
  }
  if (q.timeout_ms() > 0) {
    e->timer.fd.Reset(timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(q.timeout_ms() / 1000);
    spec.it_value.tv_nsec = static_cast<long>(q.timeout_ms() % 1000) * 1'000'000;
    if (!e->timer.fd || timerfd_settime(e->timer.fd.get(), 0, &spec, nullptr) < 0) {
      // Without its timer the command must not run unbounded.
      kill(-pid, SIGKILL);
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      return fail_errno("timerfd", errno);
    }
  }
  Exec& ref = *e;
  serials_[ref.serial] = call_id;
  pids_[pid] = call_id;
  execs_[call_id] = std::move(e);
  UpdateExecEvents(ref);
}

void Server::UpdateExecEvents(Exec& e) {
  const bool stdin_pending = !e.stdin_queue.empty();
  const auto read = [&](int stream) { return paused_ || e.deferred[stream] ? 0u : uint32_t{EPOLLIN}; };
  const uint32_t write = stdin_pending ? uint32_t{EPOLLOUT} : 0u;
  SetEvents(e.out, e.eof[1] ? 0u : read(1) | (e.pty ? write : 0u), Tag(Src::kStdout, e.serial));
  SetEvents(e.err, e.eof[2] ? 0u : read(2), Tag(Src::kStderr, e.serial));
  SetEvents(e.in, write, Tag(Src::kStdin, e.serial));
  SetEvents(e.timer, EPOLLIN, Tag(Src::kTimer, e.serial));
}

void Server::OnExecEvent(Src src, uint64_t serial, uint32_t events) {
  const auto it = serials_.find(serial);
  if (it == serials_.end()) return;  // a command that ended earlier in this batch
  Exec& e = *execs_.at(it->second);
  switch (src) {
    case Src::kStdout:
      if (e.pty && !e.stdin_queue.empty() && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) FlushStdin(e);
      if (!paused_ && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) ReadOutput(e, 1);
      break;
    case Src::kStderr:
      if (!paused_) ReadOutput(e, 2);
      break;
    case Src::kStdin:
      FlushStdin(e);
      break;
    case Src::kTimer: {
      uint64_t expirations;
      ssize_t unused = read(e.timer.fd.get(), &expirations, sizeof(expirations));
      (void)unused;
      Close(e.timer);
      e.timed_out = true;
      kill(-e.pid, SIGKILL);
      break;
    }
    default:
      return;
  }
  if (stop_) return;
  UpdateExecEvents(e);
  MaybeFinish(e);
}

void Server::ReadOutput(Exec& e, int stream) {
  Watch& w = stream == 1 ? e.out : e.err;
  static char buf[kMaxChunkBytes];
  for (int i = 0; i < kReadsPerWake; ++i) {
    if (!w.fd || e.eof[stream] || stop_) return;
    ssize_t n = read(w.fd.get(), buf, sizeof(buf));
    if (n < 0) {
      // Nothing there: the stream is watched again (UpdateExecEvents), the next write is read at once.
      if (errno == EAGAIN || errno == EINTR) return;
      // EIO on a pty master: every end of the terminal is closed, its EOF. Any other error ends the stream.
      n = 0;
    }
    if (n == 0) {
      e.eof[stream] = true;
      e.deferred[stream] = false;
      if (e.pty) {
        // NOTE: the master stays open until the command is reaped. Closing it hangs the terminal up, and the
        // SIGHUP would hit a command that is still in exit(): its status would then read "killed by SIGHUP".
        SetEvents(w, 0, 0);
        FailStdin(e, "stdin: the terminal is closed");
      } else {
        Close(w);
      }
      return;
    }
    pb::Response r;
    r.set_call_id(e.call_id);
    pb::Output* output = r.mutable_output();
    output->set_stream(stream == 1 ? pb::OUTPUT_STREAM_STDOUT : pb::OUTPUT_STREAM_STDERR);
    output->mutable_data()->assign(buf, static_cast<size_t>(n));
    output->set_offset(e.offset[stream]);
    e.offset[stream] += static_cast<uint64_t>(n);
    Send(r);
    // A short read emptied the pipe; a full one may have left more (then read on, unless the agent is behind).
    if (static_cast<size_t>(n) < sizeof(buf) || paused_) break;
  }
  // The command is writing: read it again after kReadCoalesce, not on its next write. Not once it was reaped
  // (its last bytes are read at once, and its EOF seen).
  if (!e.reaped && !e.eof[stream]) {
    e.deferred[stream] = true;
    e.read_at[stream] = Clock::now() + kReadCoalesce;
  }
}

const timespec* Server::DeferredReadTimeout(timespec* storage) const {
  bool any = false;
  Clock::time_point first;
  for (const auto& [id, e] : execs_) {
    for (int stream : {1, 2}) {
      if (e->deferred[stream] && (!any || e->read_at[stream] < first)) {
        first = e->read_at[stream];
        any = true;
      }
    }
  }
  if (!any) return nullptr;
  const auto ns = std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::nanoseconds>(first - Clock::now()).count());
  storage->tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  storage->tv_nsec = static_cast<long>(ns % 1'000'000'000);
  return storage;
}

void Server::ReadDeferred() {
  const Clock::time_point now = Clock::now();
  std::vector<uint64_t> due;
  for (const auto& [id, e] : execs_) {
    if ((e->deferred[1] && e->read_at[1] <= now) || (e->deferred[2] && e->read_at[2] <= now)) due.push_back(id);
  }
  for (uint64_t id : due) {
    Exec* e = FindExec(id);
    if (e == nullptr) continue;
    for (int stream : {1, 2}) {
      if (!e->deferred[stream] || e->read_at[stream] > now) continue;
      e->deferred[stream] = false;
      if (!paused_) ReadOutput(*e, stream);  // paused: watched again once the agent catches up
      if (stop_) return;
    }
    UpdateExecEvents(*e);
    MaybeFinish(*e);  // may destroy e
  }
}

void Server::WriteStdin(uint64_t call_id, const pb::StdinWrite& q) {
  pb::Response r;
  r.set_call_id(call_id);
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    SetError(&r, pb::CODE_NOT_FOUND, "stdin: no running command with call id " + std::to_string(q.exec_id()));
    return Send(r);
  }
  if (!e->stdin_writable) {
    SetError(&r, pb::CODE_FAILED_PRECONDITION,
             e->stdin_opened ? "stdin: the command's stdin is closed"
                             : "stdin: the command's stdin was not opened (stdin_open is false)");
    return Send(r);
  }
  if (e->stdin_queued_bytes + q.data().size() > kMaxStdinQueuedBytes) {
    SetError(&r, pb::CODE_RESOURCE_EXHAUSTED,
             "stdin: more than " + std::to_string(kMaxStdinQueuedBytes) + " bytes are waiting for the command");
    return Send(r);
  }
  StdinChunk chunk;
  chunk.call_id = call_id;
  chunk.data = q.data();
  chunk.eof = q.eof();
  if (e->pty && q.eof()) {
    // A terminal has no end of input: send its EOF character, as a user pressing ctrl-D would.
    termios t{};
    chunk.data.push_back(tcgetattr(e->out.fd.get(), &t) == 0 ? static_cast<char>(t.c_cc[VEOF]) : '\x04');
  }
  if (q.eof()) e->stdin_writable = false;
  e->stdin_queued_bytes += chunk.data.size();
  e->stdin_queue.push_back(std::move(chunk));
  FlushStdin(*e);
  UpdateExecEvents(*e);
}

void Server::FlushStdin(Exec& e) {
  const int fd = e.pty ? e.out.fd.get() : e.in.fd.get();
  while (!e.stdin_queue.empty()) {
    StdinChunk& chunk = e.stdin_queue.front();
    if (fd < 0) return FailStdin(e, "stdin: the command's stdin is closed");
    if (chunk.written < chunk.data.size()) {
      const ssize_t n = write(fd, chunk.data.data() + chunk.written, chunk.data.size() - chunk.written);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) return;
        return FailStdin(e, errno == EPIPE || errno == EIO ? "stdin: the command closed its stdin"
                                                           : std::string("stdin: ") + strerror(errno));
      }
      chunk.written += static_cast<size_t>(n);
      continue;
    }
    if (chunk.eof && !e.pty) {
      shutdown(e.in.fd.get(), SHUT_WR);  // a socket_stdio command sees EOF (fails harmlessly on a pipe)
      Close(e.in);
    }
    pb::Response r;
    r.set_call_id(chunk.call_id);
    r.mutable_ok();
    e.stdin_queued_bytes -= chunk.data.size();
    e.stdin_queue.pop_front();
    Send(r);
  }
}

void Server::FailStdin(Exec& e, const std::string& why) {
  e.stdin_writable = false;
  if (!e.pty) Close(e.in);
  while (!e.stdin_queue.empty()) {
    pb::Response r;
    r.set_call_id(e.stdin_queue.front().call_id);
    SetError(&r, pb::CODE_FAILED_PRECONDITION, why);
    e.stdin_queue.pop_front();
    Send(r);
  }
  e.stdin_queued_bytes = 0;
}

void Server::SignalExec(const pb::ExecSignal& q, pb::Response* r) {
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    return SetError(r, pb::CODE_NOT_FOUND, "signal: no running command with call id " + std::to_string(q.exec_id()));
  }
  if (q.signo() < 1 || q.signo() >= NSIG) {
    return SetError(r, pb::CODE_INVALID_ARGUMENT, "signal: " + std::to_string(q.signo()) + " is not a signal");
  }
  // To the whole process group, as a terminal would.
  if (kill(-e->pid, q.signo()) < 0) {
    if (errno == ESRCH) {
      return SetError(r, pb::CODE_FAILED_PRECONDITION, "signal: the command's process group has no processes left");
    }
    return SetError(r, CodeForErrno(errno), std::string("signal: ") + strerror(errno));
  }
  r->mutable_ok();
}

void Server::ResizeExec(const pb::ExecResize& q, pb::Response* r) {
  Exec* e = FindExec(q.exec_id());
  if (e == nullptr) {
    return SetError(r, pb::CODE_NOT_FOUND, "resize: no running command with call id " + std::to_string(q.exec_id()));
  }
  if (!e->pty) return SetError(r, pb::CODE_FAILED_PRECONDITION, "resize: the command has no pty");
  if (q.rows() > 0xffff || q.cols() > 0xffff) {
    return SetError(r, pb::CODE_INVALID_ARGUMENT, "resize: the window size is out of range");
  }
  if (e->eof[1]) return SetError(r, pb::CODE_FAILED_PRECONDITION, "resize: the terminal is closed");
  winsize ws{};
  ws.ws_row = static_cast<unsigned short>(q.rows());
  ws.ws_col = static_cast<unsigned short>(q.cols());
  if (ioctl(e->out.fd.get(), TIOCSWINSZ, &ws) < 0) {
    return SetError(r, CodeForErrno(errno), std::string("resize: ") + strerror(errno));
  }
  r->mutable_ok();
}

void Server::MaybeFinish(Exec& e) {
  if (!e.reaped) return;
  const bool cut_short = e.timed_out || terminating_;
  if ((!e.eof[1] || !e.eof[2]) && !cut_short) return;  // NOTE: all output precedes ExecEnd
  if (cut_short) {
    // Its process group was killed; what it wrote before is still in the pipes (a process that escaped the
    // group may hold them open: its later output is cut off).
    for (int stream : {1, 2}) {
      for (int i = 0; i < kDrainReadsAfterTimeout && !e.eof[stream]; ++i) {
        const uint64_t before = e.offset[stream];
        ReadOutput(e, stream);
        if (e.offset[stream] == before) break;
      }
    }
  }
  FailStdin(e, "stdin: the command ended before reading it");
  pb::Response r;
  r.set_call_id(e.call_id);
  pb::ExecEnd* end = r.mutable_exec_end();
  if (WIFEXITED(e.wait_status)) {
    end->set_exit_code(WEXITSTATUS(e.wait_status));
  } else {
    end->set_exit_code(-1);
    end->set_signal(WTERMSIG(e.wait_status));
  }
  end->set_timed_out(e.timed_out);
  Send(r);
  for (Watch* w : {&e.out, &e.err, &e.in, &e.timer}) Close(*w);
  serials_.erase(e.serial);
  execs_.erase(e.call_id);  // destroys e
}

}  // namespace

int ServeInitProtocol(int control_fd) {
  Server server(control_fd);
  return server.Run();
}

}  // namespace sbx::sandbox
