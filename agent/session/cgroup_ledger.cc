#include "agent/session/cgroup_ledger.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/obs/log.h"
#include "agent/session/session.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

constexpr char kLockName[] = ".lock";

// A session id as this agent makes them, so a marker's name is never a path.
bool IsSessionId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CgroupLedger>> CgroupLedger::Open(const std::string& dir,
                                                                const sandbox::CgroupLayout* cgroups,
                                                                size_t* recovered) {
  *recovered = 0;
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return ErrnoToStatus(errno, "mkdir " + dir);
  const std::string lock_path = absl::StrCat(dir, "/", kLockName);
  UniqueFd lock(open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  if (!lock) return ErrnoToStatus(errno, "open " + lock_path);
  // NOTE: a POSIX record lock, not flock(2). A flock belongs to the open file description, which every jail
  // child shares between its clone and its execve (a copy of the agent's fd table); an agent SIGKILLed while
  // a jail was being set up then kept "holding" the lock through that child for a few milliseconds, and a
  // restart right away (systemd's Restart=, a test) was refused. A record lock belongs to the process: it is
  // not inherited, and it ends the moment the agent does.
  struct flock whole {};
  whole.l_type = F_WRLCK;
  whole.l_whence = SEEK_SET;
  if (fcntl(lock.get(), F_SETLK, &whole) != 0) {
    if (errno == EAGAIN || errno == EACCES) {
      return absl::FailedPreconditionError(
          absl::StrCat(lock_path, " is held by another agent: each agent needs a state_dir of its own"));
    }
    return ErrnoToStatus(errno, "lock " + lock_path);
  }
  std::unique_ptr<CgroupLedger> ledger(new CgroupLedger(dir, std::move(lock)));

  std::vector<std::string> left;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return ErrnoToStatus(errno, "opendir " + dir);
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name == "." || name == ".." || name == kLockName) continue;
    left.push_back(name);
  }
  closedir(d);
  for (const std::string& id : left) {
    if (!IsSessionId(id)) {
      Log(LogLevel::kWarn, "cgroup ledger: ignoring a file that is not a session id", {{"file", dir + "/" + id}});
      continue;
    }
    if (cgroups != nullptr) {
      absl::StatusOr<sandbox::Cgroup> leftover = sandbox::Cgroup::Adopt(*cgroups, SessionCgroupName(id));
      const absl::Status removed = leftover.ok() ? leftover->Remove() : leftover.status();
      if (!removed.ok() && !absl::IsNotFound(removed)) {
        // Kept in the ledger: the next start tries again.
        Log(LogLevel::kError, "cgroup ledger: could not remove a session's cgroup left by a previous agent",
            {{"session_id", id}, {"error", removed.ToString()}});
        continue;
      }
      if (removed.ok()) {
        ++*recovered;
        Log(LogLevel::kInfo, "cgroup ledger: removed a session's cgroup left by a previous agent",
            {{"session_id", id}});
      }
    }
    ledger->Remove(id);
  }
  return ledger;
}

absl::Status CgroupLedger::Add(const std::string& session_id) {
  if (!IsSessionId(session_id)) {
    return absl::InvalidArgumentError(absl::StrCat("cgroup ledger: '", session_id, "' is not a session id"));
  }
  const std::string path = absl::StrCat(dir_, "/", session_id);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  if (!fd) return ErrnoToStatus(errno, "cgroup ledger: open " + path);
  return absl::OkStatus();
}

void CgroupLedger::Remove(const std::string& session_id) {
  if (!IsSessionId(session_id)) return;
  const std::string path = absl::StrCat(dir_, "/", session_id);
  if (unlink(path.c_str()) != 0 && errno != ENOENT) {
    Log(LogLevel::kWarn, "cgroup ledger: could not forget a session",
        {{"session_id", session_id}, {"error", ErrnoToStatus(errno, "unlink " + path).ToString()}});
  }
}

}  // namespace sbx::agent
