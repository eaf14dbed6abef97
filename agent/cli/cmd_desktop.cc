// desktop SESSION screenshot -o FILE | click X Y | move X Y | drag X1 Y1 X2 Y2 | scroll DIR N | type TEXT |
// key CHORD | cursor | computer JSON | vnc: computer-use actions in a desktop session, and its live view.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/cli/commands.h"
#include "net/listen.h"

namespace sbx::cli {
namespace {

struct DesktopArgs {
  std::string session_id;
  std::string shot_file, button = "left", direction, space;
  int x = 0, y = 0, x2 = 0, y2 = 0, count = 1, amount = 1;
  uint32_t target_width = 0;
  std::vector<int> at;
  std::string text;
  std::string computer_json, computer_display, computer_version;
  bool computer_skip_screenshot = false;
  std::string vnc_listen = "127.0.0.1:5901";
};

// One desktop action: prints its result; a screenshot's image goes to `out_file`.
int DesktopCall(Ctl& ctl, const std::string& session_id, const pb::DesktopAction& action, const std::string& out_file) {
  pb::ToolCall call;
  *call.mutable_desktop() = action;
  const ActionOutcome done = RunAction(ctl, session_id, call);
  if (!done.has_result) return done.rc;
  const pb::DesktopResult& d = done.result.desktop();
  if (action.has_screenshot()) {
    if (!SaveScreenshot(done.image, d.sha256(), out_file)) return 1;
    char text[256];
    snprintf(text, sizeof(text), "%s: %ux%u (display %ux%u, scale %.4f)", out_file.c_str(), d.image_width(),
             d.image_height(), d.display_width(), d.display_height(), d.scale());
    Print(ctl.g, d, text);
  } else if (action.has_cursor_position()) {
    Print(ctl.g, d, std::to_string(d.x()) + " " + std::to_string(d.y()));
  }
  return done.rc;
}

// One computer-use call (Anthropic's tool input JSON as-is): prints the ComputerResult as one line of JSON
// (proto field names: text, image_base64, media_type, image_width, image_height), whatever --output says.
int ComputerCall(Ctl& ctl, const DesktopArgs& a) {
  pb::ToolCall call;
  pb::ComputerUse* computer = call.mutable_computer();
  computer->set_input_json(a.computer_json);
  computer->set_tool_version(a.computer_version);
  computer->set_skip_screenshot(a.computer_skip_screenshot);
  if (!a.computer_display.empty()) {
    unsigned w = 0, h = 0;
    if (!ParseSize(a.computer_display, &w, &h)) {
      fprintf(stderr, "sandboxctl: --display '%s': expected WIDTHxHEIGHT\n", a.computer_display.c_str());
      return 2;
    }
    computer->set_display_width_px(w);
    computer->set_display_height_px(h);
  }
  const ActionOutcome done = RunAction(ctl, a.session_id, call);
  if (!done.has_result) return done.rc;
  PrintJson(done.result.computer());
  return done.rc;
}

// Copies what the VNC client sends into the stream until either side ends.
void RelayUp(int cfd, grpc::ClientReaderWriter<pb::VncData, pb::VncData>* stream) {
  char buf[65536];
  for (;;) {
    const ssize_t n = read(cfd, buf, sizeof(buf));
    if (n <= 0) break;
    pb::VncData d;
    d.set_data(buf, static_cast<size_t>(n));
    if (!stream->Write(d)) break;
  }
  stream->WritesDone();
}

// One VNC client's connection relayed over a Vnc RPC; 0, or the RPC error's exit code.
int RelayVnc(Ctl& ctl, const std::string& session_id, int cfd) {
  auto ctx = ctl.Context();
  auto stream = ctl.Stub().Vnc(ctx.get());
  pb::VncData first;
  first.set_session_id(session_id);
  stream->Write(first);
  std::thread up([&] { RelayUp(cfd, stream.get()); });
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
  return 0;
}

// Serves the session's live view on a local TCP address for a VNC viewer: each connection is relayed over
// the Vnc RPC. Prints "listening on HOST:PORT" once ready. Runs until interrupted.
int ServeVnc(Ctl& ctl, const std::string& session_id, const std::string& listen) {
  int exit_code = 0;
  const int lfd = sbx::cli::ListenTcp(listen, 4, "127.0.0.1:5901", &exit_code);
  if (lfd < 0) return exit_code;
  for (;;) {
    const int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (const int rc = RelayVnc(ctl, session_id, cfd); rc != 0) return rc;
  }
}

// An input action: --space (when given), then the action `fill` sets, run and printed.
void OnAction(Ctl& ctl, CLI::App* command, std::shared_ptr<DesktopArgs> a,
              std::function<void(const DesktopArgs&, pb::DesktopAction*)> fill) {
  ctl.On(command, [&ctl, a, fill] {
    pb::DesktopAction action;
    if (!a->space.empty()) {
      unsigned w = 0, h = 0;
      if (!ParseSize(a->space, &w, &h)) {
        fprintf(stderr, "sandboxctl: --space '%s': expected WIDTHxHEIGHT\n", a->space.c_str());
        return 2;
      }
      action.mutable_space()->set_width(w);
      action.mutable_space()->set_height(h);
    }
    fill(*a, &action);
    return DesktopCall(ctl, a->session_id, action, a->shot_file);
  });
}

void FillClick(const DesktopArgs& a, pb::DesktopAction* action) {
  pb::DesktopAction::Click* c = action->mutable_click();
  c->set_button(a.button == "right" ? pb::DesktopAction::RIGHT
                                    : a.button == "middle" ? pb::DesktopAction::MIDDLE : pb::DesktopAction::LEFT);
  c->set_count(static_cast<uint32_t>(a.count));
  c->set_x(a.x);
  c->set_y(a.y);
}

void FillScroll(const DesktopArgs& a, pb::DesktopAction* action) {
  pb::DesktopAction::Scroll* sc = action->mutable_scroll();
  sc->set_direction(a.direction == "up" ? pb::DesktopAction::UP
                    : a.direction == "down" ? pb::DesktopAction::DOWN
                    : a.direction == "left" ? pb::DesktopAction::LEFT_SCROLL : pb::DesktopAction::RIGHT_SCROLL);
  sc->set_amount(static_cast<uint32_t>(a.amount));
  if (a.at.size() == 2) {
    sc->set_x(a.at[0]);
    sc->set_y(a.at[1]);
  }
}

void AddPointerActions(CLI::App* desktop, Ctl& ctl, const std::shared_ptr<DesktopArgs>& a) {
  CLI::App* click = desktop->add_subcommand("click", "Click at X Y (in --space, default display pixels)");
  click->add_option("x", a->x)->required();
  click->add_option("y", a->y)->required();
  click->add_option("--button", a->button, "left, right or middle")->check(CLI::IsMember({"left", "right", "middle"}));
  click->add_option("--count", a->count, "2: double click, 3: triple click")->check(CLI::Range(1, 3));
  OnAction(ctl, click, a, FillClick);
  CLI::App* move = desktop->add_subcommand("move", "Move the pointer to X Y");
  move->add_option("x", a->x)->required();
  move->add_option("y", a->y)->required();
  OnAction(ctl, move, a, [](const DesktopArgs& args, pb::DesktopAction* action) {
    action->mutable_mouse_move()->set_x(args.x);
    action->mutable_mouse_move()->set_y(args.y);
  });
  CLI::App* drag = desktop->add_subcommand("drag", "Left-button drag from X1 Y1 to X2 Y2");
  drag->add_option("x1", a->x)->required();
  drag->add_option("y1", a->y)->required();
  drag->add_option("x2", a->x2)->required();
  drag->add_option("y2", a->y2)->required();
  OnAction(ctl, drag, a, [](const DesktopArgs& args, pb::DesktopAction* action) {
    pb::DesktopAction::Drag* dr = action->mutable_left_click_drag();
    dr->set_from_x(args.x);
    dr->set_from_y(args.y);
    dr->set_to_x(args.x2);
    dr->set_to_y(args.y2);
  });
  CLI::App* scroll = desktop->add_subcommand("scroll", "Scroll: scroll DIR N [--at X Y]");
  scroll->add_option("direction", a->direction)->required()->check(CLI::IsMember({"up", "down", "left", "right"}));
  scroll->add_option("amount", a->amount)->check(CLI::Range(1, 100));
  scroll->add_option("--at", a->at, "X Y")->expected(2);
  OnAction(ctl, scroll, a, FillScroll);
}

void AddKeyboardActions(CLI::App* desktop, Ctl& ctl, const std::shared_ptr<DesktopArgs>& a) {
  CLI::App* type = desktop->add_subcommand("type", "Type TEXT (any Unicode)");
  type->add_option("text", a->text)->required();
  OnAction(ctl, type, a, [](const DesktopArgs& args, pb::DesktopAction* action) {
    action->mutable_type()->set_text(args.text);
  });
  CLI::App* key = desktop->add_subcommand("key", "Press a chord: ctrl+shift+t, Return, alt+F4");
  key->add_option("chord", a->text)->required();
  OnAction(ctl, key, a, [](const DesktopArgs& args, pb::DesktopAction* action) {
    action->mutable_key()->set_chord(args.text);
  });
}

void AddComputerCommand(CLI::App* desktop, Ctl& ctl, const std::shared_ptr<DesktopArgs>& a) {
  CLI::App* computer =
      desktop->add_subcommand("computer", "Run Anthropic's computer-use tool input JSON as-is; prints the result JSON");
  computer->add_option("input", a->computer_json, "The tool_use input, e.g. '{\"action\": \"screenshot\"}'")
      ->required();
  computer->add_option("--display", a->computer_display,
                       "WIDTHxHEIGHT declared to the model (display_width_px x display_height_px)");
  computer->add_option("--tool-version", a->computer_version,
                       "computer_20241022, computer_20250124, computer_20251124");
  computer->add_flag("--skip-screenshot", a->computer_skip_screenshot, "No screenshot after input actions");
  ctl.On(computer, [&ctl, a] { return ComputerCall(ctl, *a); });
}

}  // namespace

void AddDesktopCommands(CLI::App& app, Ctl& ctl) {
  auto a = std::make_shared<DesktopArgs>();
  CLI::App* desktop = app.add_subcommand("desktop", "Computer-use actions in a desktop session");
  desktop->require_subcommand(1);
  desktop->add_option("session", a->session_id)->required();
  CLI::App* shot = desktop->add_subcommand("screenshot", "Save a PNG of the display");
  shot->add_option("-o,--file", a->shot_file, "Where to write the PNG")->required();
  shot->add_option("--width", a->target_width, "Scale down to this width");
  OnAction(ctl, shot, a, [](const DesktopArgs& args, pb::DesktopAction* action) {
    action->mutable_screenshot()->set_target_width(args.target_width);
  });
  AddPointerActions(desktop, ctl, a);
  AddKeyboardActions(desktop, ctl, a);
  CLI::App* cursor = desktop->add_subcommand("cursor", "Print the pointer's position");
  OnAction(ctl, cursor, a, [](const DesktopArgs&, pb::DesktopAction* action) { action->mutable_cursor_position(); });
  AddComputerCommand(desktop, ctl, a);
  CLI::App* vnc = desktop->add_subcommand("vnc", "Serve the live view (VNC) on a local TCP port");
  vnc->add_option("--listen", a->vnc_listen, "IPV4:PORT (port 0 picks one)")->capture_default_str();
  ctl.On(vnc, [&ctl, a] { return ServeVnc(ctl, a->session_id, a->vnc_listen); });
  for (const char* name : {"click", "move", "drag", "scroll", "cursor"}) {
    desktop->get_subcommand(name)->add_option("--space", a->space,
                                              "WIDTHxHEIGHT of the screenshot the coordinates refer to");
  }
}

}  // namespace sbx::cli
