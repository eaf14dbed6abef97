// Who the kernel's OOM killer picks when the host runs out of memory: a jail, never the agent. The agent
// lowers its own oom_score_adj at start; Jail::Start raises every jail's to the maximum from outside, before
// init runs, so the workload inherits it and (without CAP_SYS_RESOURCE, which it never has) cannot lower it.
#ifndef SBX_SANDBOX_OOM_SCORE_H_
#define SBX_SANDBOX_OOM_SCORE_H_

#include "absl/status/status.h"

namespace sbx::sandbox {

// The agent's own: low enough that any jail goes first, not -1000 (which would make the kernel panic
// rather than kill an agent that leaks).
inline constexpr int kAgentOomScoreAdj = -900;
// Every jail's: the OOM killer's first choice.
inline constexpr int kJailOomScoreAdj = 1000;

// Sets this process's oom_score_adj to kAgentOomScoreAdj. Lowering it needs CAP_SYS_RESOURCE: without it
// (a container that does not grant it) the error says so, and the caller logs it and goes on.
absl::Status ProtectAgentFromOomKiller();

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_OOM_SCORE_H_
