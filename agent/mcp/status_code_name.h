// The names of gRPC status codes as the Sandboxes API's clients print them (sandboxctl's errors, the MCP
// server's tool results).
#ifndef SBX_AGENT_MCP_STATUS_CODE_NAME_H_
#define SBX_AGENT_MCP_STATUS_CODE_NAME_H_

namespace sbx::agent::mcp {

// "NOT_FOUND" for grpc::NOT_FOUND (5) and so on; `unknown` for a number that is no gRPC code.
const char* StatusCodeName(int code, const char* unknown);

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_STATUS_CODE_NAME_H_
