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

// One call being planned: its checked input, the step template (the declared space) and what input actions
// show afterwards. Each action kind's function below fills `plan`.
struct Planner {
  const Input& in;
  const std::string& action;
  const pb::DesktopAction& base;
  ComputerPlan::Show after;
  ComputerPlan& plan;

  pb::DesktopAction& Step() {
    plan.steps.push_back(base);
    return plan.steps.back();
  }

  // The modifier keys of a click or scroll: `text` (the documented name) or `key` (what the reference
  // implementation reads for clicks).
  absl::StatusOr<std::string> Modifiers() const {
    if (in.Has("text") && in.Has("key")) return Bad("key", "give the modifier keys in text or key, not both");
    const char* name = in.Has("key") ? "key" : "text";
    if (!in.Has(name)) return std::string();
    ASSIGN_OR_RETURN(auto m, in.String(name));
    if (m.find_first_not_of(" \t") == std::string::npos) return Bad(name, "the modifier keys are empty");
    if (m.size() > 256) return Bad(name, "at most 256 bytes of modifier keys");
    return m;
  }
};

absl::Status PlanScreenshot(Planner& p) {
  p.plan.show = ComputerPlan::Show::kScreenshot;
  return absl::OkStatus();
}

absl::Status PlanCursorPosition(Planner& p) {
  p.plan.show = ComputerPlan::Show::kCursorPosition;
  return absl::OkStatus();
}

absl::Status PlanMouseMove(Planner& p) {
  if (!p.in.Has("coordinate")) return Bad("coordinate", "required for mouse_move");
  ASSIGN_OR_RETURN(auto at, p.in.Point("coordinate", 2));
  pb::DesktopAction& s = p.Step();
  s.mutable_mouse_move()->set_x(at[0]);
  s.mutable_mouse_move()->set_y(at[1]);
  p.plan.show = p.after;
  return absl::OkStatus();
}

// left_click, right_click, middle_click, double_click, triple_click.
absl::Status PlanClick(Planner& p) {
  ASSIGN_OR_RETURN(auto mods, p.Modifiers());
  pb::DesktopAction& s = p.Step();
  pb::DesktopAction::Click* c = s.mutable_click();
  c->set_button(p.action == "right_click"    ? pb::DesktopAction::RIGHT
                : p.action == "middle_click" ? pb::DesktopAction::MIDDLE
                                             : pb::DesktopAction::LEFT);
  c->set_count(p.action == "double_click" ? 2 : p.action == "triple_click" ? 3 : 1);
  c->set_modifiers(mods);
  if (p.in.Has("coordinate")) {
    ASSIGN_OR_RETURN(auto at, p.in.Point("coordinate", 2));
    c->set_x(at[0]);
    c->set_y(at[1]);
  }
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::Status PlanDrag(Planner& p) {
  if (!p.in.Has("coordinate")) return Bad("coordinate", "required for left_click_drag (where the drag ends)");
  ASSIGN_OR_RETURN(auto to, p.in.Point("coordinate", 2));
  if (p.in.Has("start_coordinate")) {
    ASSIGN_OR_RETURN(auto from, p.in.Point("start_coordinate", 2));
    pb::DesktopAction::Drag* d = p.Step().mutable_left_click_drag();
    d->set_from_x(from[0]);
    d->set_from_y(from[1]);
    d->set_to_x(to[0]);
    d->set_to_y(to[1]);
  } else {
    // computer_20241022 drags from where the pointer is: press there, move, release.
    p.Step().mutable_mouse_down()->set_button(pb::DesktopAction::LEFT);
    pb::DesktopAction& m = p.Step();
    m.mutable_mouse_move()->set_x(to[0]);
    m.mutable_mouse_move()->set_y(to[1]);
    p.Step().mutable_mouse_up()->set_button(pb::DesktopAction::LEFT);
  }
  p.plan.show = p.after;
  return absl::OkStatus();
}

// left_mouse_down, left_mouse_up.
absl::Status PlanMouseButton(Planner& p) {
  std::optional<std::vector<int32_t>> at;
  if (p.in.Has("coordinate")) {
    ASSIGN_OR_RETURN(auto point, p.in.Point("coordinate", 2));
    at = point;
  }
  auto press = [&](auto* b) {  // MouseDown or MouseUp
    b->set_button(pb::DesktopAction::LEFT);
    if (at) {
      b->set_x((*at)[0]);
      b->set_y((*at)[1]);
    }
  };
  pb::DesktopAction& s = p.Step();
  if (p.action == "left_mouse_down") {
    press(s.mutable_mouse_down());
  } else {
    press(s.mutable_mouse_up());
  }
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::StatusOr<pb::DesktopAction::ScrollDirection> ScrollDirectionOf(const std::string& direction) {
  if (direction == "up") return pb::DesktopAction::UP;
  if (direction == "down") return pb::DesktopAction::DOWN;
  if (direction == "left") return pb::DesktopAction::LEFT_SCROLL;
  if (direction == "right") return pb::DesktopAction::RIGHT_SCROLL;
  return Bad("scroll_direction", absl::StrCat("\"", direction.substr(0, 64), "\" is not up, down, left or right"));
}

absl::Status PlanScroll(Planner& p) {
  if (!p.in.Has("scroll_direction")) return Bad("scroll_direction", "required for scroll: up, down, left or right");
  ASSIGN_OR_RETURN(auto direction, p.in.String("scroll_direction"));
  ASSIGN_OR_RETURN(auto d, ScrollDirectionOf(direction));
  if (!p.in.Has("scroll_amount")) return Bad("scroll_amount", "required for scroll: how many wheel clicks");
  ASSIGN_OR_RETURN(auto amount, p.in.Integer("scroll_amount"));
  if (amount < 0 || amount > kMaxScrollAmount) {
    return Bad("scroll_amount", absl::StrCat(amount, " is outside 0..", kMaxScrollAmount));
  }
  ASSIGN_OR_RETURN(auto mods, p.Modifiers());
  std::optional<std::vector<int32_t>> at;
  if (p.in.Has("coordinate")) {
    ASSIGN_OR_RETURN(auto point, p.in.Point("coordinate", 2));
    at = point;
  }
  if (amount > 0) {
    pb::DesktopAction::Scroll* s = p.Step().mutable_scroll();
    s->set_direction(d);
    s->set_amount(static_cast<uint32_t>(amount));
    s->set_modifiers(mods);
    if (at) {
      s->set_x((*at)[0]);
      s->set_y((*at)[1]);
    }
  } else if (at) {  // no wheel clicks: only the move, as xdotool's "mousemove ... click --repeat 0"
    pb::DesktopAction& m = p.Step();
    m.mutable_mouse_move()->set_x((*at)[0]);
    m.mutable_mouse_move()->set_y((*at)[1]);
  }
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::Status PlanKey(Planner& p) {
  if (!p.in.Has("text")) return Bad("text", "required for key: a key or chord such as \"Return\" or \"ctrl+s\"");
  ASSIGN_OR_RETURN(auto text, p.in.String("text"));
  // xdotool's `key` takes several chords separated by spaces, pressed one after another.
  size_t at = 0;
  while (at < text.size()) {
    const size_t start = text.find_first_not_of(' ', at);
    if (start == std::string::npos) break;
    const size_t end = std::min(text.find(' ', start), text.size());
    if (p.plan.steps.size() == kMaxKeySteps) return Bad("text", absl::StrCat("more than ", kMaxKeySteps, " key chords"));
    p.Step().mutable_key()->set_chord(text.substr(start, end - start));
    at = end;
  }
  if (p.plan.steps.empty()) return Bad("text", "no key given (e.g. \"Return\", \"ctrl+s\")");
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::Status PlanType(Planner& p) {
  if (!p.in.Has("text")) return Bad("text", "required for type");
  ASSIGN_OR_RETURN(auto text, p.in.String("text"));
  p.Step().mutable_type()->set_text(text);
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::Status PlanHoldKey(Planner& p) {
  if (!p.in.Has("text")) return Bad("text", "required for hold_key: the key or chord to hold");
  if (!p.in.Has("duration")) return Bad("duration", "required for hold_key: seconds to hold the keys");
  ASSIGN_OR_RETURN(auto text, p.in.String("text"));
  ASSIGN_OR_RETURN(auto seconds, p.in.Seconds("duration"));
  if (text.find_first_not_of(' ') == std::string::npos) return Bad("text", "no key given");
  pb::DesktopAction::HoldKey* h = p.Step().mutable_hold_key();
  h->set_chord(text);
  h->set_duration_ms(static_cast<uint32_t>(std::llround(seconds * 1000)));
  p.plan.show = p.after;
  return absl::OkStatus();
}

absl::Status PlanWait(Planner& p) {
  if (!p.in.Has("duration")) return Bad("duration", "required for wait: seconds to wait");
  ASSIGN_OR_RETURN(auto seconds, p.in.Seconds("duration"));
  p.Step().mutable_wait()->set_ms(static_cast<uint32_t>(std::llround(seconds * 1000)));
  p.plan.show = p.after;  // the reference implementation returns a screenshot after a wait
  return absl::OkStatus();
}

absl::Status PlanZoom(Planner& p) {
  if (!p.in.Has("region")) return Bad("region", "required for zoom: [x0, y0, x1, y1]");
  ASSIGN_OR_RETURN(auto r, p.in.Point("region", 4, /*edges=*/true));
  if (r[2] <= r[0] || r[3] <= r[1]) {
    return Bad("region", absl::StrCat("[", r[0], ", ", r[1], ", ", r[2], ", ", r[3],
                                      "] is empty: x1 must be greater than x0 and y1 than y0"));
  }
  pb::DesktopAction::Zoom* z = p.Step().mutable_zoom();
  z->set_x0(r[0]);
  z->set_y0(r[1]);
  z->set_x1(r[2]);
  z->set_y1(r[3]);
  p.plan.show = ComputerPlan::Show::kZoom;
  return absl::OkStatus();
}

// Each action: the tool version it first appeared in (an index into ComputerToolVersions()), its parameters
// besides "action", and the function that plans it.
struct ActionInfo {
  std::string name;
  int since;
  std::set<std::string> params;
  absl::Status (*plan)(Planner&);
};

const std::vector<ActionInfo>& Actions() {
  static const std::vector<ActionInfo> kActions = {
      {"screenshot", 0, {}, PlanScreenshot},
      {"cursor_position", 0, {}, PlanCursorPosition},
      {"mouse_move", 0, {"coordinate"}, PlanMouseMove},
      {"left_click", 0, {"coordinate", "text", "key"}, PlanClick},
      {"right_click", 0, {"coordinate", "text", "key"}, PlanClick},
      {"middle_click", 0, {"coordinate", "text", "key"}, PlanClick},
      {"double_click", 0, {"coordinate", "text", "key"}, PlanClick},
      {"left_click_drag", 0, {"start_coordinate", "coordinate"}, PlanDrag},
      {"key", 0, {"text"}, PlanKey},
      {"type", 0, {"text"}, PlanType},
      {"triple_click", 1, {"coordinate", "text", "key"}, PlanClick},
      {"left_mouse_down", 1, {"coordinate"}, PlanMouseButton},
      {"left_mouse_up", 1, {"coordinate"}, PlanMouseButton},
      {"scroll", 1, {"coordinate", "scroll_direction", "scroll_amount", "text"}, PlanScroll},
      {"hold_key", 1, {"text", "duration"}, PlanHoldKey},
      {"wait", 1, {"duration"}, PlanWait},
      {"zoom", 2, {"region"}, PlanZoom},
  };
  return kActions;
}

// The index of the call's tool version in ComputerToolVersions() (the newest when it names none).
absl::StatusOr<int> ToolVersionOf(const pb::ComputerUse& call, const std::vector<std::string>& versions) {
  if (call.tool_version().empty()) return static_cast<int>(versions.size()) - 1;
  for (size_t i = 0; i < versions.size(); ++i) {
    if (call.tool_version() == versions[i]) return static_cast<int>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("computer.tool_version: unknown tool version \"",
                                                 call.tool_version(), "\" (known: ", absl::StrJoin(versions, ", "),
                                                 ")"));
}

absl::Status CheckDeclaredDisplay(uint32_t width, uint32_t height) {
  if ((width == 0) != (height == 0)) {
    return absl::InvalidArgumentError(
        "computer.display_width_px: give both display_width_px and display_height_px, or neither");
  }
  if (width > 7680 || height > 4320) {
    return absl::InvalidArgumentError("computer.display_width_px: the declared display is larger than 7680x4320");
  }
  return absl::OkStatus();
}

// The tool_use input: a JSON object of at most kMaxInputBytes.
absl::StatusOr<json> ParseInput(const std::string& input_json) {
  if (input_json.size() > kMaxInputBytes) {
    return absl::InvalidArgumentError("computer.input_json: larger than 1 MiB");
  }
  json input;
  try {
    input = json::parse(input_json);
  } catch (const json::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrCat("computer.input_json: not JSON: ", e.what()));
  }
  if (!input.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("computer.input_json: must be a JSON object (the tool_use input), not ", input.type_name()));
  }
  return input;
}

// The input's action, known to tool version `version`, with no parameter it does not take.
absl::StatusOr<const ActionInfo*> CheckAction(const json& input, int version) {
  const std::vector<std::string>& versions = ComputerToolVersions();
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
  return info;
}

}  // namespace

const std::vector<std::string>& ComputerToolVersions() {
  static const std::vector<std::string> kVersions = {"computer_20241022", "computer_20250124", "computer_20251124"};
  return kVersions;
}

absl::StatusOr<ComputerPlan> PlanComputerUse(const pb::ComputerUse& call) {
  ASSIGN_OR_RETURN(const int version, ToolVersionOf(call, ComputerToolVersions()));
  const uint32_t width = call.display_width_px(), height = call.display_height_px();
  RETURN_IF_ERROR(CheckDeclaredDisplay(width, height));
  ASSIGN_OR_RETURN(const json input, ParseInput(call.input_json()));
  ASSIGN_OR_RETURN(const ActionInfo* info, CheckAction(input, version));

  const Input in(input, width, height);
  ComputerPlan plan;
  plan.action = info->name;
  pb::DesktopAction base;
  if (width != 0) {
    base.mutable_space()->set_width(width);
    base.mutable_space()->set_height(height);
  }
  const ComputerPlan::Show after =
      call.skip_screenshot() ? ComputerPlan::Show::kNothing : ComputerPlan::Show::kScreenshot;
  Planner planner{in, info->name, base, after, plan};
  RETURN_IF_ERROR(info->plan(planner));
  return plan;
}

}  // namespace sbx::agent
