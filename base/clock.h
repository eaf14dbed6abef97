// Clock helpers shared by the agent's parts.
#ifndef SBX_BASE_CLOCK_H_
#define SBX_BASE_CLOCK_H_

#include <chrono>
#include <cstdint>

namespace sbx {

// Now, as milliseconds since the Unix epoch (the wall clock: for timestamps in events and records, never for
// measuring durations, which use steady_clock).
inline int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace sbx

#endif  // SBX_BASE_CLOCK_H_
