// sandboxctl's subcommands, by group: each Add* declares its subcommands' flags on `app` and registers their
// actions with `ctl` (ctl.h). The flags' values live in state the actions own.
#ifndef SBX_AGENT_CLI_COMMANDS_H_
#define SBX_AGENT_CLI_COMMANDS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "agent/cli/ctl.h"

namespace sbx::cli {

// create, get, list, cancel, delete (cmd_session.cc).
void AddSessionCommands(CLI::App& app, Ctl& ctl);
// approve, reject, answer (cmd_session.cc).
void AddDecideCommands(CLI::App& app, Ctl& ctl);
// exec, run (cmd_exec.cc).
void AddExecCommands(CLI::App& app, Ctl& ctl);
// ls, cp, events (cmd_files.cc).
void AddFileCommands(CLI::App& app, Ctl& ctl);
// desktop SESSION screenshot | click | move | drag | scroll | type | key | cursor | computer | vnc (cmd_desktop.cc).
void AddDesktopCommands(CLI::App& app, Ctl& ctl);
// browser SESSION navigate | screenshot | click | type | press | eval | content | storage-state | cdp
// (cmd_browser.cc).
void AddBrowserCommands(CLI::App& app, Ctl& ctl);

// The flags of a new session, shared by create and run.
struct CreateFlags {
  std::string kind = "file";
  double ttl_s = 0;
  double idle_s = 0;
  std::vector<std::string> labels;
  std::string idempotency_key;
  uint64_t memory_limit = 0;
  uint32_t pids_limit = 0;
  std::string display;  // desktop: WIDTHxHEIGHT
  bool window_manager = false;
  bool vnc = false;
  // The session's own egress rules (CreateRequest.egress), inside the host policy's.
  std::vector<std::string> allow, ask;
  std::string egress_default;  // "", "deny" or "ask"
  std::string storage_state;  // browser: a Playwright storageState file
};
void AddCreateFlags(CLI::App* command, CreateFlags& flags);
// Creates a session into *session: 0, or (after printing why) 2 for bad flags or the RPC error's exit code.
int CreateSession(Ctl& ctl, const CreateFlags& flags, pb::Session* session);
// Deletes a session; 0, or the RPC's error's code after printing it.
int DeleteSession(Ctl& ctl, const std::string& session_id);

}  // namespace sbx::cli

#endif  // SBX_AGENT_CLI_COMMANDS_H_
