#include "agent/session/computer_use.h"

#include <cmath>
#include <cstdint>
#include <optional>
#include <set>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using nlohmann::json;

constexpr double kMaxDurationS = 100;  // hold_key and wait, as Anthropic's reference implementation allows
constexpr int kMaxScrollAmount = 100;
constexpr size_t kMaxKeySteps = 16;     // "key": space-separated chords, xdotool-style
constexpr size_t kMaxInputBytes = 1 << 20;

// Which tool version an action first appeared in (an index into ComputerToolVersions()).
struct ActionInfo {
  std::string name;
  int since;
  std::set<std::string> params;  // besides "action"
};

const std::vector<ActionInfo>& Actions() {
  static const std::vector<ActionInfo> kActions = {
      {"screenshot", 0, {}},
      {"cursor_position", 0, {}},
      {"mouse_move", 0, {"coordinate"}},
      {"left_click", 0, {"coordinate", "text", "key"}},
      {"right_click", 0, {"coordinate", "text", "key"}},
      {"middle_click", 0, {"coordinate", "text", "key"}},
      {"double_click", 0, {"coordinate", "text", "key"}},
      {"left_click_drag", 0, {"start_coordinate", "coordinate"}},
      {"key", 0, {"text"}},
      {"type", 0, {"text"}},
      {"triple_click", 1, {"coordinate", "text", "key"}},
      {"left_mouse_down", 1, {"coordinate"}},
      {"left_mouse_up", 1, {"coordinate"}},
      {"scroll", 1, {"coordinate", "scroll_direction", "scroll_amount", "text"}},
      {"hold_key", 1, {"text", "duration"}},
      {"wait", 1, {"duration"}},
      {"zoom", 2, {"region"}},
  };
  return kActions;
}

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("computer.input.", field, ": ", what));
}

// The parameters of one call, with the declared space for range checks.
class Input {
 public:
  Input(const json& object, uint32_t width, uint32_t height) : o_(object), width_(width), height_(height) {}

  bool Has(const char* name) const {
    auto it = o_.find(name);
    return it != o_.end() && !it->is_null();
  }

  absl::StatusOr<std::string> String(const char* name) const {
    const json& v = o_.at(name);
    if (!v.is_string()) return Bad(name, absl::StrCat("must be a string, not ", v.type_name()));
    return v.get<std::string>();
  }

  absl::StatusOr<int64_t> Integer(const char* name) const {
    const json& v = o_.at(name);
    if (!v.is_number_integer()) return Bad(name, absl::StrCat("must be an integer, not ", Describe(v)));
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX)) {
      return Bad(name, "is too large");
    }
    return v.get<int64_t>();
  }

  absl::StatusOr<double> Seconds(const char* name) const {
    const json& v = o_.at(name);
    if (!v.is_number()) return Bad(name, absl::StrCat("must be a number of seconds, not ", v.type_name()));
    const double s = v.get<double>();
    if (!std::isfinite(s) || s < 0) return Bad(name, "must not be negative");
    if (s > kMaxDurationS) return Bad(name, absl::StrCat(s, " s is too long (at most ", kMaxDurationS, " s)"));
    return s;
  }

  // `n` non-negative integers, each below the declared size on its axis (x: width, y: height) or, when
  // `edges`, at most it (a region's far edges).
  absl::StatusOr<std::vector<int32_t>> Point(const char* name, size_t n, bool edges = false) const {
    const json& v = o_.at(name);
    const char* shape = n == 2 ? "[x, y]" : "[x0, y0, x1, y1]";
    if (!v.is_array() || v.size() != n) {
      return Bad(name, absl::StrCat("must be an array ", shape, " of ", n, " integers, not ", Describe(v)));
    }
    std::vector<int32_t> out;
    for (size_t i = 0; i < n; ++i) {
      const json& c = v[i];
      if (!c.is_number_integer()) {
        return Bad(name, absl::StrCat("must be an array ", shape, " of integers; element ", i, " is ", Describe(c)));
      }
      if (c.is_number_unsigned() ? c.get<uint64_t>() > static_cast<uint64_t>(INT32_MAX) : c.get<int64_t>() < 0) {
        return Bad(name, absl::StrCat("element ", i, " (", c.dump(), ") must be a non-negative pixel coordinate"));
      }
      out.push_back(static_cast<int32_t>(c.get<int64_t>()));
    }
    if (width_ != 0) {
      for (size_t i = 0; i < n; ++i) {
        const uint32_t limit = i % 2 == 0 ? width_ : height_;
        const bool outside = edges && i >= 2 ? static_cast<uint32_t>(out[i]) > limit
                                             : static_cast<uint32_t>(out[i]) >= limit;
        if (outside) {
          return Bad(name, absl::StrCat(v.dump(), " is outside the ", width_, "x", height_,
                                        " display declared to the model (display_width_px x display_height_px)"));
        }
      }
    }
    return out;
  }

 private:
  static std::string Describe(const json& v) {
    std::string s = v.dump();
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return absl::StrCat(v.type_name(), " ", s);
  }

  const json& o_;
  uint32_t width_, height_;
};

}  // namespace

const std::vector<std::string>& ComputerToolVersions() {
  static const std::vector<std::string> kVersions = {"computer_20241022", "computer_20250124", "computer_20251124"};
  return kVersions;
}

absl::StatusOr<ComputerPlan> PlanComputerUse(const pb::ComputerUse& call) {
  // The tool version and the declared display.
  const std::vector<std::string>& versions = ComputerToolVersions();
  int version = static_cast<int>(versions.size()) - 1;
  if (!call.tool_version().empty()) {
    version = -1;
    for (size_t i = 0; i < versions.size(); ++i) {
      if (call.tool_version() == versions[i]) version = static_cast<int>(i);
    }
    if (version < 0) {
      return absl::InvalidArgumentError(absl::StrCat("computer.tool_version: unknown tool version \"",
                                                     call.tool_version(), "\" (known: ", absl::StrJoin(versions, ", "),
                                                     ")"));
    }
  }
  const uint32_t width = call.display_width_px(), height = call.display_height_px();
  if ((width == 0) != (height == 0)) {
    return absl::InvalidArgumentError(
        "computer.display_width_px: give both display_width_px and display_height_px, or neither");
  }
  if (width > 7680 || height > 4320) {
    return absl::InvalidArgumentError("computer.display_width_px: the declared display is larger than 7680x4320");
  }

  // The JSON object.
  if (call.input_json().size() > kMaxInputBytes) {
    return absl::InvalidArgumentError("computer.input_json: larger than 1 MiB");
  }
  json input;
  try {
    input = json::parse(call.input_json());
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("computer.input_json: not JSON: ", e.what()));
  }
  if (!input.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("computer.input_json: must be a JSON object (the tool_use input), not ", input.type_name()));
  }
  auto action_it = input.find("action");
  if (action_it == input.end() || action_it->is_null()) return Bad("action", "missing");
  if (!action_it->is_string()) return Bad("action", absl::StrCat("must be a string, not ", action_it->type_name()));
  const std::string action = action_it->get<std::string>();
  const ActionInfo* info = nullptr;
  for (const ActionInfo& a : Actions()) {
    if (a.name == action) info = &a;
  }
  if (info == nullptr) {
    std::vector<std::string> known;
    for (const ActionInfo& a : Actions()) {
      if (a.since <= version) known.push_back(a.name);
    }
    return Bad("action", absl::StrCat("unknown action \"", action.substr(0, 64), "\" (", versions[version],
                                      " has: ", absl::StrJoin(known, ", "), ")"));
  }
  if (info->since > version) {
    return Bad("action", absl::StrCat("\"", action, "\" is not an action of ", versions[version], " (it came with ",
                                      versions[info->since], ")"));
  }
  for (const auto& [key, value] : input.items()) {
    if (key == "action" || value.is_null()) continue;
    // computer_20241022's clicks took no modifier keys.
    const bool click = action.size() > 6 && action.compare(action.size() - 6, 6, "_click") == 0;
    if (info->params.count(key) == 0 || (version == 0 && click && (key == "text" || key == "key"))) {
      std::string known = info->params.empty() ? "none" : absl::StrJoin(info->params, ", ");
      return Bad(key.substr(0, 64), absl::StrCat("not a parameter of ", action, " (it takes: ", known, ")"));
    }
  }

  const Input in(input, width, height);
  ComputerPlan plan;
  plan.action = action;
  pb::DesktopAction base;
  if (width != 0) {
    base.mutable_space()->set_width(width);
    base.mutable_space()->set_height(height);
  }
  auto step = [&]() -> pb::DesktopAction& {
    plan.steps.push_back(base);
    return plan.steps.back();
  };
  const ComputerPlan::Show after =
      call.skip_screenshot() ? ComputerPlan::Show::kNothing : ComputerPlan::Show::kScreenshot;
  // The modifier keys of a click or scroll: `text` (the documented name) or `key` (what the reference
  // implementation reads for clicks).
  auto modifiers = [&]() -> absl::StatusOr<std::string> {
    if (in.Has("text") && in.Has("key")) return Bad("key", "give the modifier keys in text or key, not both");
    const char* name = in.Has("key") ? "key" : "text";
    if (!in.Has(name)) return std::string();
    ASSIGN_OR_RETURN(auto m, in.String(name));
    if (m.find_first_not_of(" \t") == std::string::npos) return Bad(name, "the modifier keys are empty");
    if (m.size() > 256) return Bad(name, "at most 256 bytes of modifier keys");
    return m;
  };

  if (action == "screenshot") {
    plan.show = ComputerPlan::Show::kScreenshot;
  } else if (action == "cursor_position") {
    plan.show = ComputerPlan::Show::kCursorPosition;
  } else if (action == "mouse_move") {
    if (!in.Has("coordinate")) return Bad("coordinate", "required for mouse_move");
    ASSIGN_OR_RETURN(auto p, in.Point("coordinate", 2));
    pb::DesktopAction& s = step();
    s.mutable_mouse_move()->set_x(p[0]);
    s.mutable_mouse_move()->set_y(p[1]);
    plan.show = after;
  } else if (action == "left_click" || action == "right_click" || action == "middle_click" ||
             action == "double_click" || action == "triple_click") {
    ASSIGN_OR_RETURN(auto mods, modifiers());
    pb::DesktopAction& s = step();
    pb::DesktopAction::Click* c = s.mutable_click();
    c->set_button(action == "right_click"    ? pb::DesktopAction::RIGHT
                  : action == "middle_click" ? pb::DesktopAction::MIDDLE
                                             : pb::DesktopAction::LEFT);
    c->set_count(action == "double_click" ? 2 : action == "triple_click" ? 3 : 1);
    c->set_modifiers(mods);
    if (in.Has("coordinate")) {
      ASSIGN_OR_RETURN(auto p, in.Point("coordinate", 2));
      c->set_x(p[0]);
      c->set_y(p[1]);
    }
    plan.show = after;
  } else if (action == "left_click_drag") {
    if (!in.Has("coordinate")) return Bad("coordinate", "required for left_click_drag (where the drag ends)");
    ASSIGN_OR_RETURN(auto to, in.Point("coordinate", 2));
    if (in.Has("start_coordinate")) {
      ASSIGN_OR_RETURN(auto from, in.Point("start_coordinate", 2));
      pb::DesktopAction::Drag* d = step().mutable_left_click_drag();
      d->set_from_x(from[0]);
      d->set_from_y(from[1]);
      d->set_to_x(to[0]);
      d->set_to_y(to[1]);
    } else {
      // computer_20241022 drags from where the pointer is: press there, move, release.
      step().mutable_mouse_down()->set_button(pb::DesktopAction::LEFT);
      pb::DesktopAction& m = step();
      m.mutable_mouse_move()->set_x(to[0]);
      m.mutable_mouse_move()->set_y(to[1]);
      step().mutable_mouse_up()->set_button(pb::DesktopAction::LEFT);
    }
    plan.show = after;
  } else if (action == "left_mouse_down" || action == "left_mouse_up") {
    const bool down = action == "left_mouse_down";
    pb::DesktopAction& s = step();
    if (down) {
      s.mutable_mouse_down()->set_button(pb::DesktopAction::LEFT);
    } else {
      s.mutable_mouse_up()->set_button(pb::DesktopAction::LEFT);
    }
    if (in.Has("coordinate")) {
      ASSIGN_OR_RETURN(auto p, in.Point("coordinate", 2));
      if (down) {
        s.mutable_mouse_down()->set_x(p[0]);
        s.mutable_mouse_down()->set_y(p[1]);
      } else {
        s.mutable_mouse_up()->set_x(p[0]);
        s.mutable_mouse_up()->set_y(p[1]);
      }
    }
    plan.show = after;
  } else if (action == "scroll") {
    if (!in.Has("scroll_direction")) return Bad("scroll_direction", "required for scroll: up, down, left or right");
    ASSIGN_OR_RETURN(auto direction, in.String("scroll_direction"));
    pb::DesktopAction::ScrollDirection d;
    if (direction == "up") {
      d = pb::DesktopAction::UP;
    } else if (direction == "down") {
      d = pb::DesktopAction::DOWN;
    } else if (direction == "left") {
      d = pb::DesktopAction::LEFT_SCROLL;
    } else if (direction == "right") {
      d = pb::DesktopAction::RIGHT_SCROLL;
    } else {
      return Bad("scroll_direction", absl::StrCat("\"", direction.substr(0, 64), "\" is not up, down, left or right"));
    }
    if (!in.Has("scroll_amount")) return Bad("scroll_amount", "required for scroll: how many wheel clicks");
    ASSIGN_OR_RETURN(auto amount, in.Integer("scroll_amount"));
    if (amount < 0 || amount > kMaxScrollAmount) {
      return Bad("scroll_amount", absl::StrCat(amount, " is outside 0..", kMaxScrollAmount));
    }
    ASSIGN_OR_RETURN(auto mods, modifiers());
    std::optional<std::vector<int32_t>> at;
    if (in.Has("coordinate")) {
      ASSIGN_OR_RETURN(auto p, in.Point("coordinate", 2));
      at = p;
    }
    if (amount > 0) {
      pb::DesktopAction::Scroll* s = step().mutable_scroll();
      s->set_direction(d);
      s->set_amount(static_cast<uint32_t>(amount));
      s->set_modifiers(mods);
      if (at) {
        s->set_x((*at)[0]);
        s->set_y((*at)[1]);
      }
    } else if (at) {  // no wheel clicks: only the move, as xdotool's "mousemove ... click --repeat 0"
      pb::DesktopAction& m = step();
      m.mutable_mouse_move()->set_x((*at)[0]);
      m.mutable_mouse_move()->set_y((*at)[1]);
    }
    plan.show = after;
  } else if (action == "key") {
    if (!in.Has("text")) return Bad("text", "required for key: a key or chord such as \"Return\" or \"ctrl+s\"");
    ASSIGN_OR_RETURN(auto text, in.String("text"));
    // xdotool's `key` takes several chords separated by spaces, pressed one after another.
    size_t at = 0;
    while (at < text.size()) {
      const size_t start = text.find_first_not_of(' ', at);
      if (start == std::string::npos) break;
      const size_t end = std::min(text.find(' ', start), text.size());
      if (plan.steps.size() == kMaxKeySteps) return Bad("text", absl::StrCat("more than ", kMaxKeySteps, " key chords"));
      step().mutable_key()->set_chord(text.substr(start, end - start));
      at = end;
    }
    if (plan.steps.empty()) return Bad("text", "no key given (e.g. \"Return\", \"ctrl+s\")");
    plan.show = after;
  } else if (action == "type") {
    if (!in.Has("text")) return Bad("text", "required for type");
    ASSIGN_OR_RETURN(auto text, in.String("text"));
    step().mutable_type()->set_text(text);
    plan.show = after;
  } else if (action == "hold_key") {
    if (!in.Has("text")) return Bad("text", "required for hold_key: the key or chord to hold");
    if (!in.Has("duration")) return Bad("duration", "required for hold_key: seconds to hold the keys");
    ASSIGN_OR_RETURN(auto text, in.String("text"));
    ASSIGN_OR_RETURN(auto seconds, in.Seconds("duration"));
    if (text.find_first_not_of(' ') == std::string::npos) return Bad("text", "no key given");
    pb::DesktopAction::HoldKey* h = step().mutable_hold_key();
    h->set_chord(text);
    h->set_duration_ms(static_cast<uint32_t>(std::llround(seconds * 1000)));
    plan.show = after;
  } else if (action == "wait") {
    if (!in.Has("duration")) return Bad("duration", "required for wait: seconds to wait");
    ASSIGN_OR_RETURN(auto seconds, in.Seconds("duration"));
    step().mutable_wait()->set_ms(static_cast<uint32_t>(std::llround(seconds * 1000)));
    plan.show = after;  // the reference implementation returns a screenshot after a wait
  } else if (action == "zoom") {
    if (!in.Has("region")) return Bad("region", "required for zoom: [x0, y0, x1, y1]");
    ASSIGN_OR_RETURN(auto r, in.Point("region", 4, /*edges=*/true));
    if (r[2] <= r[0] || r[3] <= r[1]) {
      return Bad("region", absl::StrCat("[", r[0], ", ", r[1], ", ", r[2], ", ", r[3],
                                        "] is empty: x1 must be greater than x0 and y1 than y0"));
    }
    pb::DesktopAction::Zoom* z = step().mutable_zoom();
    z->set_x0(r[0]);
    z->set_y0(r[1]);
    z->set_x1(r[2]);
    z->set_y1(r[3]);
    plan.show = ComputerPlan::Show::kZoom;
  }
  return plan;
}

}  // namespace sbx::agent
