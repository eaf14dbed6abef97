// What the parts of the CDP driver (cdp.cc, cdp_tools.cc, cdp_storage.cc, cdp_client.cc) share: limits,
// JSON access that never throws, and text helpers (cdp_util.cc). NOTE: for those files only; cdp.h is the
// driver's interface.
#ifndef SBX_SANDBOX_INIT_DRIVERS_CDP_INTERNAL_H_
#define SBX_SANDBOX_INIT_DRIVERS_CDP_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "sandbox/init/drivers/driver_util.h"

namespace sbx::init {

using nlohmann::json;

constexpr size_t kMaxMessageBytes = 64 << 20;  // one CDP message (a full-page screenshot is the biggest)
constexpr size_t kReadChunk = 1 << 20;
constexpr size_t kMaxDepth = 2000;  // of a CDP message's JSON
constexpr size_t kMaxEvents = 1000;
constexpr size_t kMaxEventText = 8192;
constexpr size_t kMaxInFlight = 10000;  // requests tracked for network idle
constexpr int kNetworkIdleMs = 500;
constexpr int kDownloadAnnounceMs = 1000;  // after a navigation aborted, until a download it became is announced
constexpr int kErrorPageSettleMs = 1000;  // a failed navigation's error page, until it loaded
constexpr int kCloseGraceMs = 2000;        // Browser.close until the process exits
constexpr int kTermGraceMs = 1000;         // between SIGTERM and SIGKILL
constexpr int kInputTimeoutMs = 10000;     // input events, focus, element lookups
constexpr int kTerminateWaitMs = 1000;     // a terminated script's evaluate response (a pending
                                           // promise never answers)
constexpr double kMaxFullPageHeight = 16384;


using internal::DescribeStatus;
using internal::ErrnoMessage;
using internal::KillAndReap;
using internal::NowMs;
using internal::SleepMs;
using internal::SpawnInSession;
using internal::WaitExit;

// ---- JSON access that never throws ----

// Whether `j` nests deeper than `max` levels. Iterative: dump() and our readers recurse, and Chromium runs
// hostile pages (V8 itself refuses to serialize values nested deeper than about 1000 levels).
bool TooDeep(const json& j, size_t max);
// j[key] when `j` is an object that has it, else nullptr.
const json* Field(const json& j, const char* key);
// j[key] when it is a string, else "".
std::string Str(const json& j, const char* key);
// j[key] when it is a number, else `fallback`.
double Num(const json& j, const char* key, double fallback = 0);
// A count Chromium reports (bytes, a line number) as an integer: a value out of int64's range or not a
// number (the pipe's peer is as hostile as the page driving it) is 0, never an undefined conversion.
int64_t Count(const json& j, const char* key);

// ---- Text ----

// `text` with every \uXXXX escape of a lone UTF-16 surrogate (one not in a high-low pair) made \ufffd.
std::string ReplaceLoneSurrogates(std::string_view text);
// `s` cut at `max` bytes (at a UTF-8 boundary) with "..." appended, when longer.
std::string Cut(std::string s, size_t max);
// The message of a Runtime exceptionDetails: the exception's description's first line ("Error: boom"), else
// its value, else the details' text ("Uncaught").
std::string ExceptionText(const json& details);
// The text of a console API call: its arguments' values (or descriptions), space-separated.
std::string ConsoleText(const json& params);
// The tail of Chromium's output (the memfd `fd`) without its D-Bus complaints, for an error message.
std::string ChromiumOutputTail(int fd);
// The viewport's bounds (internal::CheckScreenSize).
bool CheckSize(uint32_t w, uint32_t h, std::string* error);

// Moves a finished download from `dir`/GUID to `dir`/NAME, never replacing a file: "NAME (1).ext",
// "NAME (2).ext"... Returns the final path, or the GUID path when it could not be moved.
std::string SettleDownload(const std::string& dir, const std::string& guid, const std::string& suggested);

}  // namespace sbx::init

#endif  // SBX_SANDBOX_INIT_DRIVERS_CDP_INTERNAL_H_
