// Finds the sandbox-init binary the agent binds into every jail.
#ifndef SBX_AGENT_RUN_INIT_LOCATOR_H_
#define SBX_AGENT_RUN_INIT_LOCATOR_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace sbx::agent {

// In order: `explicit_path` when non-empty; $SANDBOX_AGENT_INIT; sandbox-init beside this executable;
// ../libexec/sandbox-agent/sandbox-init relative to it. NotFound lists every place tried.
absl::StatusOr<std::string> LocateInit(std::string_view explicit_path);

}  // namespace sbx::agent

#endif  // SBX_AGENT_RUN_INIT_LOCATOR_H_
