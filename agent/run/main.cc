// sandbox-agent: the host-side daemon and its one-shot `run` mode.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "agent/run/exec_daemon.h"
#include "agent/run/run_command.h"

int main(int argc, char** argv) {
  CLI::App app{"sandbox-agent: runs sandboxed workloads in namespace + seccomp + cgroup jails"};
  app.require_subcommand(1);

  sbx::agent::RunFlags run;
  CLI::App* run_cmd = app.add_subcommand("run", "Run one command in a fresh jail; stdio passes through");
  run_cmd->add_option("--policy", run.policy_path, "Policy textproto (default: the installed file policy)");
  run_cmd->add_option("--outcome-json", run.outcome_json, "Write the outcome as JSON to this file");
  run_cmd->add_option("--time-limit", run.time_limit_seconds, "Wall-clock limit in seconds (narrows the policy)");
  run_cmd->add_option("--memory-limit", run.memory_limit, "Memory limit in bytes, or 256M / 1G (narrows)");
  run_cmd->add_option("--pids-limit", run.pids_limit, "Process limit (narrows the policy)");
  run_cmd->add_option("--ro-bind", run.ro_binds, "Bind SRC[:DST] read-only")->allow_extra_args(false);
  run_cmd->add_option("--rw-bind", run.rw_binds, "Bind SRC[:DST] read-write")->allow_extra_args(false);
  run_cmd->add_option("--env", run.env, "Set KEY=VALUE in the jail")->allow_extra_args(false);
  run_cmd->add_option("--cwd", run.cwd, "Working directory inside the jail");
  run_cmd->add_option("--init-path", run.init_path, "Path of sandbox-init (default: beside this binary)");
  run_cmd->add_option("command", run.command, "COMMAND [ARG...] after --");

  CLI::App* serve_cmd = app.add_subcommand("serve", "Run the daemon (sandbox-agentd): the Sandboxes API");
  serve_cmd->prefix_command();  // everything after `serve`, --help included, goes to sandbox-agentd
  serve_cmd->set_help_flag();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fprintf(stderr, "sandbox-agent: %s\n", e.what());
    return 125;
  }
  if (*run_cmd) return sbx::agent::RunCommand(run);
  if (*serve_cmd) return sbx::agent::ExecDaemon(serve_cmd->remaining());
  return 125;
}
