#include "agent/run/outcome_json.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::agent {

const char* SeccompAuditAction(sandbox::SeccompAudit::Kind kind) {
  switch (kind) {
    case sandbox::SeccompAudit::Kind::kDenied: return "seccomp_denied";
    case sandbox::SeccompAudit::Kind::kKilled: return "seccomp_killed";
    case sandbox::SeccompAudit::Kind::kSuppressed: return "seccomp_suppressed";
  }
  return "seccomp_denied";
}

std::string OutcomeToJson(const sandbox::RunResult& result, const std::vector<sandbox::SeccompAudit>& audits) {
  nlohmann::json j;
  j["status"] = std::string(sandbox::RunStatusName(result.status));
  j["reason"] = std::string(sandbox::RunReasonName(result.reason));
  j["exit_code"] = result.exit_code >= 0 ? nlohmann::json(result.exit_code) : nlohmann::json(nullptr);
  j["signal"] = result.signal > 0 ? nlohmann::json(result.signal) : nlohmann::json(nullptr);
  j["usage"] = {{"wall_ms", result.usage.wall_ms},
                {"cpu_user_ms", result.usage.cpu_user_ms},
                {"cpu_sys_ms", result.usage.cpu_sys_ms},
                {"max_memory_bytes", result.usage.max_memory_bytes}};
  if (!result.message.empty()) j["message"] = result.message;
  if (!result.warnings.empty()) j["warnings"] = result.warnings;
  for (const sandbox::SeccompAudit& a : audits) {
    nlohmann::json r = {{"action", SeccompAuditAction(a.kind)}};
    if (a.kind == sandbox::SeccompAudit::Kind::kSuppressed) {
      r["suppressed"] = a.suppressed;
    } else {
      r["syscall"] = a.syscall;
      r["args"] = a.args;
      r["pid"] = a.pid;
      r["comm"] = a.comm;  // escaped by the supervisor: printable ASCII only
      if (a.kind == sandbox::SeccompAudit::Kind::kDenied) r["errno"] = a.errno_value;
    }
    j["seccomp_audits"].push_back(std::move(r));
  }
  return j.dump() + "\n";
}

namespace {

absl::Status WriteAll(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    const ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoToStatus(n < 0 ? errno : EIO, absl::StrCat("--outcome-json: cannot write ", what));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

// What may be written in place: a pipe, a socket, a terminal or /dev/null. Not a regular file (that is
// replaced, see below), and never another device (as root, a link to /dev/sda must not get the JSON).
bool WritableInPlace(int fd, const struct stat& st) {
  if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) return true;
  if (!S_ISCHR(st.st_mode)) return false;
  return isatty(fd) || st.st_rdev == makedev(1, 3);  // /dev/null
}

absl::Status WriteInPlace(const std::string& path, int open_flags, std::string_view json) {
  UniqueFd out(open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC | open_flags));
  if (!out) return ErrnoToStatus(errno, absl::StrCat("--outcome-json: cannot open ", path));
  struct stat st;
  if (fstat(out.get(), &st) != 0) return ErrnoToStatus(errno, absl::StrCat("--outcome-json: fstat ", path));
  if (!WritableInPlace(out.get(), st)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--outcome-json: ", path,
        S_ISREG(st.st_mode) ? " is a symlink to a regular file; name the file itself (or \"-\" for stdout)"
                            : " is not a regular file, pipe, socket, terminal or /dev/null"));
  }
  return WriteAll(out.get(), json, path);
}

}  // namespace

absl::Status WriteOutcomeJson(const sandbox::RunResult& result, std::string_view path,
                              const std::vector<sandbox::SeccompAudit>& audits) {
  const std::string json = OutcomeToJson(result, audits);
  // "-" is fd 1 as it is: never reopened by name (with stdout redirected to a file, /dev/stdout resolves to
  // that file, and replacing "it" replaced the /dev/stdout symlink itself).
  if (path == "-") return WriteAll(STDOUT_FILENO, json, "stdout");
  const std::string target(path);
  struct stat st;
  if (lstat(target.c_str(), &st) == 0) {
    // A symlink is followed only to write in place (bash's >(...) hands out /dev/fd/N); never replaced.
    if (S_ISLNK(st.st_mode)) return WriteInPlace(target, 0, json);
    if (!S_ISREG(st.st_mode)) return WriteInPlace(target, O_NOFOLLOW, json);
    if (st.st_uid != geteuid()) {
      return absl::FailedPreconditionError(absl::StrCat("--outcome-json: ", target, " is owned by uid ", st.st_uid,
                                                        ", not by this user; refusing to replace it"));
    }
  } else if (errno != ENOENT) {
    return ErrnoToStatus(errno, absl::StrCat("--outcome-json: ", target));
  }
  // A regular file of ours, or nothing: a temporary file of our own (O_EXCL, random name, same directory)
  // renamed over it, so a reader never sees half of it. rename() replaces the name, never what a symlink
  // put there in the meantime points at.
  const size_t slash = target.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : target.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? target : target.substr(slash + 1);
  uint64_t nonce = 0;
  if (getrandom(&nonce, sizeof(nonce), GRND_NONBLOCK) != sizeof(nonce)) nonce = static_cast<uint64_t>(getpid());
  const std::string tmp = absl::StrCat(slash == std::string::npos ? "" : dir, ".", base, ".tmp.", absl::Hex(nonce));
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) return ErrnoToStatus(errno, absl::StrCat("--outcome-json: cannot create ", tmp));
  if (absl::Status s = WriteAll(fd.get(), json, tmp); !s.ok()) {
    unlink(tmp.c_str());
    return s;
  }
  fd.Reset();
  if (rename(tmp.c_str(), target.c_str()) < 0) {
    const int err = errno;
    unlink(tmp.c_str());
    return ErrnoToStatus(err, absl::StrCat("--outcome-json: cannot rename to ", target));
  }
  return absl::OkStatus();
}

}  // namespace sbx::agent
