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

// Writes the JSON to `path`: a regular file via a temporary file and rename, so a reader never sees half of
// it; "-", /dev/stdout, a pipe or a terminal directly.
absl::Status WriteOutcomeJson(const sandbox::RunResult& result, std::string_view path);

}  // namespace sbx::agent

#endif  // SBX_AGENT_OUTCOME_JSON_H_
