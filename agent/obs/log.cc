#include "agent/obs/log.h"

#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace sbx::agent {
namespace {

std::shared_ptr<spdlog::logger>& Logger() {
  static auto* logger = new std::shared_ptr<spdlog::logger>();
  return *logger;
}

spdlog::level::level_enum ToSpd(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return spdlog::level::debug;
    case LogLevel::kInfo: return spdlog::level::info;
    case LogLevel::kWarn: return spdlog::level::warn;
    case LogLevel::kError: return spdlog::level::err;
  }
  return spdlog::level::info;
}

}  // namespace

void InitLogging(LogLevel min_level) {
  static std::once_flag once;
  std::call_once(once, [&] {
    auto logger = spdlog::stderr_logger_mt("sandbox-agent");
    // The message is already a JSON object; time and level are added by the pattern.
    logger->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})", spdlog::pattern_time_type::utc);
    logger->set_level(ToSpd(min_level));
    logger->flush_on(spdlog::level::info);
    Logger() = logger;
  });
}

void Log(LogLevel level, std::string_view message,
         std::initializer_list<std::pair<std::string_view, std::string_view>> fields) {
  if (!Logger()) InitLogging();
  nlohmann::json j;
  j["msg"] = message;
  for (const auto& [k, v] : fields) j[std::string(k)] = v;
  std::string body = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // Strip the braces: the pattern supplies them around time and level.
  body = body.substr(1, body.size() - 2);
  Logger()->log(ToSpd(level), "{}", body);
}

}  // namespace sbx::agent
