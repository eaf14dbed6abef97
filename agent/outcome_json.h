// The outcome of a run as JSON: {status, reason, exit_code, signal, usage{wall_ms, cpu_user_ms, cpu_sys_ms,
// max_memory_bytes}, message, warnings}. exit_code and signal are null when they do not apply.
#ifndef SBX_AGENT_OUTCOME_JSON_H_
#define SBX_AGENT_OUTCOME_JSON_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "sandbox/result.h"

namespace sbx::agent {

std::string OutcomeToJson(const sandbox::RunResult& result);

// Writes the JSON to `path`:
//   "-"                   fd 1, in place (never reopened by name).
//   no file, or a regular file owned by the caller's euid: a new temporary file in the same directory
//                         (O_CREAT|O_EXCL, random name) renamed over it, so a reader never sees half of it.
//   a regular file owned by someone else, a directory, a device other than a terminal or /dev/null:
//                         refused (FailedPrecondition), nothing written.
//   a pipe, socket, terminal or /dev/null (also through a symlink, e.g. /dev/fd/63): written in place.
//   a symlink to a regular file (or to nothing): refused; a symlink is never replaced or written through
//                         to a regular file. Use "-" for stdout redirected to a file.
absl::Status WriteOutcomeJson(const sandbox::RunResult& result, std::string_view path);

}  // namespace sbx::agent

#endif  // SBX_AGENT_OUTCOME_JSON_H_
