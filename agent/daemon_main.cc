// sandbox-agentd: the daemon (`sandbox-agent serve` executes it). A binary of its own so that the one-shot
// `sandbox-agent run` does not load gRPC: with it, every start paid ~1 ms more for relocations and static
// initializers.
#include <cstdio>

#include <CLI/CLI.hpp>

#include "agent/serve_command.h"

int main(int argc, char** argv) {
  CLI::App app{"sandbox-agentd: the sandbox-agent daemon (local mode)"};
  sbx::agent::ServeFlags serve;
  app.add_option("--config", serve.config_path, "Agent config textproto (see deploy/agent.textproto)");
  app.add_option("--socket", serve.socket, "Unix socket path (overrides the config)");
  app.add_option("--metrics-address", serve.metrics_address, "host:port for /metrics, or 'off'");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    fprintf(stderr, "sandbox-agentd: %s\n", e.what());
    return 2;
  }
  return sbx::agent::ServeCommand(serve);
}
