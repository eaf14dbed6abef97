#include "agent/cli/ctl.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <google/protobuf/util/json_util.h>

#include "agent/mcp/status_code_name.h"
#include "base/sha256.h"
#include "base/utf8.h"

namespace sbx::cli {
namespace {

std::string RequestIdOf(const grpc::ClientContext& ctx) {
  const auto& md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  if (it == md.end()) {
    const auto& trailing = ctx.GetServerTrailingMetadata();
    it = trailing.find("x-request-id");
    if (it == trailing.end()) return "-";
  }
  return std::string(it->second.data(), it->second.size());
}

// JSON output: the serializer escapes C0 inside strings but not DEL or C1; those become \u00NN (valid JSON
// inside a string, the only place they can be).
std::string ForTerminalJson(std::string_view json) {
  std::string out;
  out.reserve(json.size());
  char esc[8];
  for (size_t i = 0; i < json.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(json[i]);
    if (c < 0x20 || c == 0x7F) {
      snprintf(esc, sizeof(esc), "\\u%04x", c);
      out += esc;
    } else if (c == 0xC2 && i + 1 < json.size() && static_cast<unsigned char>(json[i + 1]) >= 0x80 &&
               static_cast<unsigned char>(json[i + 1]) <= 0x9F) {
      snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned char>(json[i + 1]));
      out += esc;
      ++i;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

// A page's console message or error, on stderr.
void PrintPageEvent(const pb::PageEvent& page) {
  fprintf(stderr, "page %s%s%s: %s\n", ForTerminal(page.type()).c_str(), page.level().empty() ? "" : " ",
          ForTerminal(page.level()).c_str(), ForTerminal(page.text(), /*keep_lines=*/true).c_str());
}

}  // namespace

const std::function<int()>* Ctl::Chosen() const {
  for (const auto& [command, action] : actions_) {
    if (command->parsed()) return &action;
  }
  return nullptr;
}

pb::Sandboxes::Stub& Ctl::Stub() {
  if (!stub_) stub_ = std::make_unique<pb::Sandboxes::Stub>(grpc::CreateChannel(g.addr, grpc::InsecureChannelCredentials()));
  return *stub_;
}

std::unique_ptr<grpc::ClientContext> Ctl::Context() const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  if (!g.request_id.empty()) ctx->AddMetadata("x-request-id", g.request_id);
  if (!g.token_file.empty()) {
    std::ifstream f(g.token_file);
    std::string token;
    std::getline(f, token);
    ctx->AddMetadata("authorization", "Bearer " + token);
  }
  return ctx;
}

std::string DefaultAddr() {
  if (const char* env = getenv("SANDBOX_AGENT_ADDR"); env && *env) return env;
  if (geteuid() == 0) return "unix:/run/sandbox-agent/agent.sock";
  const char* runtime = getenv("XDG_RUNTIME_DIR");
  return std::string("unix:") + (runtime && *runtime ? runtime : "/tmp/sandbox-agent-" + std::to_string(geteuid())) +
         "/sandbox-agent/agent.sock";
}

const char* CodeName(int code) { return agent::mcp::StatusCodeName(code, "UNKNOWN"); }

std::string ForTerminal(std::string_view s, bool keep_lines) {
  std::string out;
  out.reserve(s.size());
  char esc[8];
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      if ((c < 0x20 || c == 0x7F) && !(keep_lines && (c == '\n' || c == '\t'))) {
        snprintf(esc, sizeof(esc), "\\x%02x", c);
        out += esc;
      } else {
        out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    const size_t n = Utf8SequenceAt(s, i);
    if (n == 0) {
      snprintf(esc, sizeof(esc), "\\x%02x", c);
      out += esc;
      ++i;
    } else if (n == 2 && c == 0xC2 && static_cast<unsigned char>(s[i + 1]) <= 0x9F) {
      snprintf(esc, sizeof(esc), "\\u%04x", static_cast<unsigned char>(s[i + 1]));
      out += esc;
      i += 2;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  return out;
}

int RpcError(const grpc::Status& status, const grpc::ClientContext& ctx) {
  fprintf(stderr, "sandboxctl: %s: %s (request id %s)\n", CodeName(status.error_code()),
          ForTerminal(status.error_message()).c_str(), ForTerminal(RequestIdOf(ctx)).c_str());
  return 1;
}

void PrintToolError(const pb::ToolError& error) {
  fprintf(stderr, "sandboxctl: %s: %s\n", CodeName(error.code()), ForTerminal(error.message()).c_str());
}

void PrintJson(const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, o);
  printf("%s\n", ForTerminalJson(json).c_str());
}

void Print(const Globals& g, const google::protobuf::Message& m, const std::string& text) {
  if (g.output == "json") {
    PrintJson(m);
  } else {
    // NOTE: callers escape jail-made parts of `text` (ForTerminal); what is left is the agent's own words.
    printf("%s\n", text.c_str());
  }
}

std::string Describe(const pb::Session& s) {
  std::string out = s.id() + "\t" + pb::SessionKind_Name(s.kind()) + "\t" + pb::SessionState_Name(s.state());
  if (s.has_outcome()) {
    out += "\t" + pb::Outcome::Status_Name(s.outcome().status()) + "/" + s.outcome().reason();
  }
  return out;
}

bool ParseSize(const std::string& text, unsigned* width, unsigned* height) {
  char tail = 0;
  return sscanf(text.c_str(), "%ux%u%c", width, height, &tail) == 2;
}

ActionOutcome RunAction(Ctl& ctl, const std::string& session_id, const pb::ToolCall& call) {
  ActionOutcome out;
  auto ctx = ctl.Context();
  auto stream = ctl.Stub().Call(ctx.get());
  pb::CallRequest req;
  req.set_session_id(session_id);
  *req.mutable_call() = call;
  stream->Write(req);
  stream->WritesDone();
  pb::Event event;
  while (stream->Read(&event)) {
    if (event.has_file()) {
      if (event.file().path().rfind("screenshots/", 0) == 0) out.image += event.file().data();
    } else if (event.has_page()) {
      PrintPageEvent(event.page());
    } else if (event.has_tool_call_finished()) {
      const pb::ToolCallFinished& f = event.tool_call_finished();
      if (f.has_error()) {
        PrintToolError(f.error());
        out.rc = 1;
      } else {
        out.has_result = true;
        out.result = f.result();
      }
    }
  }
  grpc::Status status = stream->Finish();
  if (!status.ok()) {
    out.rc = RpcError(status, *ctx);
    out.has_result = false;
  }
  return out;
}

bool SaveScreenshot(const std::string& image, const std::string& sha256, const std::string& file) {
  if (sbx::Sha256Hex(image) != sha256) {
    fprintf(stderr, "sandboxctl: screenshot: the image's sha256 does not match\n");
    return false;
  }
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(image.data(), static_cast<std::streamsize>(image.size()));
  if (!out) {
    fprintf(stderr, "sandboxctl: cannot write %s\n", file.c_str());
    return false;
  }
  return true;
}

}  // namespace sbx::cli
