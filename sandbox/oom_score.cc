#include "sandbox/oom_score.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::sandbox {

absl::Status ProtectAgentFromOomKiller() {
  UniqueFd fd(open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC));
  if (!fd) return ErrnoToStatus(errno, "open /proc/self/oom_score_adj");
  const std::string value = std::to_string(kAgentOomScoreAdj);
  if (write(fd.get(), value.data(), value.size()) != static_cast<ssize_t>(value.size())) {
    const int err = errno;
    return ErrnoToStatus(err, absl::StrCat("the OOM killer may pick this agent before a jail: lowering its "
                                           "oom_score_adj to ", kAgentOomScoreAdj,
                                           err == EACCES || err == EPERM ? " (needs CAP_SYS_RESOURCE)" : ""));
  }
  return absl::OkStatus();
}

}  // namespace sbx::sandbox
