// sandboxctl: the command-line client of the agent's Sandboxes API.
//
//   sandboxctl [--addr ADDR] [--output text|json] [--token-file FILE] COMMAND ...
//   create | get | list | exec | run | cp | ls | events | cancel | delete | desktop | browser
//
// Errors print the gRPC code, the message and the request id. `exec` and `run` exit with the command's
// status (128+N for signal N, 124 when its timeout hit, 127/126 when it could not be executed).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "agent/mcp/mcp_command.h"
#include "agent/cli/cdp_serve.h"
#include "net/listen.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"
#include "base/sha256.h"

namespace pb = ::duvo::sandbox::v1;

namespace {

struct Globals {
  std::string addr;
  std::string output = "text";
  std::string token_file;
  std::string request_id;
};

std::string DefaultAddr() {
  if (const char* env = getenv("SANDBOX_AGENT_ADDR"); env && *env) return env;
  if (geteuid() == 0) return "unix:/run/sandbox-agent/agent.sock";
  const char* runtime = getenv("XDG_RUNTIME_DIR");
  return std::string("unix:") + (runtime && *runtime ? runtime : "/tmp/sandbox-agent-" + std::to_string(geteuid())) +
         "/sandbox-agent/agent.sock";
}

std::unique_ptr<grpc::ClientContext> Context(const Globals& g) {
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

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::UNKNOWN: return "UNKNOWN";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::ABORTED: return "ABORTED";
    case grpc::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::DATA_LOSS: return "DATA_LOSS";
    case grpc::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
  }
}

// The length of the UTF-8 sequence at s[i] when it is a valid one of 2 to 4 bytes, else 0.
size_t Utf8SequenceAt(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + 1 >= s.size() || b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (i + k >= s.size() || b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return n;
}

// Text made inside a jail (file names, a page's console messages, errors quoting them) as it may reach the
// operator's terminal: control characters become visible escapes, so a name or a console message cannot
// move the cursor, clear the screen, retitle the window or ring the bell. C0 (but newline and tab when
// `keep_lines`), DEL and C1 (U+0080..U+009F, whose CSI starts escapes on 8-bit terminals) become \xNN or
// \u00NN; a byte that is not UTF-8 becomes \xNN. The exec's own stdout/stderr streams are not passed here:
// they are the workload's terminal output, asked for.
std::string ForTerminal(std::string_view s, bool keep_lines = false) {
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

int RpcError(const grpc::Status& status, const grpc::ClientContext& ctx) {
  fprintf(stderr, "sandboxctl: %s: %s (request id %s)\n", CodeName(status.error_code()),
          ForTerminal(status.error_message()).c_str(), ForTerminal(RequestIdOf(ctx)).c_str());
  return 1;
}

void Print(const Globals& g, const google::protobuf::Message& m, const std::string& text) {
  if (g.output == "json") {
    std::string json;
    google::protobuf::util::JsonPrintOptions o;
    o.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(m, &json, o);
    printf("%s\n", ForTerminalJson(json).c_str());
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

struct CreateFlags {
  std::string kind = "file";
  double ttl_s = 0;
  double idle_s = 0;
  std::vector<std::string> labels;
  std::string idempotency_key;
  uint64_t memory_limit = 0;
  uint32_t pids_limit = 0;
  std::string display;  // desktop: WIDTHxHEIGHT
  bool window_manager = false;
  bool vnc = false;
  // The session's own egress rules (CreateRequest.egress), inside the host policy's.
  std::vector<std::string> allow, ask;
  std::string egress_default;  // "", "deny" or "ask"
  std::string storage_state;  // browser: a Playwright storageState file
};

bool BuildCreate(const CreateFlags& f, pb::CreateRequest* req) {
  pb::SessionKind kind;
  std::string upper = f.kind;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  if (!pb::SessionKind_Parse(upper, &kind) || kind == pb::SESSION_KIND_UNSPECIFIED) {
    fprintf(stderr, "sandboxctl: --kind: '%s' is not file, browser or desktop\n", f.kind.c_str());
    return false;
  }
  req->set_kind(kind);
  req->set_ttl_ms(static_cast<uint64_t>(f.ttl_s * 1000));
  req->set_idle_timeout_ms(static_cast<uint64_t>(f.idle_s * 1000));
  for (const std::string& kv : f.labels) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      fprintf(stderr, "sandboxctl: --label '%s': expected KEY=VALUE\n", kv.c_str());
      return false;
    }
    (*req->mutable_labels())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  req->set_idempotency_key(f.idempotency_key);
  if (f.memory_limit) req->mutable_policy()->mutable_limits()->set_memory_max_bytes(f.memory_limit);
  if (f.pids_limit) req->mutable_policy()->mutable_limits()->set_pids_max(f.pids_limit);
  if (!f.allow.empty() || !f.ask.empty() || !f.egress_default.empty()) {
    pb::EgressRequest* egress = req->mutable_egress();
    egress->mutable_allow()->Add(f.allow.begin(), f.allow.end());
    egress->mutable_ask()->Add(f.ask.begin(), f.ask.end());
    if (f.egress_default == "ask") {
      egress->set_default_(pb::EgressRequest::ASK);
    } else if (!f.egress_default.empty() && f.egress_default != "deny") {
      fprintf(stderr, "sandboxctl: --egress-default '%s': expected deny or ask\n", f.egress_default.c_str());
      return false;
    }
  }
  if (!f.display.empty() || f.window_manager || f.vnc) {
    if (kind != pb::DESKTOP) {
      fprintf(stderr, "sandboxctl: --display, --window-manager and --vnc are for --kind desktop\n");
      return false;
    }
    unsigned w = 0, h = 0;
    char tail = 0;
    if (!f.display.empty() && sscanf(f.display.c_str(), "%ux%u%c", &w, &h, &tail) != 2) {
      fprintf(stderr, "sandboxctl: --display '%s': expected WIDTHxHEIGHT, e.g. 1024x768\n", f.display.c_str());
      return false;
    }
    req->mutable_desktop()->set_width(w);
    req->mutable_desktop()->set_height(h);
    req->mutable_desktop()->set_window_manager(f.window_manager);
    req->mutable_desktop()->set_vnc(f.vnc);
  }
  if (!f.storage_state.empty()) {
    if (kind != pb::BROWSER) {
      fprintf(stderr, "sandboxctl: --storage-state is for --kind browser\n");
      return false;
    }
    std::ifstream in(f.storage_state, std::ios::binary);
    if (!in) {
      fprintf(stderr, "sandboxctl: --storage-state '%s': cannot be read\n", f.storage_state.c_str());
      return false;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    req->mutable_browser()->set_storage_state_json(ss.str());
  }
  return true;
}

// Checks a screenshot's sha256 and writes it to `file`; false (with a message) when either fails.
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

// One desktop or browser tool call over Call. Collects a screenshot's image (the file events under
// "screenshots/"; a download's file stays in the workspace, for sandboxctl cp) and prints the page's events on
// stderr. A tool error is printed and makes rc 1; an RPC error is printed and gives its exit code.
struct ActionOutcome {
  int rc = 0;
  bool has_result = false;
  pb::ToolResult result;
  std::string image;
};
ActionOutcome RunAction(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id,
                        const pb::ToolCall& call) {
  ActionOutcome out;
  auto ctx = Context(g);
  auto stream = stub.Call(ctx.get());
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
      fprintf(stderr, "page %s%s%s: %s\n", ForTerminal(event.page().type()).c_str(),
              event.page().level().empty() ? "" : " ", ForTerminal(event.page().level()).c_str(),
              ForTerminal(event.page().text(), /*keep_lines=*/true).c_str());
    } else if (event.has_tool_call_finished()) {
      const pb::ToolCallFinished& f = event.tool_call_finished();
      if (f.has_error()) {
        fprintf(stderr, "sandboxctl: %s: %s\n", CodeName(static_cast<grpc::StatusCode>(f.error().code())),
                ForTerminal(f.error().message()).c_str());
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

// One browser action: prints its result (evaluate's JSON, content, a screenshot's size), the page's console
// messages and errors and the downloads on stderr; a screenshot's image goes to `out_file`.
int BrowserCall(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id,
                const pb::BrowserAction& action, const std::string& out_file) {
  pb::ToolCall call;
  *call.mutable_browser() = action;
  const ActionOutcome done = RunAction(stub, g, session_id, call);
  if (!done.has_result) return done.rc;
  const pb::BrowserResult& b = done.result.browser();
  for (const std::string& path : b.downloads()) fprintf(stderr, "downloaded %s\n", ForTerminal(path).c_str());
  if (action.has_screenshot()) {
    if (!SaveScreenshot(done.image, b.sha256(), out_file)) return 1;
    Print(g, b, out_file + ": " + std::to_string(b.image_width()) + "x" + std::to_string(b.image_height()));
  } else if (action.has_evaluate()) {
    Print(g, b, ForTerminal(b.json(), /*keep_lines=*/true));
  } else if (action.has_storage_state()) {
    Print(g, b, b.json());  // a file to keep (> FILE): the JSON as it is
  } else if (action.has_content()) {
    Print(g, b, ForTerminal(b.content(), /*keep_lines=*/true));
  }
  return done.rc;
}

// Serves the session's live view on a local TCP address for a VNC viewer: each connection is relayed over
// the Vnc RPC. Prints "listening on HOST:PORT" once ready. Runs until interrupted.
int ServeVnc(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id, const std::string& listen) {
  int exit_code = 0;
  const int lfd = sbx::cli::ListenTcp(listen, 4, "127.0.0.1:5901", &exit_code);
  if (lfd < 0) return exit_code;
  for (;;) {
    const int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    auto ctx = Context(g);
    auto stream = stub.Vnc(ctx.get());
    pb::VncData first;
    first.set_session_id(session_id);
    stream->Write(first);
    std::thread up([&] {
      char buf[65536];
      for (;;) {
        const ssize_t n = read(cfd, buf, sizeof(buf));
        if (n <= 0) break;
        pb::VncData d;
        d.set_data(buf, static_cast<size_t>(n));
        if (!stream->Write(d)) break;
      }
      stream->WritesDone();
    });
    pb::VncData down;
    while (stream->Read(&down)) {
      const std::string& data = down.data();
      size_t done = 0;
      while (done < data.size()) {
        const ssize_t n = write(cfd, data.data() + done, data.size() - done);
        if (n <= 0) break;
        done += static_cast<size_t>(n);
      }
      if (done < data.size()) break;
    }
    shutdown(cfd, SHUT_RDWR);
    ctx->TryCancel();
    up.join();
    grpc::Status status = stream->Finish();
    close(cfd);
    if (!status.ok() && status.error_code() != grpc::CANCELLED) return RpcError(status, *ctx);
  }
}

// One desktop action: prints its result; a screenshot's image goes to `out_file`.
int DesktopCall(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id,
                const pb::DesktopAction& action, const std::string& out_file) {
  pb::ToolCall call;
  *call.mutable_desktop() = action;
  const ActionOutcome done = RunAction(stub, g, session_id, call);
  if (!done.has_result) return done.rc;
  const pb::DesktopResult& d = done.result.desktop();
  if (action.has_screenshot()) {
    if (!SaveScreenshot(done.image, d.sha256(), out_file)) return 1;
    char text[256];
    snprintf(text, sizeof(text), "%s: %ux%u (display %ux%u, scale %.4f)", out_file.c_str(), d.image_width(),
             d.image_height(), d.display_width(), d.display_height(), d.scale());
    Print(g, d, text);
  } else if (action.has_cursor_position()) {
    Print(g, d, std::to_string(d.x()) + " " + std::to_string(d.y()));
  }
  return done.rc;
}

// One computer-use call (Anthropic's tool input JSON as-is): prints the ComputerResult as one line of JSON
// (proto field names: text, image_base64, media_type, image_width, image_height), whatever --output says.
int ComputerCall(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id,
                 const pb::ComputerUse& computer) {
  pb::ToolCall call;
  *call.mutable_computer() = computer;
  const ActionOutcome done = RunAction(stub, g, session_id, call);
  if (!done.has_result) return done.rc;
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(done.result.computer(), &json, o);
  printf("%s\n", ForTerminalJson(json).c_str());
  return done.rc;
}

// Puts the local terminal in raw mode for -t and restores it on destruction.
class RawTerminal {
 public:
  RawTerminal() {
    if (isatty(0) && tcgetattr(0, &saved_) == 0) {
      termios raw = saved_;
      cfmakeraw(&raw);
      active_ = tcsetattr(0, TCSANOW, &raw) == 0;
    }
  }
  ~RawTerminal() {
    if (active_) tcsetattr(0, TCSANOW, &saved_);
  }

 private:
  termios saved_{};
  bool active_ = false;
};

int Exec(pb::Sandboxes::Stub& stub, const Globals& g, const std::string& session_id,
         const std::vector<std::string>& argv, bool interactive, bool tty, uint64_t timeout_ms) {
  auto ctx = Context(g);
  auto stream = stub.Call(ctx.get());
  pb::CallRequest first;
  first.set_session_id(session_id);
  pb::Exec* exec = first.mutable_call()->mutable_exec();
  for (const std::string& a : argv) exec->add_argv(a);
  exec->set_stdin_open(interactive);
  exec->set_pty(tty);
  exec->set_timeout_ms(timeout_ms);
  if (tty) {
    winsize ws{};
    if (ioctl(0, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) {
      exec->set_rows(ws.ws_row);
      exec->set_cols(ws.ws_col);
    }
    if (const char* term = getenv("TERM")) (*exec->mutable_env())["TERM"] = term;
  }
  if (!stream->Write(first)) {
    grpc::Status status = stream->Finish();
    return RpcError(status, *ctx);
  }
  std::unique_ptr<RawTerminal> raw;
  if (tty) raw = std::make_unique<RawTerminal>();
  std::jthread input;
  if (interactive) {
    input = std::jthread([&] {
      char buf[32768];
      for (;;) {
        ssize_t n = read(0, buf, sizeof(buf));
        pb::CallRequest more;
        if (n <= 0) {
          more.set_stdin_eof(true);
          stream->Write(more);
          break;
        }
        more.set_stdin(buf, static_cast<size_t>(n));
        if (!stream->Write(more)) break;
      }
      stream->WritesDone();
    });
  } else {
    stream->WritesDone();
  }
  int exit_status = 125;
  pb::Event event;
  bool finished = false;
  while (stream->Read(&event)) {
    if (event.has_output()) {
      const std::string& data = event.output().data();
      FILE* out = event.output().stream() == pb::STDERR ? stderr : stdout;
      fwrite(data.data(), 1, data.size(), out);
      fflush(out);
    } else if (event.has_tool_call_finished()) {
      finished = true;
      const auto& f = event.tool_call_finished();
      if (f.has_error()) {
        raw.reset();
        fprintf(stderr, "sandboxctl: %s: %s\n", CodeName(static_cast<grpc::StatusCode>(f.error().code())),
                ForTerminal(f.error().message()).c_str());
        exit_status = f.error().code() == grpc::NOT_FOUND ? 127 : f.error().code() == grpc::PERMISSION_DENIED ? 126 : 125;
      } else {
        const pb::ExecResult& r = f.result().exec();
        exit_status = r.timed_out() ? 124 : r.has_signal() ? 128 + r.signal() : r.exit_code();
        if (g.output == "json") Print(g, f.result(), "");
      }
    } else if (event.has_outcome()) {
      raw.reset();
      fprintf(stderr, "sandboxctl: the session ended: %s/%s %s\n",
              pb::Outcome::Status_Name(event.outcome().status()).c_str(), ForTerminal(event.outcome().reason()).c_str(),
              ForTerminal(event.outcome().message()).c_str());
    }
  }
  (void)finished;
  grpc::Status status = stream->Finish();
  raw.reset();
  if (!status.ok()) exit_status = RpcError(status, *ctx);
  if (interactive) {
    // The stdin reader may sit in read(2) forever (a terminal): leave without joining it.
    fflush(stdout);
    fflush(stderr);
    _exit(exit_status);
  }
  return exit_status;
}

}  // namespace

// approve / reject / answer: decide a session's human request (Sandboxes.RespondHumanRequest).
struct DecideArgs {
  std::string session_id, request_id, note, text, idempotency_key;
  bool for_session = false;
};

CLI::App* AddDecideCommand(CLI::App& app, const char* name, const char* help, DecideArgs& a) {
  CLI::App* c = app.add_subcommand(name, help);
  c->add_option("session", a.session_id)->required();
  c->add_option("request", a.request_id, "The request's id (hr-N), from `get` or the session's events")->required();
  if (std::string_view(name) == "answer") {
    c->add_option("text", a.text, "The answer")->required();
  } else {
    c->add_flag("--for-session", a.for_session, "Decide this action for the rest of the session, unasked");
  }
  c->add_option("--note", a.note, "Why (recorded in the decision)");
  c->add_option("--idempotency-key", a.idempotency_key, "Same key + same answer = the recorded decision again");
  return c;
}

int Decide(pb::Sandboxes::Stub& stub, const Globals& g, const DecideArgs& a, pb::HumanDecision::Decision decision) {
  auto ctx = Context(g);
  pb::RespondHumanRequestRequest req;
  req.set_session_id(a.session_id);
  req.set_request_id(a.request_id);
  req.set_decision(decision);
  req.set_scope(a.for_session ? pb::HumanDecision::SESSION : pb::HumanDecision::REQUEST);
  req.set_note(a.note);
  req.set_text(a.text);
  req.set_idempotency_key(a.idempotency_key);
  pb::HumanDecision decided;
  grpc::Status status = stub.RespondHumanRequest(ctx.get(), req, &decided);
  if (!status.ok()) return RpcError(status, *ctx);
  Print(g, decided,
        ForTerminal(decided.request_id()) + ": " + pb::HumanDecision::Decision_Name(decided.decision()) +
            (decided.scope() == pb::HumanDecision::SESSION ? " (for the session)" : ""));
  return 0;
}

int main(int argc, char** argv) {
  CLI::App app{"sandboxctl: create sandboxes and run tool calls in them through sandbox-agent"};
  app.require_subcommand(1);
  Globals g;
  g.addr = DefaultAddr();
  app.add_option("--addr", g.addr, "Agent address: unix:PATH or host:port")->capture_default_str();
  app.add_option("--output,-o", g.output, "text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--token-file", g.token_file, "Bearer token file (TCP)");
  app.add_option("--request-id", g.request_id, "x-request-id to send");

  CreateFlags cf;
  auto add_create_flags = [&](CLI::App* c) {
    c->add_option("--kind", cf.kind, "file, browser or desktop");
    c->add_option("--ttl", cf.ttl_s, "Session time to live, seconds");
    c->add_option("--idle-timeout", cf.idle_s, "Idle timeout, seconds");
    c->add_option("--label", cf.labels, "KEY=VALUE")->allow_extra_args(false);
    c->add_option("--idempotency-key", cf.idempotency_key, "Same key + same request = same session");
    c->add_option("--memory-limit", cf.memory_limit, "Bytes (narrows the host policy)");
    c->add_option("--pids-limit", cf.pids_limit, "Processes (narrows the host policy)");
    c->add_option("--display", cf.display, "Desktop: WIDTHxHEIGHT (default 1280x800)");
    c->add_flag("--window-manager", cf.window_manager, "Desktop: run a window manager");
    c->add_flag("--vnc", cf.vnc, "Desktop: allow a live view over VNC");
    c->add_option("--allow", cf.allow, "Egress: a destination rule (HOST[:PORT]) this session may reach; "
                                       "repeatable. Any egress flag replaces the host policy's rules with the "
                                       "session's own, which must lie inside them")
        ->allow_extra_args(false);
    c->add_option("--ask", cf.ask, "Egress: a destination rule held for a human's approval; repeatable")
        ->allow_extra_args(false);
    c->add_option("--egress-default", cf.egress_default,
                  "Egress: deny (default) or ask: what happens to a destination no rule names");
    c->add_option("--storage-state", cf.storage_state, "Browser: load a Playwright storageState JSON file");
  };
  // MCP server on stdio (agent/mcp/mcp_command.h).
  sbx::agent::mcp::McpCommandFlags mcp_flags;
  CLI::App* mcp = app.add_subcommand("mcp", "Serve MCP (Model Context Protocol) on stdin/stdout; tools run in one session");
  mcp->add_option("--kind", mcp_flags.kind, "file, browser or desktop")->capture_default_str();
  mcp->add_option("--policy", mcp_flags.policy_file, "SandboxPolicy textproto narrowing the host policy");
  mcp->add_option("--approval-wait-ms", mcp_flags.approval_wait_ms,
                  "How long a call held for a human's approval is waited for before its result says "
                  "\"awaiting approval\" (the call goes on waiting in the session)")
      ->check(CLI::Range(1, 86400000))
      ->capture_default_str();
  CLI::App* create = app.add_subcommand("create", "Create a session; prints its id");
  add_create_flags(create);
  std::string session_id;
  CLI::App* get = app.add_subcommand("get", "Show a session");
  get->add_option("session", session_id)->required();
  CLI::App* list = app.add_subcommand("list", "List sessions");
  std::vector<std::string> selector;
  list->add_option("--label", selector, "KEY=VALUE (all must match)")->allow_extra_args(false);
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a session");
  cancel->add_option("session", session_id)->required();
  CLI::App* del = app.add_subcommand("delete", "Delete a session");
  del->add_option("session", session_id)->required();

  bool interactive = false, tty = false;
  double timeout_s = 0;
  std::vector<std::string> command;
  CLI::App* exec = app.add_subcommand("exec", "Run a command in a session: exec SESSION -- CMD...");
  exec->add_flag("-i,--interactive", interactive, "Forward stdin");
  exec->add_flag("-t,--tty", tty, "Run on a pseudo-terminal");
  exec->add_option("--timeout", timeout_s, "Seconds");
  exec->add_option("session", session_id)->required();
  exec->add_option("command", command)->required();
  CLI::App* run = app.add_subcommand("run", "Create a session, run a command, delete it: run -- CMD...");
  add_create_flags(run);
  run->add_flag("-i,--interactive", interactive, "Forward stdin");
  run->add_flag("-t,--tty", tty, "Run on a pseudo-terminal");
  run->add_option("--timeout", timeout_s, "Seconds");
  run->add_option("command", command)->required();

  std::string path;
  CLI::App* ls = app.add_subcommand("ls", "List a directory in a session: ls SESSION [PATH]");
  ls->add_option("session", session_id)->required();
  ls->add_option("path", path);
  std::string src, dst;
  CLI::App* cp = app.add_subcommand("cp", "Copy LOCAL SESSION:PATH, or SESSION:PATH LOCAL");
  cp->add_option("src", src)->required();
  cp->add_option("dst", dst)->required();
  uint64_t after = 0;
  bool follow = false;
  CLI::App* events = app.add_subcommand("events", "Print a session's events");
  events->add_option("session", session_id)->required();
  events->add_option("--after", after, "Start after this seq");
  events->add_flag("--follow,-f", follow, "Keep streaming until the session ends");

  // desktop SESSION screenshot -o FILE | click X Y | type TEXT | key CHORD | move X Y | scroll DIR N | ...
  CLI::App* desktop = app.add_subcommand("desktop", "Computer-use actions in a desktop session");
  desktop->require_subcommand(1);
  desktop->add_option("session", session_id)->required();
  pb::DesktopAction action;
  std::string shot_file, button = "left", direction, space;
  int x = 0, y = 0, x2 = 0, y2 = 0, count = 1, amount = 1;
  uint32_t target_width = 0;
  std::vector<int> at;
  std::string text;
  CLI::App* d_shot = desktop->add_subcommand("screenshot", "Save a PNG of the display");
  d_shot->add_option("-o,--file", shot_file, "Where to write the PNG")->required();
  d_shot->add_option("--width", target_width, "Scale down to this width");
  CLI::App* d_click = desktop->add_subcommand("click", "Click at X Y (in --space, default display pixels)");
  d_click->add_option("x", x)->required();
  d_click->add_option("y", y)->required();
  d_click->add_option("--button", button, "left, right or middle")->check(CLI::IsMember({"left", "right", "middle"}));
  d_click->add_option("--count", count, "2: double click, 3: triple click")->check(CLI::Range(1, 3));
  CLI::App* d_move = desktop->add_subcommand("move", "Move the pointer to X Y");
  d_move->add_option("x", x)->required();
  d_move->add_option("y", y)->required();
  CLI::App* d_drag = desktop->add_subcommand("drag", "Left-button drag from X1 Y1 to X2 Y2");
  d_drag->add_option("x1", x)->required();
  d_drag->add_option("y1", y)->required();
  d_drag->add_option("x2", x2)->required();
  d_drag->add_option("y2", y2)->required();
  CLI::App* d_scroll = desktop->add_subcommand("scroll", "Scroll: scroll DIR N [--at X Y]");
  d_scroll->add_option("direction", direction)->required()->check(CLI::IsMember({"up", "down", "left", "right"}));
  d_scroll->add_option("amount", amount)->check(CLI::Range(1, 100));
  d_scroll->add_option("--at", at, "X Y")->expected(2);
  CLI::App* d_type = desktop->add_subcommand("type", "Type TEXT (any Unicode)");
  d_type->add_option("text", text)->required();
  CLI::App* d_key = desktop->add_subcommand("key", "Press a chord: ctrl+shift+t, Return, alt+F4");
  d_key->add_option("chord", text)->required();
  CLI::App* d_cursor = desktop->add_subcommand("cursor", "Print the pointer's position");
  pb::ComputerUse computer;
  std::string computer_json, computer_display, computer_version;
  bool computer_skip_screenshot = false;
  CLI::App* d_computer =
      desktop->add_subcommand("computer", "Run Anthropic's computer-use tool input JSON as-is; prints the result JSON");
  d_computer->add_option("input", computer_json, "The tool_use input, e.g. '{\"action\": \"screenshot\"}'")
      ->required();
  d_computer->add_option("--display", computer_display,
                         "WIDTHxHEIGHT declared to the model (display_width_px x display_height_px)");
  d_computer->add_option("--tool-version", computer_version, "computer_20241022, computer_20250124, computer_20251124");
  d_computer->add_flag("--skip-screenshot", computer_skip_screenshot, "No screenshot after input actions");
  std::string vnc_listen = "127.0.0.1:5901";
  CLI::App* d_vnc = desktop->add_subcommand("vnc", "Serve the live view (VNC) on a local TCP port");
  d_vnc->add_option("--listen", vnc_listen, "IPV4:PORT (port 0 picks one)")->capture_default_str();
  for (CLI::App* sub : {d_click, d_move, d_drag, d_scroll, d_cursor}) {
    sub->add_option("--space", space, "WIDTHxHEIGHT of the screenshot the coordinates refer to");
  }

  // browser SESSION navigate URL | screenshot -o FILE | click SEL | type TEXT | press KEY | eval JS | content
  CLI::App* browser = app.add_subcommand("browser", "Drive a browser session's Chromium");
  browser->require_subcommand(1);
  browser->add_option("session", session_id)->required();
  std::string b_arg, b_file, b_selector, b_wait = "load", b_format = "png";
  bool b_full = false, b_text = false;
  uint32_t b_timeout = 0, b_width = 0;
  CLI::App* b_nav = browser->add_subcommand("navigate", "Load URL");
  b_nav->add_option("url", b_arg)->required();
  b_nav->add_option("--wait", b_wait, "load or networkidle")->check(CLI::IsMember({"load", "networkidle"}));
  CLI::App* b_shot = browser->add_subcommand("screenshot", "Save a screenshot");
  b_shot->add_option("-o,--file", b_file, "Where to write the image")->required();
  b_shot->add_flag("--full-page", b_full, "The whole page, not the viewport");
  b_shot->add_option("--format", b_format, "png or jpeg")->check(CLI::IsMember({"png", "jpeg"}));
  b_shot->add_option("--width", b_width, "Scale down to this many pixels wide")->check(CLI::Range(16, 7680));
  CLI::App* b_click = browser->add_subcommand("click", "Click the first element matching a CSS selector");
  b_click->add_option("selector", b_arg)->required();
  CLI::App* b_type = browser->add_subcommand("type", "Type TEXT into the focused element (or --selector)");
  b_type->add_option("text", b_arg)->required();
  b_type->add_option("--selector", b_selector, "Focus this element first");
  CLI::App* b_press = browser->add_subcommand("press", "Press a key: Enter, Tab, Escape, ArrowDown...");
  b_press->add_option("key", b_arg)->required();
  CLI::App* b_eval = browser->add_subcommand("eval", "Evaluate a JavaScript expression; prints it as JSON");
  b_eval->add_option("expression", b_arg)->required();
  b_eval->add_option("--timeout", b_timeout, "Milliseconds");
  CLI::App* b_content = browser->add_subcommand("content", "Print the page's HTML (or --text)");
  b_content->add_flag("--text", b_text, "The visible text instead");
  std::string cdp_listen = "127.0.0.1:9222";
  CLI::App* b_storage = browser->add_subcommand("storage-state", "Print the cookies and localStorage (Playwright's storageState)");
  CLI::App* b_cdp = browser->add_subcommand("cdp", "Serve the browser's CDP (for Playwright / Puppeteer) on a local port");
  b_cdp->add_option("--listen", cdp_listen, "IPV4:PORT (port 0 picks one)")->capture_default_str();

  DecideArgs decide;
  CLI::App* approve = AddDecideCommand(app, "approve", "Approve a human request: approve SESSION REQUEST", decide);
  CLI::App* reject = AddDecideCommand(app, "reject", "Reject a human request: reject SESSION REQUEST", decide);
  CLI::App* answer = AddDecideCommand(app, "answer", "Answer a question: answer SESSION REQUEST TEXT", decide);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (*mcp) {
    mcp_flags.addr = g.addr;
    mcp_flags.token_file = g.token_file;
    return sbx::agent::mcp::McpCommand(mcp_flags);
  }
  signal(SIGPIPE, SIG_IGN);

  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(g.addr, grpc::InsecureChannelCredentials());
  pb::Sandboxes::Stub stub(channel);

  if (*create || *run) {
    pb::CreateRequest req;
    if (!BuildCreate(cf, &req)) return 2;
    auto ctx = Context(g);
    pb::Session session;
    grpc::Status status = stub.Create(ctx.get(), req, &session);
    if (!status.ok()) return RpcError(status, *ctx);
    if (*create) {
      Print(g, session, session.id());
      return 0;
    }
    int rc = Exec(stub, g, session.id(), command, interactive, tty, static_cast<uint64_t>(timeout_s * 1000));
    auto dctx = Context(g);
    pb::DeleteRequest dreq;
    dreq.set_session_id(session.id());
    pb::DeleteResponse dresp;
    grpc::Status ds = stub.Delete(dctx.get(), dreq, &dresp);
    if (!ds.ok()) RpcError(ds, *dctx);
    return rc;
  }
  if (*exec) return Exec(stub, g, session_id, command, interactive, tty, static_cast<uint64_t>(timeout_s * 1000));
  if (*browser) {
    if (*b_cdp) return sbx::cdp::ServeCdpEndpoint(stub, [&g] { return Context(g); }, session_id, cdp_listen);
    pb::BrowserAction b;
    if (*b_nav) {
      b.mutable_navigate()->set_url(b_arg);
      b.mutable_navigate()->set_wait_until(b_wait);
    }
    if (*b_shot) {
      b.mutable_screenshot()->set_full_page(b_full);
      b.mutable_screenshot()->set_format(b_format);
      b.mutable_screenshot()->set_width(b_width);
    }
    if (*b_click) b.mutable_click()->set_selector(b_arg);
    if (*b_type) {
      b.mutable_type()->set_text(b_arg);
      b.mutable_type()->set_selector(b_selector);
    }
    if (*b_press) b.mutable_press()->set_key(b_arg);
    if (*b_eval) {
      b.mutable_evaluate()->set_expression(b_arg);
      b.mutable_evaluate()->set_timeout_ms(b_timeout);
    }
    if (*b_content) b.mutable_content()->set_text(b_text);
    if (*b_storage) b.mutable_storage_state();
    return BrowserCall(stub, g, session_id, b, b_file);
  }
  if (*desktop) {
    if (*d_vnc) return ServeVnc(stub, g, session_id, vnc_listen);
    if (*d_computer) {
      computer.set_input_json(computer_json);
      computer.set_tool_version(computer_version);
      computer.set_skip_screenshot(computer_skip_screenshot);
      if (!computer_display.empty()) {
        unsigned w = 0, h = 0;
        char tail = 0;
        if (sscanf(computer_display.c_str(), "%ux%u%c", &w, &h, &tail) != 2) {
          fprintf(stderr, "sandboxctl: --display '%s': expected WIDTHxHEIGHT\n", computer_display.c_str());
          return 2;
        }
        computer.set_display_width_px(w);
        computer.set_display_height_px(h);
      }
      return ComputerCall(stub, g, session_id, computer);
    }
    if (!space.empty()) {
      unsigned w = 0, h = 0;
      char tail = 0;
      if (sscanf(space.c_str(), "%ux%u%c", &w, &h, &tail) != 2) {
        fprintf(stderr, "sandboxctl: --space '%s': expected WIDTHxHEIGHT\n", space.c_str());
        return 2;
      }
      action.mutable_space()->set_width(w);
      action.mutable_space()->set_height(h);
    }
    if (*d_shot) action.mutable_screenshot()->set_target_width(target_width);
    if (*d_move) {
      action.mutable_mouse_move()->set_x(x);
      action.mutable_mouse_move()->set_y(y);
    }
    if (*d_click) {
      pb::DesktopAction::Click* c = action.mutable_click();
      c->set_button(button == "right" ? pb::DesktopAction::RIGHT
                                      : button == "middle" ? pb::DesktopAction::MIDDLE : pb::DesktopAction::LEFT);
      c->set_count(static_cast<uint32_t>(count));
      c->set_x(x);
      c->set_y(y);
    }
    if (*d_drag) {
      pb::DesktopAction::Drag* dr = action.mutable_left_click_drag();
      dr->set_from_x(x);
      dr->set_from_y(y);
      dr->set_to_x(x2);
      dr->set_to_y(y2);
    }
    if (*d_scroll) {
      pb::DesktopAction::Scroll* sc = action.mutable_scroll();
      sc->set_direction(direction == "up" ? pb::DesktopAction::UP
                        : direction == "down" ? pb::DesktopAction::DOWN
                        : direction == "left" ? pb::DesktopAction::LEFT_SCROLL : pb::DesktopAction::RIGHT_SCROLL);
      sc->set_amount(static_cast<uint32_t>(amount));
      if (at.size() == 2) {
        sc->set_x(at[0]);
        sc->set_y(at[1]);
      }
    }
    if (*d_type) action.mutable_type()->set_text(text);
    if (*d_key) action.mutable_key()->set_chord(text);
    if (*d_cursor) action.mutable_cursor_position();
    return DesktopCall(stub, g, session_id, action, shot_file);
  }
  if (*approve) return Decide(stub, g, decide, pb::HumanDecision::APPROVE);
  if (*reject) return Decide(stub, g, decide, pb::HumanDecision::REJECT);
  if (*answer) return Decide(stub, g, decide, pb::HumanDecision::ANSWER);
  if (*get) {
    auto ctx = Context(g);
    pb::GetRequest req;
    req.set_session_id(session_id);
    pb::Session session;
    grpc::Status status = stub.Get(ctx.get(), req, &session);
    if (!status.ok()) return RpcError(status, *ctx);
    Print(g, session, Describe(session));
    return 0;
  }
  if (*list) {
    auto ctx = Context(g);
    pb::ListRequest req;
    for (const std::string& kv : selector) {
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) {
        fprintf(stderr, "sandboxctl: --label '%s': expected KEY=VALUE\n", kv.c_str());
        return 2;
      }
      (*req.mutable_label_selector())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    pb::ListResponse resp;
    grpc::Status status = stub.List(ctx.get(), req, &resp);
    if (!status.ok()) return RpcError(status, *ctx);
    std::string text;
    for (const pb::Session& s : resp.sessions()) text += Describe(s) + "\n";
    if (!text.empty()) text.pop_back();
    Print(g, resp, text);
    return 0;
  }
  if (*cancel) {
    auto ctx = Context(g);
    pb::CancelRequest req;
    req.set_session_id(session_id);
    pb::Session session;
    grpc::Status status = stub.Cancel(ctx.get(), req, &session);
    if (!status.ok()) return RpcError(status, *ctx);
    Print(g, session, Describe(session));
    return 0;
  }
  if (*del) {
    auto ctx = Context(g);
    pb::DeleteRequest req;
    req.set_session_id(session_id);
    pb::DeleteResponse resp;
    grpc::Status status = stub.Delete(ctx.get(), req, &resp);
    if (!status.ok()) return RpcError(status, *ctx);
    return 0;
  }
  if (*ls) {
    auto ctx = Context(g);
    auto stream = stub.Call(ctx.get());
    pb::CallRequest req;
    req.set_session_id(session_id);
    req.mutable_call()->mutable_list_files()->set_path(path.empty() ? "." : path);
    stream->Write(req);
    stream->WritesDone();
    pb::Event event;
    int rc = 0;
    while (stream->Read(&event)) {
      if (!event.has_tool_call_finished()) continue;
      const auto& f = event.tool_call_finished();
      if (f.has_error()) {
        fprintf(stderr, "sandboxctl: %s: %s\n", CodeName(static_cast<grpc::StatusCode>(f.error().code())),
                ForTerminal(f.error().message()).c_str());
        rc = 1;
        continue;
      }
      std::string text;
      for (const pb::FileInfo& e : f.result().listing().entries()) {
        // Names are the workload's: shown with their raw bytes (name_bytes, when not UTF-8) and every
        // control character escaped.
        const std::string& name = e.name_bytes().empty() ? e.name() : e.name_bytes();
        const std::string& target = e.symlink_target_bytes().empty() ? e.symlink_target() : e.symlink_target_bytes();
        char line[64];
        snprintf(line, sizeof(line), "%c%04o %12llu ",
                 e.type() == pb::FileInfo::DIRECTORY ? 'd' : e.type() == pb::FileInfo::SYMLINK ? 'l' : '-',
                 e.mode() & 07777, static_cast<unsigned long long>(e.size()));
        text += line;
        text += ForTerminal(name);
        if (e.type() == pb::FileInfo::SYMLINK) text += " -> " + ForTerminal(target);
        text += "\n";
      }
      if (!text.empty()) text.pop_back();
      Print(g, f.result().listing(), text);
    }
    grpc::Status status = stream->Finish();
    if (!status.ok()) return RpcError(status, *ctx);
    return rc;
  }
  if (*events) {
    auto ctx = Context(g);
    pb::EventsRequest req;
    req.set_session_id(session_id);
    req.set_after_seq(after);
    req.set_follow(follow);
    auto reader = stub.Events(ctx.get(), req);
    pb::Event event;
    while (reader->Read(&event)) {
      std::string json;
      google::protobuf::util::JsonPrintOptions o;
      o.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(event, &json, o);
      printf("%s\n", ForTerminalJson(json).c_str());
      fflush(stdout);
    }
    grpc::Status status = reader->Finish();
    if (!status.ok()) return RpcError(status, *ctx);
    return 0;
  }
  if (*cp) {
    const size_t src_colon = src.find(':');
    const size_t dst_colon = dst.find(':');
    const bool upload = dst_colon != std::string::npos && src_colon == std::string::npos;
    const bool download = src_colon != std::string::npos && dst_colon == std::string::npos;
    if (!upload && !download) {
      fprintf(stderr, "sandboxctl: cp: exactly one of SRC and DST must be SESSION:PATH\n");
      return 2;
    }
    const bool progress = isatty(2);
    auto ctx = Context(g);
    if (upload) {
      FILE* in = fopen(src.c_str(), "rb");
      if (!in) {
        fprintf(stderr, "sandboxctl: cp: cannot open %s: %s\n", src.c_str(), strerror(errno));
        return 1;
      }
      fseeko(in, 0, SEEK_END);
      const off_t total = ftello(in);
      fseeko(in, 0, SEEK_SET);
      pb::UploadResponse resp;
      auto writer = stub.Upload(ctx.get(), &resp);
      sbx::Sha256 hash;
      std::vector<char> buf(1 << 20);
      bool first = true;
      off_t sent = 0;
      for (;;) {
        size_t n = fread(buf.data(), 1, buf.size(), in);
        pb::UploadChunk chunk;
        if (first) {
          chunk.set_session_id(dst.substr(0, dst_colon));
          chunk.set_path(dst.substr(dst_colon + 1));
          first = false;
        }
        chunk.set_data(buf.data(), n);
        hash.Update(buf.data(), n);
        sent += static_cast<off_t>(n);
        const bool last = n < buf.size();
        if (last) {
          chunk.set_last(true);
          chunk.set_sha256(sbx::Sha256::Hex(hash.Final()));
        }
        if (!writer->Write(chunk)) break;
        if (progress && total > 0) {
          fprintf(stderr, "\r%5.1f%% %lld/%lld bytes", 100.0 * sent / total, static_cast<long long>(sent),
                  static_cast<long long>(total));
        }
        if (last) break;
      }
      fclose(in);
      if (progress) fprintf(stderr, "\n");
      writer->WritesDone();
      grpc::Status status = writer->Finish();
      if (!status.ok()) return RpcError(status, *ctx);
      Print(g, resp, std::to_string(resp.size()) + " bytes, sha256 " + resp.sha256());
      return 0;
    }
    pb::DownloadRequest req;
    req.set_session_id(src.substr(0, src_colon));
    req.set_path(src.substr(src_colon + 1));
    auto reader = stub.Download(ctx.get(), req);
    const std::string tmp = dst + ".sandboxctl-partial";
    FILE* out = fopen(tmp.c_str(), "wb");
    if (!out) {
      fprintf(stderr, "sandboxctl: cp: cannot create %s: %s\n", tmp.c_str(), strerror(errno));
      return 1;
    }
    sbx::Sha256 hash;
    pb::DownloadChunk chunk;
    std::string expected;
    uint64_t got = 0;
    bool last = false;
    while (reader->Read(&chunk)) {
      fwrite(chunk.data().data(), 1, chunk.data().size(), out);
      hash.Update(chunk.data());
      got += chunk.data().size();
      if (progress) fprintf(stderr, "\r%llu bytes", static_cast<unsigned long long>(got));
      if (chunk.last()) {
        last = true;
        expected = chunk.sha256();
      }
    }
    fclose(out);
    if (progress) fprintf(stderr, "\n");
    grpc::Status status = reader->Finish();
    if (!status.ok()) {
      unlink(tmp.c_str());
      return RpcError(status, *ctx);
    }
    const std::string actual = sbx::Sha256::Hex(hash.Final());
    if (!last || actual != expected) {
      unlink(tmp.c_str());
      fprintf(stderr, "sandboxctl: cp: sha256 mismatch (agent %s, received %s); nothing written\n",
              expected.c_str(), actual.c_str());
      return 1;
    }
    if (rename(tmp.c_str(), dst.c_str()) < 0) {
      fprintf(stderr, "sandboxctl: cp: rename to %s: %s\n", dst.c_str(), strerror(errno));
      unlink(tmp.c_str());
      return 1;
    }
    pb::DownloadChunk summary;
    summary.set_size(got);
    summary.set_sha256(actual);
    Print(g, summary, std::to_string(got) + " bytes, sha256 " + actual);
    return 0;
  }
  return 2;
}
