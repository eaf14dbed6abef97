// browser SESSION navigate URL | screenshot -o FILE | click SEL | type TEXT | press KEY | eval JS | content |
// storage-state | cdp: drive a browser session's Chromium, or serve its CDP on a local port.
#include <cstdio>
#include <functional>
#include <memory>
#include <string>

#include "agent/cli/cdp_serve.h"
#include "agent/cli/commands.h"

namespace sbx::cli {
namespace {

struct BrowserArgs {
  std::string session_id;
  std::string arg, file, selector, wait = "load", format = "png";
  bool full = false, text = false;
  uint32_t timeout = 0, width = 0;
  std::string cdp_listen = "127.0.0.1:9222";
};

// One browser action: prints its result (evaluate's JSON, content, a screenshot's size), the page's console
// messages and errors and the downloads on stderr; a screenshot's image goes to `out_file`.
int BrowserCall(Ctl& ctl, const std::string& session_id, const pb::BrowserAction& action, const std::string& out_file) {
  pb::ToolCall call;
  *call.mutable_browser() = action;
  const ActionOutcome done = RunAction(ctl, session_id, call);
  if (!done.has_result) return done.rc;
  const pb::BrowserResult& b = done.result.browser();
  for (const std::string& path : b.downloads()) fprintf(stderr, "downloaded %s\n", ForTerminal(path).c_str());
  if (action.has_screenshot()) {
    if (!SaveScreenshot(done.image, b.sha256(), out_file)) return 1;
    Print(ctl.g, b, out_file + ": " + std::to_string(b.image_width()) + "x" + std::to_string(b.image_height()));
  } else if (action.has_evaluate()) {
    Print(ctl.g, b, ForTerminal(b.json(), /*keep_lines=*/true));
  } else if (action.has_storage_state()) {
    Print(ctl.g, b, b.json());  // a file to keep (> FILE): the JSON as it is
  } else if (action.has_content()) {
    Print(ctl.g, b, ForTerminal(b.content(), /*keep_lines=*/true));
  }
  return done.rc;
}

// A browser action that `fill` sets, run and printed.
void OnAction(Ctl& ctl, CLI::App* command, std::shared_ptr<BrowserArgs> a,
              std::function<void(const BrowserArgs&, pb::BrowserAction*)> fill) {
  ctl.On(command, [&ctl, a, fill] {
    pb::BrowserAction b;
    fill(*a, &b);
    return BrowserCall(ctl, a->session_id, b, a->file);
  });
}

void AddPageActions(CLI::App* browser, Ctl& ctl, const std::shared_ptr<BrowserArgs>& a) {
  CLI::App* nav = browser->add_subcommand("navigate", "Load URL");
  nav->add_option("url", a->arg)->required();
  nav->add_option("--wait", a->wait, "load or networkidle")->check(CLI::IsMember({"load", "networkidle"}));
  OnAction(ctl, nav, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_navigate()->set_url(args.arg);
    b->mutable_navigate()->set_wait_until(args.wait);
  });
  CLI::App* shot = browser->add_subcommand("screenshot", "Save a screenshot");
  shot->add_option("-o,--file", a->file, "Where to write the image")->required();
  shot->add_flag("--full-page", a->full, "The whole page, not the viewport");
  shot->add_option("--format", a->format, "png or jpeg")->check(CLI::IsMember({"png", "jpeg"}));
  shot->add_option("--width", a->width, "Scale down to this many pixels wide")->check(CLI::Range(16, 7680));
  OnAction(ctl, shot, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_screenshot()->set_full_page(args.full);
    b->mutable_screenshot()->set_format(args.format);
    b->mutable_screenshot()->set_width(args.width);
  });
  CLI::App* click = browser->add_subcommand("click", "Click the first element matching a CSS selector");
  click->add_option("selector", a->arg)->required();
  OnAction(ctl, click, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_click()->set_selector(args.arg);
  });
  CLI::App* type = browser->add_subcommand("type", "Type TEXT into the focused element (or --selector)");
  type->add_option("text", a->arg)->required();
  type->add_option("--selector", a->selector, "Focus this element first");
  OnAction(ctl, type, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_type()->set_text(args.arg);
    b->mutable_type()->set_selector(args.selector);
  });
  CLI::App* press = browser->add_subcommand("press", "Press a key: Enter, Tab, Escape, ArrowDown...");
  press->add_option("key", a->arg)->required();
  OnAction(ctl, press, a, [](const BrowserArgs& args, pb::BrowserAction* b) { b->mutable_press()->set_key(args.arg); });
}

void AddReadActions(CLI::App* browser, Ctl& ctl, const std::shared_ptr<BrowserArgs>& a) {
  CLI::App* eval = browser->add_subcommand("eval", "Evaluate a JavaScript expression; prints it as JSON");
  eval->add_option("expression", a->arg)->required();
  eval->add_option("--timeout", a->timeout, "Milliseconds");
  OnAction(ctl, eval, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_evaluate()->set_expression(args.arg);
    b->mutable_evaluate()->set_timeout_ms(args.timeout);
  });
  CLI::App* content = browser->add_subcommand("content", "Print the page's HTML (or --text)");
  content->add_flag("--text", a->text, "The visible text instead");
  OnAction(ctl, content, a, [](const BrowserArgs& args, pb::BrowserAction* b) {
    b->mutable_content()->set_text(args.text);
  });
  CLI::App* storage =
      browser->add_subcommand("storage-state", "Print the cookies and localStorage (Playwright's storageState)");
  OnAction(ctl, storage, a, [](const BrowserArgs&, pb::BrowserAction* b) { b->mutable_storage_state(); });
}

}  // namespace

void AddBrowserCommands(CLI::App& app, Ctl& ctl) {
  auto a = std::make_shared<BrowserArgs>();
  CLI::App* browser = app.add_subcommand("browser", "Drive a browser session's Chromium");
  browser->require_subcommand(1);
  browser->add_option("session", a->session_id)->required();
  AddPageActions(browser, ctl, a);
  AddReadActions(browser, ctl, a);
  CLI::App* cdp =
      browser->add_subcommand("cdp", "Serve the browser's CDP (for Playwright / Puppeteer) on a local port");
  cdp->add_option("--listen", a->cdp_listen, "IPV4:PORT (port 0 picks one)")->capture_default_str();
  ctl.On(cdp, [&ctl, a] {
    return sbx::cdp::ServeCdpEndpoint(ctl.Stub(), [&ctl] { return ctl.Context(); }, a->session_id, a->cdp_listen);
  });
}

}  // namespace sbx::cli
