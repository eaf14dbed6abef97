// exec and run: a command in a session, its output streamed, its exit status sandboxctl's (128+N for signal N,
// 124 when its timeout hit, 127/126 when it could not be executed).
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/cli/commands.h"

namespace sbx::cli {
namespace {

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

struct ExecArgs {
  std::string session_id;
  std::vector<std::string> command;
  bool interactive = false, tty = false;
  double timeout_s = 0;
};

using CallStream = grpc::ClientReaderWriter<pb::CallRequest, pb::Event>;

// The Call's first message: the command, and with -t the terminal's size and TERM.
pb::CallRequest ExecRequest(const std::string& session_id, const ExecArgs& a) {
  pb::CallRequest first;
  first.set_session_id(session_id);
  pb::Exec* exec = first.mutable_call()->mutable_exec();
  for (const std::string& arg : a.command) exec->add_argv(arg);
  exec->set_stdin_open(a.interactive);
  exec->set_pty(a.tty);
  exec->set_timeout_ms(static_cast<uint64_t>(a.timeout_s * 1000));
  if (a.tty) {
    winsize ws{};
    if (ioctl(0, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) {
      exec->set_rows(ws.ws_row);
      exec->set_cols(ws.ws_col);
    }
    if (const char* term = getenv("TERM")) (*exec->mutable_env())["TERM"] = term;
  }
  return first;
}

// With -i, a thread forwarding stdin to the call (then its EOF); else the call's writes end now.
std::jthread ForwardStdin(CallStream* stream, bool interactive) {
  if (!interactive) {
    stream->WritesDone();
    return std::jthread();
  }
  return std::jthread([stream] {
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
}

// The call's events: output to stdout/stderr, its end as the exit status (125 if it never finished).
int ReadExecEvents(Ctl& ctl, CallStream* stream, std::unique_ptr<RawTerminal>& raw) {
  int exit_status = 125;
  pb::Event event;
  while (stream->Read(&event)) {
    if (event.has_output()) {
      const std::string& data = event.output().data();
      FILE* out = event.output().stream() == pb::STDERR ? stderr : stdout;
      fwrite(data.data(), 1, data.size(), out);
      fflush(out);
    } else if (event.has_tool_call_finished()) {
      const auto& f = event.tool_call_finished();
      if (f.has_error()) {
        raw.reset();
        PrintToolError(f.error());
        exit_status = f.error().code() == grpc::NOT_FOUND ? 127 : f.error().code() == grpc::PERMISSION_DENIED ? 126 : 125;
      } else {
        const pb::ExecResult& r = f.result().exec();
        exit_status = r.timed_out() ? 124 : r.has_signal() ? 128 + r.signal() : r.exit_code();
        if (ctl.g.output == "json") Print(ctl.g, f.result(), "");
      }
    } else if (event.has_outcome()) {
      raw.reset();
      fprintf(stderr, "sandboxctl: the session ended: %s/%s %s\n",
              pb::Outcome::Status_Name(event.outcome().status()).c_str(), ForTerminal(event.outcome().reason()).c_str(),
              ForTerminal(event.outcome().message()).c_str());
    }
  }
  return exit_status;
}

int Exec(Ctl& ctl, const std::string& session_id, const ExecArgs& a) {
  auto ctx = ctl.Context();
  auto stream = ctl.Stub().Call(ctx.get());
  if (!stream->Write(ExecRequest(session_id, a))) {
    grpc::Status status = stream->Finish();
    return RpcError(status, *ctx);
  }
  std::unique_ptr<RawTerminal> raw;
  if (a.tty) raw = std::make_unique<RawTerminal>();
  std::jthread input = ForwardStdin(stream.get(), a.interactive);
  int exit_status = ReadExecEvents(ctl, stream.get(), raw);
  grpc::Status status = stream->Finish();
  raw.reset();
  if (!status.ok()) exit_status = RpcError(status, *ctx);
  if (a.interactive) {
    // The stdin reader may sit in read(2) forever (a terminal): leave without joining it.
    fflush(stdout);
    fflush(stderr);
    _exit(exit_status);
  }
  return exit_status;
}

void AddRunFlags(CLI::App* c, ExecArgs& a) {
  c->add_flag("-i,--interactive", a.interactive, "Forward stdin");
  c->add_flag("-t,--tty", a.tty, "Run on a pseudo-terminal");
  c->add_option("--timeout", a.timeout_s, "Seconds");
}

}  // namespace

void AddExecCommands(CLI::App& app, Ctl& ctl) {
  auto a = std::make_shared<ExecArgs>();
  CLI::App* exec = app.add_subcommand("exec", "Run a command in a session: exec SESSION -- CMD...");
  AddRunFlags(exec, *a);
  exec->add_option("session", a->session_id)->required();
  exec->add_option("command", a->command)->required();
  ctl.On(exec, [&ctl, a] { return Exec(ctl, a->session_id, *a); });

  auto cf = std::make_shared<CreateFlags>();
  CLI::App* run = app.add_subcommand("run", "Create a session, run a command, delete it: run -- CMD...");
  AddCreateFlags(run, *cf);
  AddRunFlags(run, *a);
  run->add_option("command", a->command)->required();
  ctl.On(run, [&ctl, a, cf] {
    pb::Session session;
    if (const int rc = CreateSession(ctl, *cf, &session); rc != 0) return rc;
    const int rc = Exec(ctl, session.id(), *a);
    (void)DeleteSession(ctl, session.id());
    return rc;
  });
}

}  // namespace sbx::cli
