// The MCP stdio transport (`sandboxctl mcp`): newline-delimited JSON-RPC on two file descriptors (stdin and
// stdout), logs on stderr only. Requests other than tools/call are answered in order on the reading thread;
// each tools/call runs on a thread of its own so a notifications/cancelled can reach it while it runs.
#ifndef SBX_AGENT_MCP_MCP_STDIO_H_
#define SBX_AGENT_MCP_MCP_STDIO_H_

#include "agent/mcp/mcp_server.h"

namespace sbx::agent::mcp {

struct StdioOptions {
  McpServer::Options server;
  int in_fd = 0;
  int out_fd = 1;
  size_t max_message_bytes = 8 << 20;  // a longer line is answered -32600 and skipped
  size_t max_concurrent_calls = 16;    // more running tools/call at once are refused (-32603)
};

// Serves until end of input, SIGINT or SIGTERM (blocked and taken with a signalfd here), then cancels what
// runs and Deletes the session. Returns the process exit code.
int RunStdio(StdioOptions options);

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_MCP_STDIO_H_
