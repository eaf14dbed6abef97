// The desktop's input, injected with XTEST: the pointer (move, click, buttons, drag, scroll), keys and chords
// (xdotool's names), held keys, and typed text (characters bound to spare keycodes when the keymap lacks them).
#include <poll.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/desktop.h"
#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/drivers/keysyms.h"
#include "sandbox/init/drivers/x_connection.h"

namespace sbx::init {
namespace {

// Keysyms (keysymdef.h).
constexpr uint32_t kXkReturn = 0xff0d, kXkTab = 0xff09;
constexpr uint32_t kXkShiftL = 0xffe1, kXkControlL = 0xffe3, kXkAltL = 0xffe9, kXkSuperL = 0xffeb;
constexpr uint32_t kXkIsoLevel3Shift = 0xfe03;

using internal::NowMs;

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

// ---- Chords ----

// Modifier and alias names of Key(), lower case.
struct KeyAlias {
  const char* name;
  uint32_t keysym;
};
constexpr KeyAlias kKeyAliases[] = {
    {"ctrl", kXkControlL},  {"control", kXkControlL}, {"shift", kXkShiftL},   {"alt", kXkAltL},
    {"super", kXkSuperL},   {"win", kXkSuperL},       {"windows", kXkSuperL}, {"meta", kXkSuperL},
    {"cmd", kXkSuperL},     {"command", kXkSuperL},   {"altgr", kXkIsoLevel3Shift},
    {"enter", kXkReturn},   {"esc", 0xff1b},          {"del", 0xffff},        {"ins", 0xff63},
    {"pgup", 0xff55},       {"pageup", 0xff55},       {"pgdn", 0xff56},       {"pagedown", 0xff56},
    {"caps", 0xffe5},       {"capslock", 0xffe5},     {"numlock", 0xff7f},    {"spacebar", 0x20},
    {"arrowup", 0xff52},    {"arrowdown", 0xff54},    {"arrowleft", 0xff51},  {"arrowright", 0xff53},
    {"printscreen", 0xff61}, {"prtsc", 0xff61},
};

std::optional<uint32_t> ChordKeysym(std::string_view name) {
  const std::string lower = ToLower(name);
  for (const KeyAlias& a : kKeyAliases) {
    if (lower == a.name) return a.keysym;
  }
  return KeysymFromName(name);
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Splits "ctrl+shift+t" into names; "+" on its own ("ctrl++", "+") is the plus key.
bool SplitChord(std::string_view chord, std::vector<std::string>* names, std::string* error) {
  const std::string_view trimmed = Trim(chord);
  if (trimmed.empty()) {
    *error = "key: the chord is empty";
    return false;
  }
  std::vector<std::string> parts;
  size_t start = 0;
  for (;;) {
    const size_t plus = trimmed.find('+', start);
    parts.emplace_back(Trim(trimmed.substr(start, plus == std::string_view::npos ? plus : plus - start)));
    if (plus == std::string_view::npos) break;
    start = plus + 1;
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].empty()) {
      names->push_back(parts[i]);
    } else if (i + 1 < parts.size() && parts[i + 1].empty() && (i + 2 == parts.size())) {
      names->push_back("plus");  // "ctrl++" and "+"
      break;
    } else {
      *error = "key: an empty key name in " + Quote(chord);
      return false;
    }
  }
  return true;
}


}  // namespace

bool Desktop::MouseMove(Point p, std::string* error) {
  if (!Check(error) || !CheckPoint(p, error)) return false;
  x_->FakeMotion(p.x, p.y);
  return Sync(error);
}

bool Desktop::Click(Button b, int count, std::optional<Point> at, std::string_view modifiers,
                    std::string* error) {
  if (!Check(error)) return false;
  if (count < 1 || count > 3) {
    *error = "click: the count " + std::to_string(count) + " is outside 1..3";
    return false;
  }
  const int button = static_cast<int>(b);
  if (button < 1 || button > 3) {
    *error = "click: unknown button " + std::to_string(button);
    return false;
  }
  return PressButton(static_cast<uint8_t>(button), count, at, modifiers, "click: modifiers", error);
}

bool Desktop::MouseButton(Button b, bool down, std::optional<Point> at, std::string* error) {
  if (!Check(error)) return false;
  const int button = static_cast<int>(b);
  if (button < 1 || button > 3) {
    *error = std::string(down ? "mouse down" : "mouse up") + ": unknown button " + std::to_string(button);
    return false;
  }
  if (at && !CheckPoint(*at, error)) return false;
  if (at) x_->FakeMotion(at->x, at->y);
  // The server's word on whether the button is down (a click or drag since, or another client, may have
  // changed it), read after the move was processed.
  XPtr<xcb_query_pointer_reply_t> r;
  std::string e;
  if (!x_->AwaitTyped(xcb_query_pointer(x_->c_, x_->root_).sequence, &r, "mouse button: QueryPointer", &e)) {
    return Fail(e, error);
  }
  const bool held = (r->mask & (XCB_BUTTON_MASK_1 << (button - 1))) != 0;
  if (down != held) x_->FakeButton(down, static_cast<uint8_t>(button));
  return Sync(error);
}

bool Desktop::Drag(Point from, Point to, std::string* error) {
  if (!Check(error) || !CheckPoint(from, error) || !CheckPoint(to, error)) return false;
  constexpr int kSteps = 8;
  x_->FakeMotion(from.x, from.y);
  x_->FakeButton(true, 1);
  // A round trip between the steps: applications see the press and each motion as separate moments.
  if (!Sync(error)) return false;
  for (int i = 1; i <= kSteps; ++i) {
    x_->FakeMotion(from.x + (to.x - from.x) * i / kSteps, from.y + (to.y - from.y) * i / kSteps);
    if (!Sync(error)) return false;
  }
  x_->FakeButton(false, 1);
  return Sync(error);
}

bool Desktop::Scroll(ScrollDirection d, int amount, std::optional<Point> at, std::string_view modifiers,
                     std::string* error) {
  if (!Check(error)) return false;
  if (amount < 1 || amount > 100) {
    *error = "scroll: the amount " + std::to_string(amount) + " is outside 1..100";
    return false;
  }
  uint8_t button;
  switch (d) {
    case ScrollDirection::kUp: button = 4; break;
    case ScrollDirection::kDown: button = 5; break;
    case ScrollDirection::kLeft: button = 6; break;
    case ScrollDirection::kRight: button = 7; break;
    default:
      *error = "scroll: unknown direction";
      return false;
  }
  return PressButton(button, amount, at, modifiers, "scroll: modifiers", error);
}

bool Desktop::PressButton(uint8_t button, int times, std::optional<Point> at, std::string_view modifiers,
                          std::string_view what, std::string* error) {
  if (at && !CheckPoint(*at, error)) return false;
  if (at) x_->FakeMotion(at->x, at->y);
  std::vector<uint8_t> held;
  if (!modifiers.empty()) {
    if (!PressChord(modifiers, what, &held, error)) {
      ReleaseKeys(&held);
      std::string e;
      Sync(&e);
      return false;
    }
  }
  for (int i = 0; i < times; ++i) {
    x_->FakeButton(true, button);
    x_->FakeButton(false, button);
  }
  ReleaseKeys(&held);
  return Sync(error);
}

bool Desktop::PressChord(std::string_view chord, std::string_view what, std::vector<uint8_t>* pressed,
                         std::string* error) {
  const std::string prefix = std::string(what) + ": ";
  std::vector<std::string> names;
  if (!SplitChord(chord, &names, error)) {
    *error = prefix + error->substr(error->find(": ") + 2);  // SplitChord says "key: ..."
    return false;
  }
  std::vector<uint32_t> keysyms;
  for (const std::string& name : names) {
    const std::optional<uint32_t> keysym = ChordKeysym(name);
    if (!keysym) {
      *error = prefix + "unknown key name " + Quote(name) + (names.size() > 1 ? " in " + Quote(chord) : "");
      return false;
    }
    keysyms.push_back(*keysym);
  }
  XConnection& x = *x_;
  std::string e;
  if (!x.RefreshKeymap(&e)) return Fail(prefix + e, error);
  const std::optional<XConnection::Stroke> shift = x.Find(kXkShiftL);
  for (uint32_t keysym : keysyms) {
    XConnection::Stroke s;
    if (!x.Locate(keysym, *pressed, &s, &e)) return Fail(prefix + e, error);
    if (s.shift && shift && std::find(pressed->begin(), pressed->end(), shift->keycode) == pressed->end()) {
      x.FakeKey(true, shift->keycode);
      pressed->push_back(shift->keycode);
    }
    if (std::find(pressed->begin(), pressed->end(), s.keycode) != pressed->end()) continue;  // "shift+shift"
    x.FakeKey(true, s.keycode);
    pressed->push_back(s.keycode);
  }
  return true;
}

void Desktop::ReleaseKeys(std::vector<uint8_t>* pressed) {
  if (x_ == nullptr) return;
  for (auto it = pressed->rbegin(); it != pressed->rend(); ++it) x_->FakeKey(false, *it);
  pressed->clear();
}

bool Desktop::Key(std::string_view chord, std::string* error) {
  if (!Check(error)) return false;
  // Press in order (Shift first for a keysym on the shifted level), release in reverse.
  std::vector<uint8_t> pressed;
  const bool ok = PressChord(chord, "key", &pressed, error);
  ReleaseKeys(&pressed);
  std::string e;
  if (!ok) {
    Sync(&e);
    return false;
  }
  return Sync(error);
}

bool Desktop::HoldKey(std::string_view chord, int duration_ms, int cancel_fd, std::string* error) {
  if (!Check(error)) return false;
  if (duration_ms < 0 || duration_ms > kMaxHoldMs) {
    *error = "hold_key: the duration " + std::to_string(duration_ms) + " ms is outside 0.." +
             std::to_string(kMaxHoldMs);
    return false;
  }
  std::vector<uint8_t> pressed;
  // NOTE: every way out below releases what was pressed: a key left down would stay down for the session.
  if (!PressChord(chord, "hold_key", &pressed, error) || !Sync(error)) {
    ReleaseKeys(&pressed);
    std::string e;
    Sync(&e);
    return false;
  }
  const int64_t until = NowMs() + duration_ms;
  for (;;) {
    const int64_t left = until - NowMs();
    if (left <= 0) break;
    pollfd p{cancel_fd, POLLIN, 0};
    const int n = poll(&p, cancel_fd >= 0 ? 1 : 0, static_cast<int>(left));
    if (n > 0) break;  // the server is stopping: release now
  }
  ReleaseKeys(&pressed);
  return Sync(error);
}

bool Desktop::Type(std::string_view utf8, std::string* error) {
  if (!Check(error)) return false;
  // Decode and check everything before sending anything.
  std::vector<uint32_t> keysyms;
  for (size_t i = 0; i < utf8.size();) {
    uint32_t cp = 0;
    const size_t n = DecodeUtf8(utf8.substr(i), &cp);
    if (n == 0) {
      *error = "type: the text is not valid UTF-8 (at byte " + std::to_string(i) + ")";
      return false;
    }
    i += n;
    if (cp == '\r' && i < utf8.size() && utf8[i] == '\n') continue;  // "\r\n" is one Return
    if (cp == '\n' || cp == '\r') {
      keysyms.push_back(kXkReturn);
    } else if (cp == '\t') {
      keysyms.push_back(kXkTab);
    } else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
      *error = "type: cannot type the control character " + Hex(cp);
      return false;
    } else {
      keysyms.push_back(KeysymForCodepoint(cp));
    }
  }
  XConnection& x = *x_;
  std::string e;
  if (!x.RefreshKeymap(&e)) return Fail("type: " + e, error);
  const std::optional<XConnection::Stroke> shift = x.Find(kXkShiftL);
  for (uint32_t keysym : keysyms) {
    XConnection::Stroke s;
    if (!x.Locate(keysym, {}, &s, &e)) return Fail("type: " + e, error);
    if (s.shift && shift) x.FakeKey(true, shift->keycode);
    x.FakeKey(true, s.keycode);
    x.FakeKey(false, s.keycode);
    if (s.shift && shift) x.FakeKey(false, shift->keycode);
  }
  return Sync(error);
}

bool Desktop::CursorPosition(Point* out, std::string* error) {
  if (!Check(error)) return false;
  XPtr<xcb_query_pointer_reply_t> r;
  std::string e;
  if (!x_->AwaitTyped(xcb_query_pointer(x_->c_, x_->root_).sequence, &r, "cursor position: QueryPointer", &e)) {
    return Fail(e, error);
  }
  out->x = r->root_x;
  out->y = r->root_y;
  return true;
}


}  // namespace sbx::init
