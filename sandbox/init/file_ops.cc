#include "sandbox/init/file_ops.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "base/sha256.h"
#include "base/unique_fd.h"
#include "wire/frame.h"

namespace sbx::sandbox::serve {

// The workspace: the workdir sandbox-init was started in (its cwd, which never changes).
const std::string& Workspace() {
  static const std::string* const kWorkspace = [] {
    char buf[PATH_MAX];
    return new std::string(getcwd(buf, sizeof(buf)) != nullptr ? buf : "/");
  }();
  return *kWorkspace;
}

namespace {

constexpr size_t kMaxListEntries = 10'000;
constexpr int kMaxRemoveDepth = 256;

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

// Checks the agent's path and confines it to the workspace, then runs the op on the request with that path.
template <typename Request>
void RunConfined(const char* op, Request q, void (*run)(const Request&, pb::Response*), pb::Response* r) {
  if (CheckPath(op, q.path(), r) && ConfineToWorkspace(op, q.mutable_path(), r)) run(q, r);
}

}  // namespace

void RunFileRequest(const pb::Request& q, pb::Response* r) {
  switch (q.kind_case()) {
    case pb::Request::kWriteFile:
      return RunConfined("write_file", q.write_file(), WriteFileOp, r);
    case pb::Request::kSha256:
      return RunConfined("sha256", q.sha256(), Sha256Op, r);
    case pb::Request::kReadFile:
      return RunConfined("read_file", q.read_file(), ReadFileOp, r);
    case pb::Request::kListFiles:
      return RunConfined("list_files", q.list_files(), ListFilesOp, r);
    case pb::Request::kStat:
      return RunConfined("stat", q.stat(), StatOp, r);
    case pb::Request::kMkdir:
      return RunConfined("mkdir", q.mkdir(), MkdirOp, r);
    case pb::Request::kRemove:
      return RunConfined("remove", q.remove(), RemoveOp, r);
    default:
      return;
  }
}

}  // namespace sbx::sandbox::serve
