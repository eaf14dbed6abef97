#include "agent/run/init_locator.h"

#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace sbx::agent {

absl::StatusOr<std::string> LocateInit(std::string_view explicit_path) {
  std::vector<std::string> candidates;
  if (!explicit_path.empty()) {
    candidates.emplace_back(explicit_path);
  } else {
    if (const char* env = std::getenv("SANDBOX_AGENT_INIT"); env != nullptr && *env != '\0') {
      candidates.emplace_back(env);
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
      std::string dir(self, static_cast<size_t>(n));
      dir.resize(dir.rfind('/'));
      candidates.push_back(dir + "/sandbox-init");
      candidates.push_back(dir + "/../libexec/sandbox-agent/sandbox-init");
    }
  }
  for (const std::string& path : candidates) {
    char resolved[PATH_MAX];
    if (realpath(path.c_str(), resolved) != nullptr && access(resolved, X_OK) == 0) return std::string(resolved);
  }
  return absl::NotFoundError(
      absl::StrCat("sandbox-init not found (tried: ", absl::StrJoin(candidates, ", "),
                   "); pass --init-path or set SANDBOX_AGENT_INIT"));
}

}  // namespace sbx::agent
