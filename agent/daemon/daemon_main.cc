// sandbox-agentd: the daemon (`sandbox-agent serve` executes it). A binary of its own so that the one-shot
// `sandbox-agent run` does not load gRPC: with it, every start paid ~1 ms more for relocations and static
// initializers.
#include <malloc.h>

#include <cstdio>

#include <CLI/CLI.hpp>

#include "agent/daemon/serve_command.h"

int main(int argc, char** argv) {
  // Output travels in 256 KiB chunks through several buffers (init frame, event, gRPC message). Above
  // glibc's default mmap threshold each one was a fresh mmap: page faults and kernel page zeroing took
  // ~60% of the daemon's CPU while streaming (perf). Keep such buffers in the heap and reuse them.
  mallopt(M_MMAP_THRESHOLD, 16 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);

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
