// Cgroup: the interface both cgroup versions share (cgroup.h), dispatching to cgroup_v1.cc and cgroup_v2.cc
// where they differ. The layout discovery is in cgroup_layout.cc, the cgroupfs helpers in cgroupfs.cc.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/cgroup/cgroupfs.h"

namespace sbx::sandbox {

using cgroup_internal::DirMaker;
using cgroup_internal::Exists;
using cgroup_internal::ReadKeyed;
using cgroup_internal::ReadPids;
using cgroup_internal::RmdirBounded;
using cgroup_internal::UniqueDirs;
using cgroup_internal::ValidateComponent;
using cgroup_internal::WaitEmpty;
using cgroup_internal::WriteFile;
using cgroup_internal::WriteIfExists;
absl::StatusOr<Cgroup> Cgroup::Create(const CgroupLayout& layout, std::string_view name,
                                      const CgroupLimits& limits) {
  RETURN_IF_ERROR(ValidateComponent(name, "cgroup name"));
  Cgroup cg;
  cg.version_ = layout.version;
  DirMaker dirs(name);
  absl::Status status =
      layout.version == CgroupVersion::kV2 ? cg.CreateV2(layout, limits, &dirs) : cg.CreateV1(layout, limits, &dirs);
  if (!status.ok()) {
    if (cg.v2_dir_fd_ >= 0) close(std::exchange(cg.v2_dir_fd_, -1));
    // Nothing can have joined the new directories yet, so they are empty and rmdir succeeds.
    dirs.RemoveAll();
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
  RETURN_IF_ERROR(version_ == CgroupVersion::kV2 ? ReadUsageV2(&usage) : ReadUsageV1(&usage));
  return usage;
}

absl::Status Cgroup::KillAll() const {
  if (removed_) return absl::OkStatus();
  return version_ == CgroupVersion::kV2 ? KillAllV2() : KillAllV1();
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
