// Structured logging for the agent: one JSON object per line (spdlog), with fields such as session_id and
// request_id. Never log secrets (tokens, file contents).
#ifndef SBX_AGENT_OBS_LOG_H_
#define SBX_AGENT_OBS_LOG_H_

#include <initializer_list>
#include <string_view>
#include <utility>

namespace sbx::agent {

enum class LogLevel { kDebug, kInfo, kWarn, kError };

// Sets up the JSON-lines logger on stderr. Idempotent.
void InitLogging(LogLevel min_level = LogLevel::kInfo);

// Logs `message` with extra string fields: Log(LogLevel::kInfo, "session started", {{"session_id", id}}).
void Log(LogLevel level, std::string_view message,
         std::initializer_list<std::pair<std::string_view, std::string_view>> fields = {});

}  // namespace sbx::agent

#endif  // SBX_AGENT_OBS_LOG_H_
