#include "agent/mcp/mcp_tools.h"

#include <cstdint>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent::mcp {
namespace {

namespace pb = ::duvo::sandbox::v1;
using json = nlohmann::json;

enum class Type { kString, kInteger, kBoolean, kNumber, kStringArray, kStringMap, kIntegerTuple };

struct Prop {
  const char* name;
  Type type;
  const char* description;
  bool required = false;
  std::vector<const char*> values = {};  // kString: the allowed values, when not empty
  int64_t min = 0;                      // kInteger
  int64_t max = INT64_MAX;
  int items = 0;  // kIntegerTuple: exactly this many integers >= min
};

struct Tool {
  const char* name;
  bool browser;  // only in BROWSER sessions
  const char* description;
  std::vector<Prop> props;
  // At least one of these must be given (e.g. exec's argv or command), when not empty.
  std::vector<const char*> one_of_required = {};
  bool desktop = false;  // only in DESKTOP sessions
  // The arguments go to the session unchanged (computer: ComputerUse.input_json), which checks them with its
  // own, more specific errors (an action's parameters, the display's bounds); the schema is for the client.
  bool passthrough = false;
};

constexpr int64_t kMaxTimeoutMs = 24LL * 3600 * 1000;

// exec and the file tools, offered in every session.
std::vector<Tool> FileTools() {
  return {
      {"exec", false,
       "Run a command in the sandbox (a Linux jail with no network unless its policy allows some) and return its "
       "exit code, stdout and stderr. Give either `argv` (the program and its arguments, run without a shell) or "
       "`command` (a string run by /bin/sh -c, so pipes, redirections and && work). The working directory is the "
       "session's workspace unless `cwd` says otherwise; files persist between calls of the same session. Output "
       "is streamed as progress notifications when the request carries a progressToken; the result holds at most "
       "256 KiB of each stream (the rest is counted, not shown).",
       {{"argv", Type::kStringArray, "Program and arguments, e.g. [\"python3\", \"-c\", \"print(1)\"]."},
        {"command", Type::kString, "A shell command line, run with /bin/sh -c, e.g. \"ls -la | head\"."},
        {"cwd", Type::kString, "Working directory inside the sandbox (absolute, or relative to the workspace)."},
        {"env", Type::kStringMap, "Environment variables added for this command, e.g. {\"DEBUG\": \"1\"}."},
        {"stdin", Type::kString, "Text given to the command's standard input (then closed)."},
        {"timeout_ms", Type::kInteger,
         "Kill the command after this many milliseconds (default: the session's remaining time).", false, {}, 1,
         kMaxTimeoutMs}},
       {"argv", "command"}},
      {"read_file", false,
       "Read a file from the sandbox. Text files come back as text; other files as base64 (the result says "
       "which). At most 1 MiB per call: use offset and length to read a larger file in parts.",
       {{"path", Type::kString, "File path in the sandbox's workspace /workspace: relative to it, or absolute under it.", true},
        {"offset", Type::kInteger, "Byte offset to start at (default 0).", false, {}, 0},
        {"length", Type::kInteger, "Bytes to read (default: to the end, at most 1048576).", false, {}, 0,
         1048576}}},
      {"write_file", false,
       "Create or replace a file in the sandbox's workspace (/workspace; file tools reach nothing outside it) with the given content (parent directories must exist; create "
       "them with exec `mkdir -p`). At most 1 MiB.",
       {{"path", Type::kString, "File path in the sandbox's workspace /workspace: relative to it, or absolute under it.", true},
        {"content", Type::kString, "The file's content: text, or base64 when encoding is \"base64\".", true},
        {"encoding", Type::kString, "How `content` is encoded: \"utf8\" (default) or \"base64\".", false,
         {"utf8", "base64"}},
        {"mode", Type::kInteger, "Permission bits as a decimal number, e.g. 493 for 0755 (default 420, 0644).",
         false, {}, 0, 07777}}},
      {"list_files", false,
       "List a directory in the sandbox: one entry a line, with its type (file, dir, link, other), size in bytes "
       "and name.",
       {{"path", Type::kString, "Directory in the workspace /workspace, relative or absolute (default: the workspace itself).", false}}},
      {"remove", false, "Remove a file or, with recursive, a directory and everything in it.",
       {{"path", Type::kString, "Path in the workspace /workspace, relative or absolute.", true},
        {"recursive", Type::kBoolean, "Remove a directory and its contents (default false)."}}},
  };
}

// The browser_* tools, offered in BROWSER sessions.
std::vector<Tool> BrowserTools() {
  return {
      {"browser_navigate", true,
       "Load a URL in the sandbox's headless Chromium and wait until it has loaded. Returns when the page is "
       "ready; read it with browser_content or browser_screenshot.",
       {{"url", Type::kString, "The URL, e.g. \"https://example.com\" or \"file:///workspace/index.html\".", true},
        {"wait_until", Type::kString, "\"load\" (default) or \"networkidle\".", false, {"load", "networkidle"}},
        {"timeout_ms", Type::kInteger, "Give up after this many milliseconds (default 30000, at most 120000).",
         false, {}, 1, 120000}}},
      {"browser_screenshot", true,
       "Take a screenshot of the browser's page; it comes back as a PNG image. Its pixel coordinates are the "
       "viewport's CSS pixels (unless scaled with width), which browser_click's x/y take.",
       {{"full_page", Type::kBoolean, "The whole page instead of the viewport (default false)."},
        {"width", Type::kInteger, "Scale the image down to this many pixels wide (default: not scaled).", false,
         {}, 1, 10000}}},
      {"browser_click", true,
       "Click an element of the page: the first one matching a CSS selector, or the point x/y in the viewport's "
       "CSS pixels (as in a viewport screenshot).",
       {{"selector", Type::kString, "CSS selector, e.g. \"button#submit\"."},
        {"x", Type::kNumber, "X coordinate (with y, instead of selector)."},
        {"y", Type::kNumber, "Y coordinate (with x, instead of selector)."}},
       {"selector", "x"}},
      {"browser_type", true,
       "Type text into the focused element of the page, or into the element matching selector (focused first).",
       {{"text", Type::kString, "The text to type.", true},
        {"selector", Type::kString, "CSS selector of the element to focus first."}}},
      {"browser_press", true, "Press one key in the page: Enter, Tab, Escape, Backspace, ArrowDown, a character.",
       {{"key", Type::kString, "The key's name, e.g. \"Enter\".", true}}},
      {"browser_evaluate", true,
       "Evaluate a JavaScript expression in the page and return its value as JSON (a promise is awaited).",
       {{"expression", Type::kString, "The expression, e.g. \"document.title\".", true},
        {"timeout_ms", Type::kInteger, "Terminate the script after this many milliseconds (default 10000).", false,
         {}, 1, 120000}}},
      {"browser_content", true,
       "Return the page's HTML, or with text the visible text only (at most 1 MiB; the result says when cut).",
       {{"text", Type::kBoolean, "Return the visible text instead of the HTML (default false)."}}},
  };
}

// Anthropic's computer-use tool input (computer_20251124: every action agent/session/computer_use.cc accepts), so
// a client that speaks that tool can forward the model's tool_use input as it is.
Tool ComputerTool() {
  return {"computer", false,
       "Use the sandbox's desktop (an X display) as Anthropic's computer-use tool does: take a screenshot, move "
       "and click the mouse, type, press keys, scroll, drag, wait, zoom into a region. Coordinates are pixels of "
       "the display, as in its screenshots ([x, y] from the top left). Input actions return a screenshot taken "
       "right after them; cursor_position returns the pointer's position as text.",
       {{"action", Type::kString, "The action to perform.", true,
         {"screenshot", "cursor_position", "mouse_move", "left_click", "right_click", "middle_click",
          "double_click", "triple_click", "left_click_drag", "left_mouse_down", "left_mouse_up", "scroll", "key",
          "type", "hold_key", "wait", "zoom"}},
        {"coordinate", Type::kIntegerTuple,
         "[x, y]: where to move, click or scroll; for left_click_drag where the drag ends.", false, {}, 0,
         INT64_MAX, 2},
        {"start_coordinate", Type::kIntegerTuple, "[x, y]: where left_click_drag starts.", false, {}, 0, INT64_MAX,
         2},
        {"text", Type::kString,
         "For type: the text. For key and hold_key: a key or chord, e.g. \"Return\" or \"ctrl+s\". For clicks and "
         "scroll: modifier keys held meanwhile, e.g. \"shift\"."},
        {"duration", Type::kNumber, "Seconds: how long hold_key holds the key, or how long wait waits."},
        {"scroll_direction", Type::kString, "For scroll.", false, {"up", "down", "left", "right"}},
        {"scroll_amount", Type::kInteger, "For scroll: how many wheel clicks.", false, {}, 0},
        {"region", Type::kIntegerTuple, "For zoom: [x0, y0, x1, y1], the rectangle to show at full resolution.",
         false, {}, 0, INT64_MAX, 4}},
       {},
       true,
       true};
}

const std::vector<Tool>& Tools() {
  static const std::vector<Tool>* tools = [] {
    auto* all = new std::vector<Tool>(FileTools());
    for (Tool& t : BrowserTools()) all->push_back(std::move(t));
    all->push_back(ComputerTool());
    return all;
  }();
  return *tools;
}

bool Offered(const Tool& t, pb::SessionKind kind) {
  return (!t.browser || kind == pb::BROWSER) && (!t.desktop || kind == pb::DESKTOP);
}

const Tool* FindTool(std::string_view name) {
  for (const Tool& t : Tools()) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

json PropSchema(const Prop& p) {
  json s;
  switch (p.type) {
    case Type::kString:
      s["type"] = "string";
      if (!p.values.empty()) s["enum"] = p.values;
      break;
    case Type::kInteger:
      s["type"] = "integer";
      s["minimum"] = p.min;
      if (p.max != INT64_MAX) s["maximum"] = p.max;
      break;
    case Type::kBoolean: s["type"] = "boolean"; break;
    case Type::kNumber: s["type"] = "number"; break;
    case Type::kStringArray:
      s["type"] = "array";
      s["items"] = {{"type", "string"}};
      s["minItems"] = 1;
      break;
    case Type::kStringMap:
      s["type"] = "object";
      s["additionalProperties"] = {{"type", "string"}};
      break;
    case Type::kIntegerTuple:
      s["type"] = "array";
      s["items"] = {{"type", "integer"}, {"minimum", p.min}};
      s["minItems"] = p.items;
      s["maxItems"] = p.items;
      break;
  }
  s["description"] = p.description;
  return s;
}

// Checks one argument against its property: the type, and an enum's values, an integer's range, a tuple's
// size.
absl::Status CheckValue(const Prop& prop, const std::string& where, const json& value) {
  switch (prop.type) {
    case Type::kString:
      if (!value.is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a string"));
      if (!prop.values.empty()) {
        bool ok = false;
        for (const char* v : prop.values) ok = ok || value.get<std::string>() == v;
        if (!ok) return absl::InvalidArgumentError(absl::StrCat(where, ": not one of the allowed values"));
      }
      return absl::OkStatus();
    case Type::kInteger: {
      if (!value.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an integer"));
      const bool negative = value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0;
      if (negative || (value.is_number_unsigned() && value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": out of range"));
      }
      const int64_t v = value.get<int64_t>();
      if (v < prop.min || v > prop.max) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": must be between ", prop.min, " and ", prop.max));
      }
      return absl::OkStatus();
    }
    case Type::kBoolean:
      if (!value.is_boolean()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected true or false"));
      return absl::OkStatus();
    case Type::kNumber:
      if (!value.is_number()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected a number"));
      return absl::OkStatus();
    case Type::kStringArray:
      if (!value.is_array() || value.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected a non-empty array of strings"));
      }
      for (const json& item : value) {
        if (!item.is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ": every item must be a string"));
      }
      return absl::OkStatus();
    case Type::kStringMap:
      if (!value.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ": expected an object"));
      for (const auto& [k, v] : value.items()) {
        if (!v.is_string()) {
          return absl::InvalidArgumentError(absl::StrCat(where, ".", k, ": expected a string"));
        }
      }
      return absl::OkStatus();
    case Type::kIntegerTuple:
      if (!value.is_array() || value.size() != static_cast<size_t>(prop.items)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": expected an array of ", prop.items, " integers"));
      }
      for (const json& item : value) {
        if (!item.is_number_integer() || (!item.is_number_unsigned() && item.get<int64_t>() < prop.min)) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": every item must be an integer >= ", prop.min));
        }
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

// Checks `args` against `tool`'s table: the same rules its schema states.
absl::Status CheckArguments(const Tool& tool, const json& args) {
  if (!args.is_object()) return absl::InvalidArgumentError("arguments: expected an object");
  for (const auto& [key, value] : args.items()) {
    const Prop* prop = nullptr;
    for (const Prop& p : tool.props) {
      if (key == p.name) prop = &p;
    }
    if (prop == nullptr) {
      std::string known;
      for (const Prop& p : tool.props) absl::StrAppend(&known, known.empty() ? "" : ", ", p.name);
      return absl::InvalidArgumentError(
          absl::StrCat("arguments: unknown property \"", key, "\" (", tool.name, " takes ", known, ")"));
    }
    RETURN_IF_ERROR(CheckValue(*prop, absl::StrCat("arguments.", key), value));
  }
  for (const Prop& p : tool.props) {
    if (p.required && !args.contains(p.name)) {
      return absl::InvalidArgumentError(absl::StrCat("arguments: \"", p.name, "\" is required"));
    }
  }
  if (!tool.one_of_required.empty()) {
    int given = 0;
    for (const char* name : tool.one_of_required) given += args.contains(name) ? 1 : 0;
    if (given != 1) {
      return absl::InvalidArgumentError(absl::StrCat("arguments: give exactly one of \"", tool.one_of_required[0],
                                                     "\" and \"", tool.one_of_required[1], "\""));
    }
  }
  return absl::OkStatus();
}

std::string Str(const json& args, const char* name) {
  auto it = args.find(name);
  return it == args.end() ? std::string() : it->get<std::string>();
}
uint64_t U64(const json& args, const char* name) {
  auto it = args.find(name);
  return it == args.end() ? 0 : it->get<uint64_t>();
}
bool Bool(const json& args, const char* name) {
  auto it = args.find(name);
  return it != args.end() && it->get<bool>();
}

void BuildExec(const json& args, pb::Exec* e) {
  if (args.contains("argv")) {
    for (const json& a : args["argv"]) e->add_argv(a.get<std::string>());
  } else {
    e->add_argv("/bin/sh");
    e->add_argv("-c");
    e->add_argv(Str(args, "command"));
  }
  e->set_cwd(Str(args, "cwd"));
  if (args.contains("env")) {
    for (const auto& [k, v] : args["env"].items()) (*e->mutable_env())[k] = v.get<std::string>();
  }
  e->set_stdin(Str(args, "stdin"));
  e->set_timeout_ms(U64(args, "timeout_ms"));
}

// The browser_* tools.
absl::Status BuildBrowserAction(std::string_view name, const json& args, pb::BrowserAction* b) {
  if (name == "browser_navigate") {
    b->mutable_navigate()->set_url(Str(args, "url"));
    b->mutable_navigate()->set_wait_until(Str(args, "wait_until"));
    b->mutable_navigate()->set_timeout_ms(static_cast<uint32_t>(U64(args, "timeout_ms")));
  } else if (name == "browser_screenshot") {
    b->mutable_screenshot()->set_full_page(Bool(args, "full_page"));
    b->mutable_screenshot()->set_format("png");
    b->mutable_screenshot()->set_width(static_cast<uint32_t>(U64(args, "width")));
  } else if (name == "browser_click") {
    if (args.contains("selector") == (args.contains("x") || args.contains("y")) ||
        args.contains("x") != args.contains("y")) {
      return absl::InvalidArgumentError("arguments: give either \"selector\" or both \"x\" and \"y\"");
    }
    if (args.contains("selector")) {
      b->mutable_click()->set_selector(Str(args, "selector"));
    } else {
      b->mutable_click()->set_x(args["x"].get<double>());
      b->mutable_click()->set_y(args["y"].get<double>());
    }
  } else if (name == "browser_type") {
    b->mutable_type()->set_text(Str(args, "text"));
    b->mutable_type()->set_selector(Str(args, "selector"));
  } else if (name == "browser_press") {
    b->mutable_press()->set_key(Str(args, "key"));
  } else if (name == "browser_evaluate") {
    b->mutable_evaluate()->set_expression(Str(args, "expression"));
    b->mutable_evaluate()->set_timeout_ms(static_cast<uint32_t>(U64(args, "timeout_ms")));
  } else if (name == "browser_content") {
    b->mutable_content()->set_text(Bool(args, "text"));
  }
  return absl::OkStatus();
}

}  // namespace

json ToolList(pb::SessionKind kind) {
  json list = json::array();
  for (const Tool& t : Tools()) {
    if (!Offered(t, kind)) continue;
    json props = json::object();
    json required = json::array();
    for (const Prop& p : t.props) {
      props[p.name] = PropSchema(p);
      if (p.required) required.push_back(p.name);
    }
    json schema = {{"type", "object"}, {"properties", props}, {"additionalProperties", false}};
    if (!required.empty()) schema["required"] = required;
    // NOTE: "give argv or command" is in the descriptions and checked by BuildToolCall, not stated as a
    // top-level anyOf: model APIs refuse combinators at the top of a tool's input schema.
    list.push_back({{"name", t.name}, {"description", t.description}, {"inputSchema", schema}});
  }
  return list;
}

bool HasTool(pb::SessionKind kind, std::string_view name) {
  const Tool* t = FindTool(name);
  return t != nullptr && Offered(*t, kind);
}

absl::StatusOr<pb::ToolCall> BuildToolCall(std::string_view name, const json& arguments) {
  const Tool* tool = FindTool(name);
  if (tool == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown tool ", ToAbsl(name)));
  const json args = arguments.is_null() ? json::object() : arguments;
  pb::ToolCall call;
  if (tool->passthrough) {
    if (!args.is_object()) return absl::InvalidArgumentError("arguments: expected an object");
    call.mutable_computer()->set_input_json(args.dump());
    return call;
  }
  if (absl::Status s = CheckArguments(*tool, args); !s.ok()) return s;
  if (name == "exec") {
    BuildExec(args, call.mutable_exec());
  } else if (name == "read_file") {
    call.mutable_read_file()->set_path(Str(args, "path"));
    call.mutable_read_file()->set_offset(U64(args, "offset"));
    call.mutable_read_file()->set_length(U64(args, "length"));
  } else if (name == "write_file") {
    pb::WriteFile* w = call.mutable_write_file();
    w->set_path(Str(args, "path"));
    if (Str(args, "encoding") == "base64") {
      std::string data;
      if (!absl::Base64Unescape(Str(args, "content"), &data)) {
        return absl::InvalidArgumentError("arguments.content: not valid base64");
      }
      w->set_data(std::move(data));
    } else {
      w->set_data(Str(args, "content"));
    }
    w->set_mode(args.contains("mode") ? static_cast<uint32_t>(U64(args, "mode")) : 0644);
  } else if (name == "list_files") {
    call.mutable_list_files()->set_path(Str(args, "path"));
  } else if (name == "remove") {
    call.mutable_remove()->set_path(Str(args, "path"));
    call.mutable_remove()->set_recursive(Bool(args, "recursive"));
  } else {
    RETURN_IF_ERROR(BuildBrowserAction(name, args, call.mutable_browser()));
  }
  return call;
}

}  // namespace sbx::agent::mcp
