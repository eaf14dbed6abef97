// The MCP tools a session offers: their names, descriptions and JSON Schemas (tools/list), and the checked
// translation of a tools/call's arguments into a ToolCall of the Sandboxes API. One table (mcp_tools.cc)
// gives both the schema a client sees and the checks its arguments go through, so they cannot disagree.
#ifndef SBX_AGENT_MCP_MCP_TOOLS_H_
#define SBX_AGENT_MCP_MCP_TOOLS_H_

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "duvo/sandbox/v1/session.pb.h"

namespace sbx::agent::mcp {

// The tools of a session of `kind`, as tools/list's "tools" array: the file tools for every kind, the
// browser_* tools for BROWSER sessions.
nlohmann::json ToolList(duvo::sandbox::v1::SessionKind kind);

// Whether `name` is a tool of sessions of `kind`.
bool HasTool(duvo::sandbox::v1::SessionKind kind, std::string_view name);

// The tool call for tools/call `name` with `arguments`, checked against the tool's schema. An argument
// that does not fit (unknown property, wrong type, missing required one, value out of range) is
// INVALID_ARGUMENT naming it: the server answers that as a tool result with isError, so a model can fix
// its call. `name` must be a tool of the session (HasTool).
absl::StatusOr<duvo::sandbox::v1::ToolCall> BuildToolCall(std::string_view name, const nlohmann::json& arguments);

}  // namespace sbx::agent::mcp

#endif  // SBX_AGENT_MCP_MCP_TOOLS_H_
