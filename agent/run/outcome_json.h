// The outcome of a run as JSON: {status, reason, exit_code, signal, usage{wall_ms, cpu_user_ms, cpu_sys_ms,
// max_memory_bytes}, message, warnings, seccomp_audits}. exit_code and signal are null when they do not apply;
// seccomp_audits (the seccomp supervisor's records: action, syscall, args, pid, comm, errno, suppressed) is
// present only when there were any.
#ifndef SBX_AGENT_RUN_OUTCOME_JSON_H_
#define SBX_AGENT_RUN_OUTCOME_JSON_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "sandbox/result.h"
#include "sandbox/seccomp_notify.h"

namespace sbx::agent {

// The audit action names events and JSON use: seccomp_denied, seccomp_killed, seccomp_suppressed.
const char* SeccompAuditAction(sandbox::SeccompAudit::Kind kind);

std::string OutcomeToJson(const sandbox::RunResult& result, const std::vector<sandbox::SeccompAudit>& audits = {});

// Writes the JSON to `path`:
//   "-"                   fd 1, in place (never reopened by name).
//   no file, or a regular file owned by the caller's euid: a new temporary file in the same directory
//                         (O_CREAT|O_EXCL, random name) renamed over it, so a reader never sees half of it.
//   a regular file owned by someone else, a directory, a device other than a terminal or /dev/null:
//                         refused (FailedPrecondition), nothing written.
//   a pipe, socket, terminal or /dev/null (also through a symlink, e.g. /dev/fd/63): written in place.
//   a symlink to a regular file (or to nothing): refused; a symlink is never replaced or written through
//                         to a regular file. Use "-" for stdout redirected to a file.
absl::Status WriteOutcomeJson(const sandbox::RunResult& result, std::string_view path,
                              const std::vector<sandbox::SeccompAudit>& audits = {});

}  // namespace sbx::agent

#endif  // SBX_AGENT_RUN_OUTCOME_JSON_H_
