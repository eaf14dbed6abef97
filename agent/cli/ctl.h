// sandboxctl's shared parts: the global flags and the API stub (Ctl), the RPC metadata, error and output
// printing (jail-made text escaped for the terminal), and one desktop or browser tool call over Call. Each
// cmd_*.cc adds its subcommands (commands.h); sandboxctl_main.cc registers them and runs the one given.
#ifndef SBX_AGENT_CLI_CTL_H_
#define SBX_AGENT_CLI_CTL_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::cli {

namespace pb = ::duvo::sandbox::v1;

struct Globals {
  std::string addr;
  std::string output = "text";
  std::string token_file;
  std::string request_id;
};

// The command line's state: the global flags, the action of each subcommand, and the stub (made on first use,
// after parsing).
class Ctl {
 public:
  Globals g;

  // Runs `action` (its exit code is sandboxctl's) when `command` is the subcommand given.
  void On(CLI::App* command, std::function<int()> action) { actions_.emplace_back(command, std::move(action)); }
  // The action of the subcommand given, or nullptr.
  const std::function<int()>* Chosen() const;

  pb::Sandboxes::Stub& Stub();
  // A context with the request id and the bearer token of the global flags.
  std::unique_ptr<grpc::ClientContext> Context() const;

 private:
  std::vector<std::pair<CLI::App*, std::function<int()>>> actions_;
  std::unique_ptr<pb::Sandboxes::Stub> stub_;
};

std::string DefaultAddr();

// The name of a gRPC status code, as errors print it.
const char* CodeName(int code);

// Text made inside a jail (file names, a page's console messages, errors quoting them) as it may reach the
// operator's terminal: control characters become visible escapes, so a name or a console message cannot
// move the cursor, clear the screen, retitle the window or ring the bell. C0 (but newline and tab when
// `keep_lines`), DEL and C1 (U+0080..U+009F, whose CSI starts escapes on 8-bit terminals) become \xNN or
// \u00NN; a byte that is not UTF-8 becomes \xNN. The exec's own stdout/stderr streams are not passed here:
// they are the workload's terminal output, asked for.
std::string ForTerminal(std::string_view s, bool keep_lines = false);

// Prints an RPC's error (code, message, request id); returns 1.
int RpcError(const grpc::Status& status, const grpc::ClientContext& ctx);
// Prints a tool call's error ("sandboxctl: CODE: message").
void PrintToolError(const pb::ToolError& error);

// Prints `m` as one line of JSON (proto field names), whatever --output says.
void PrintJson(const google::protobuf::Message& m);
// Prints `m` as JSON with --output json, else `text`.
void Print(const Globals& g, const google::protobuf::Message& m, const std::string& text);

// One line about a session: id, kind, state and its outcome when it has one.
std::string Describe(const pb::Session& s);

// Parses WIDTHxHEIGHT; false when `text` is not that.
bool ParseSize(const std::string& text, unsigned* width, unsigned* height);

// One desktop or browser tool call over Call. Collects a screenshot's image (the file events under
// "screenshots/"; a download's file stays in the workspace, for sandboxctl cp) and prints the page's events on
// stderr. A tool error is printed and makes rc 1; an RPC error is printed and gives its exit code.
struct ActionOutcome {
  int rc = 0;
  bool has_result = false;
  pb::ToolResult result;
  std::string image;
};
ActionOutcome RunAction(Ctl& ctl, const std::string& session_id, const pb::ToolCall& call);

// Checks a screenshot's sha256 and writes it to `file`; false (with a message) when either fails.
bool SaveScreenshot(const std::string& image, const std::string& sha256, const std::string& file);

}  // namespace sbx::cli

#endif  // SBX_AGENT_CLI_CTL_H_
