// `sandboxctl mcp`: an MCP server on stdin/stdout whose tools run in one sandbox session of the agent at
// `addr` (created by the first tools/call, Deleted on exit).
#ifndef SBX_AGENT_MCP_MCP_COMMAND_H_
#define SBX_AGENT_MCP_MCP_COMMAND_H_

#include <cstdint>
#include <string>

namespace sbx::agent::mcp {

struct McpCommandFlags {
  std::string addr;        // gRPC target: unix:PATH or host:port
  std::string token_file;  // bearer token (TCP)
  std::string kind = "file";
  std::string policy_file;  // a SandboxPolicy textproto narrowing the host's policy; may be empty
  int64_t approval_wait_ms = 30000;  // McpServer::Options::approval_wait
};

// Returns the process exit code (2: bad flags, named on stderr).
int McpCommand(const McpCommandFlags& flags);

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_MCP_COMMAND_H_
