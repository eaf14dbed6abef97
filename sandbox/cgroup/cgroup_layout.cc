// Where session cgroups go (CgroupLayout): worked out from /proc/self/mountinfo and /proc/self/cgroup, and
// the parent directories prepared.
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
namespace {

using cgroup_internal::Split;
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

}  // namespace

using cgroup_internal::MkdirAll;
using cgroup_internal::PrepareV2;
using cgroup_internal::ReadFile;
using cgroup_internal::UniqueDirs;
using cgroup_internal::ValidateComponent;
using cgroup_internal::WithPermissionHint;
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

}  // namespace sbx::sandbox
