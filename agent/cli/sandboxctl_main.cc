// sandboxctl: the command-line client of the agent's Sandboxes API.
//
//   sandboxctl [--addr ADDR] [--output text|json] [--token-file FILE] COMMAND ...
//   create | get | list | exec | run | cp | ls | events | cancel | delete | desktop | browser
//
// Errors print the gRPC code, the message and the request id. `exec` and `run` exit with the command's
// status (128+N for signal N, 124 when its timeout hit, 127/126 when it could not be executed).
// The subcommands live in cmd_*.cc (commands.h); this file registers them and runs the one given.
#include <signal.h>

#include <CLI/CLI.hpp>

#include "agent/cli/commands.h"
#include "agent/cli/ctl.h"
#include "agent/mcp/mcp_command.h"

namespace {

// sandboxctl mcp: the MCP server on stdio (agent/mcp/mcp_command.h); it makes its own channel.
CLI::App* AddMcpCommand(CLI::App& app, sbx::cli::Ctl& ctl, sbx::agent::mcp::McpCommandFlags& flags) {
  CLI::App* mcp = app.add_subcommand("mcp", "Serve MCP (Model Context Protocol) on stdin/stdout; tools run in one session");
  mcp->add_option("--kind", flags.kind, "file, browser or desktop")->capture_default_str();
  mcp->add_option("--policy", flags.policy_file, "SandboxPolicy textproto narrowing the host policy");
  mcp->add_option("--approval-wait-ms", flags.approval_wait_ms,
                  "How long a call held for a human's approval is waited for before its result says "
                  "\"awaiting approval\" (the call goes on waiting in the session)")
      ->check(CLI::Range(1, 86400000))
      ->capture_default_str();
  ctl.On(mcp, [&ctl, &flags] {
    flags.addr = ctl.g.addr;
    flags.token_file = ctl.g.token_file;
    return sbx::agent::mcp::McpCommand(flags);
  });
  return mcp;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sandboxctl: create sandboxes and run tool calls in them through sandbox-agent"};
  app.require_subcommand(1);
  sbx::cli::Ctl ctl;
  ctl.g.addr = sbx::cli::DefaultAddr();
  app.add_option("--addr", ctl.g.addr, "Agent address: unix:PATH or host:port")->capture_default_str();
  app.add_option("--output,-o", ctl.g.output, "text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--token-file", ctl.g.token_file, "Bearer token file (TCP)");
  app.add_option("--request-id", ctl.g.request_id, "x-request-id to send");

  sbx::agent::mcp::McpCommandFlags mcp_flags;
  CLI::App* mcp = AddMcpCommand(app, ctl, mcp_flags);
  sbx::cli::AddSessionCommands(app, ctl);
  sbx::cli::AddExecCommands(app, ctl);
  sbx::cli::AddFileCommands(app, ctl);
  sbx::cli::AddDesktopCommands(app, ctl);
  sbx::cli::AddBrowserCommands(app, ctl);
  sbx::cli::AddDecideCommands(app, ctl);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!mcp->parsed()) signal(SIGPIPE, SIG_IGN);
  const std::function<int()>* action = ctl.Chosen();
  return action != nullptr ? (*action)() : 2;
}
