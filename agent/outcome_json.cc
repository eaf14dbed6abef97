#include "agent/outcome_json.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "sandbox/status.h"
#include "sandbox/unique_fd.h"

namespace sbx::agent {

std::string OutcomeToJson(const sandbox::RunResult& result) {
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
  return j.dump() + "\n";
}

absl::Status WriteOutcomeJson(const sandbox::RunResult& result, std::string_view path) {
  const std::string json = OutcomeToJson(result);
  const std::string target = path == "-" ? "/dev/stdout" : std::string(path);
  struct stat st;
  if (stat(target.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    // A terminal, pipe or /dev/stdout: write in place; there is nothing to rename over.
    UniqueFd out(open(target.c_str(), O_WRONLY | O_CLOEXEC));
    if (!out) return ErrnoToStatus(errno, absl::StrCat("--outcome-json: cannot open ", target));
    if (write(out.get(), json.data(), json.size()) != static_cast<ssize_t>(json.size())) {
      return ErrnoToStatus(errno, absl::StrCat("--outcome-json: cannot write ", target));
    }
    return absl::OkStatus();
  }
  const std::string tmp = absl::StrCat(target, ".tmp.", getpid());
  UniqueFd fd(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return ErrnoToStatus(errno, absl::StrCat("--outcome-json: cannot create ", tmp));
  if (write(fd.get(), json.data(), json.size()) != static_cast<ssize_t>(json.size())) {
    const int err = errno;
    unlink(tmp.c_str());
    return ErrnoToStatus(err, absl::StrCat("--outcome-json: cannot write ", tmp));
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
