// The desktop driver's X connection (desktop.cc, desktop_screen.cc, desktop_input.cc): what Start read from
// the server and the requests every part sends. NOTE: for those files only; desktop.h is the driver's
// interface.
#ifndef SBX_SANDBOX_INIT_DRIVERS_X_CONNECTION_H_
#define SBX_SANDBOX_INIT_DRIVERS_X_CONNECTION_H_

#include <poll.h>
#include <xcb/xcb.h>
#include <xcb/xcbext.h>  // xcb_poll_for_reply
#include <xcb/xtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/driver_util.h"

namespace sbx::init {

inline constexpr int kReplyTimeoutMs = 10000;  // any one reply of the X server
inline constexpr int kRebindQuietMs = 100;     // a spare keycode is rebound only this long after its last use

struct FreeDeleter {
  void operator()(void* p) const { free(p); }
};
template <typename T>
using XPtr = std::unique_ptr<T, FreeDeleter>;

// "0x1f" (a keysym, for messages).
inline std::string Hex(uint32_t v) {
  char buf[16];
  snprintf(buf, sizeof(buf), "0x%x", v);
  return buf;
}

// The root window's pixel format.
struct PixelFormat {
  uint32_t bits_per_pixel = 0, scanline_pad = 0;
  bool msb_first = false;
  uint32_t red_mask = 0, green_mask = 0, blue_mask = 0;
};

// The xcb connection and what Start read from the server: the root window, its pixel format, the keyboard
// mapping (kept current) and the spare keycodes Type binds characters to.
class XConnection {
 public:
  ~XConnection() {
    if (c_ != nullptr) xcb_disconnect(c_);
  }

  xcb_connection_t* c_ = nullptr;
  xcb_window_t root_ = 0;
  PixelFormat format_;
  uint8_t depth_ = 0;
  xcb_keycode_t min_keycode_ = 0, max_keycode_ = 0;
  uint8_t per_ = 0;                    // keysyms per keycode
  std::vector<xcb_keysym_t> keysyms_;  // (max - min + 1) * per_
  bool keymap_stale_ = false;          // a MappingNotify arrived
  std::string x_error_;                // the first X error of an unchecked request since the last Sync

  struct Spare {
    xcb_keycode_t keycode;
    uint32_t keysym = 0;   // bound to, 0 if none
    uint64_t stamp = 0;    // last use (a counter), for least-recently-used rebinding
    int64_t used_ms = 0;   // last use (monotonic ms)
  };
  std::vector<Spare> spares_;
  uint64_t clock_ = 0;

  bool broken() const { return c_ == nullptr || xcb_connection_has_error(c_) != 0; }

  // Waits (<= kReplyTimeoutMs) for the reply to request `seq`; the caller frees it.
  bool Await(unsigned seq, void** reply, const char* what, std::string* error) {
    if (xcb_flush(c_) <= 0) {
      *error = std::string(what) + ": the X connection broke";
      return false;
    }
    const int64_t deadline = internal::NowMs() + kReplyTimeoutMs;
    for (;;) {
      void* r = nullptr;
      xcb_generic_error_t* e = nullptr;
      if (xcb_poll_for_reply(c_, seq, &r, &e)) {
        if (r != nullptr) {
          *reply = r;
          return true;
        }
        if (e != nullptr) {
          *error = std::string(what) + ": X error " + std::to_string(e->error_code);
          free(e);
        } else {
          *error = std::string(what) + ": the X connection broke";
        }
        return false;
      }
      if (broken()) {
        *error = std::string(what) + ": the X connection broke";
        return false;
      }
      const int64_t left = deadline - internal::NowMs();
      if (left <= 0) {
        xcb_discard_reply(c_, seq);
        *error = std::string(what) + ": the X server did not answer within " +
                 std::to_string(kReplyTimeoutMs / 1000) + " s";
        return false;
      }
      pollfd p{xcb_get_file_descriptor(c_), POLLIN, 0};
      poll(&p, 1, static_cast<int>(left));
    }
  }

  template <typename T>
  bool AwaitTyped(unsigned seq, XPtr<T>* out, const char* what, std::string* error) {
    void* r = nullptr;
    if (!Await(seq, &r, what, error)) return false;
    out->reset(static_cast<T*>(r));
    return true;
  }

  // Reads queued events: notes keyboard MappingNotify and the first X error (of an unchecked request).
  void DrainEvents() {
    while (xcb_generic_event_t* ev = xcb_poll_for_event(c_)) {
      const uint8_t type = ev->response_type & 0x7f;
      if (type == 0) {
        auto* e = reinterpret_cast<xcb_generic_error_t*>(ev);
        if (x_error_.empty()) {
          x_error_ = "X error " + std::to_string(e->error_code) + " (request " +
                     std::to_string(e->major_code) + "." + std::to_string(e->minor_code) + ")";
        }
      } else if (type == XCB_MAPPING_NOTIFY) {
        auto* m = reinterpret_cast<xcb_mapping_notify_event_t*>(ev);
        if (m->request == XCB_MAPPING_KEYBOARD) keymap_stale_ = true;
      }
      free(ev);
    }
  }

  bool LoadKeymap(std::string* error) {
    const uint8_t count = static_cast<uint8_t>(max_keycode_ - min_keycode_ + 1);
    XPtr<xcb_get_keyboard_mapping_reply_t> r;
    if (!AwaitTyped(xcb_get_keyboard_mapping(c_, min_keycode_, count).sequence, &r, "reading the keyboard mapping",
                    error)) {
      return false;
    }
    per_ = r->keysyms_per_keycode;
    const xcb_keysym_t* syms = xcb_get_keyboard_mapping_keysyms(r.get());
    const int n = xcb_get_keyboard_mapping_keysyms_length(r.get());
    if (per_ == 0 || n < static_cast<int>(count) * per_) {
      *error = "reading the keyboard mapping: a short reply";
      return false;
    }
    keysyms_.assign(syms, syms + static_cast<size_t>(count) * per_);
    keymap_stale_ = false;
    return true;
  }

  const xcb_keysym_t* SymsOf(xcb_keycode_t kc) const {
    return keysyms_.data() + static_cast<size_t>(kc - min_keycode_) * per_;
  }

  // Keycodes with no keysym at all: the spares characters are bound to. Kept across reloads when they still
  // hold our binding.
  void FindSpares() {
    std::vector<Spare> spares;
    for (int kc = min_keycode_; kc <= max_keycode_; ++kc) {
      const xcb_keysym_t* s = SymsOf(static_cast<xcb_keycode_t>(kc));
      const auto old = std::find_if(spares_.begin(), spares_.end(), [&](const Spare& sp) { return sp.keycode == kc; });
      bool empty = true;
      for (int i = 0; i < per_; ++i) empty = empty && s[i] == 0;
      if (empty) {
        spares.push_back(Spare{static_cast<xcb_keycode_t>(kc)});
        if (old != spares_.end()) spares.back().stamp = old->stamp, spares.back().used_ms = old->used_ms;
      } else if (old != spares_.end() && old->keysym != 0 && s[0] == old->keysym) {
        spares.push_back(*old);
      }
    }
    spares_ = std::move(spares);
  }

  bool RefreshKeymap(std::string* error) {
    DrainEvents();
    if (!keymap_stale_) return true;
    if (!LoadKeymap(error)) return false;
    FindSpares();
    return true;
  }

  struct Stroke {
    xcb_keycode_t keycode = 0;
    bool shift = false;
  };

  // The keycode (and Shift) that types `keysym` in the first group: column 0 of any keycode, else column 1.
  std::optional<Stroke> Find(uint32_t keysym) const {
    if (keysym == 0) return std::nullopt;
    for (int col = 0; col < std::min<int>(2, per_); ++col) {
      for (int kc = min_keycode_; kc <= max_keycode_; ++kc) {
        if (SymsOf(static_cast<xcb_keycode_t>(kc))[col] == keysym) {
          return Stroke{static_cast<xcb_keycode_t>(kc), col == 1};
        }
      }
    }
    return std::nullopt;
  }

  void Touch(xcb_keycode_t kc) {
    for (Spare& s : spares_) {
      if (s.keycode == kc) {
        s.stamp = ++clock_;
        s.used_ms = internal::NowMs();
      }
    }
  }

  // Binds `keysym` to the least recently used spare keycode not in `busy` (both levels, so Shift does not
  // matter). A keycode used less than kRebindQuietMs ago is rebound only after that long, after a round trip,
  // so clients have read the events it sent under its old binding.
  bool Bind(uint32_t keysym, const std::vector<xcb_keycode_t>& busy, Stroke* out, std::string* error) {
    Spare* pick = nullptr;
    for (Spare& s : spares_) {
      if (std::find(busy.begin(), busy.end(), s.keycode) != busy.end()) continue;
      if (pick == nullptr || s.stamp < pick->stamp) pick = &s;
    }
    if (pick == nullptr) {
      *error = "no spare keycode to bind keysym " + Hex(keysym) + " to";
      return false;
    }
    if (pick->keysym != 0) {
      const int64_t wait = pick->used_ms + kRebindQuietMs - internal::NowMs();
      if (wait > 0) {
        if (!Sync(error)) return false;
        internal::SleepMs(static_cast<int>(std::min<int64_t>(wait, kRebindQuietMs)));
      }
    }
    std::vector<xcb_keysym_t> syms(per_, 0);
    syms[0] = keysym;
    if (per_ > 1) syms[1] = keysym;
    xcb_change_keyboard_mapping(c_, 1, pick->keycode, per_, syms.data());
    std::copy(syms.begin(), syms.end(), keysyms_.begin() + static_cast<ptrdiff_t>(pick->keycode - min_keycode_) * per_);
    pick->keysym = keysym;
    *out = Stroke{pick->keycode, false};
    return true;
  }

  bool Locate(uint32_t keysym, const std::vector<xcb_keycode_t>& busy, Stroke* out, std::string* error) {
    if (std::optional<Stroke> s = Find(keysym)) {
      *out = *s;
      return true;
    }
    return Bind(keysym, busy, out, error);
  }

  void FakeKey(bool press, xcb_keycode_t kc) {
    xcb_test_fake_input(c_, press ? XCB_KEY_PRESS : XCB_KEY_RELEASE, kc, XCB_CURRENT_TIME, XCB_NONE, 0, 0, 0);
    if (!press) Touch(kc);
  }
  void FakeButton(bool press, uint8_t button) {
    xcb_test_fake_input(c_, press ? XCB_BUTTON_PRESS : XCB_BUTTON_RELEASE, button, XCB_CURRENT_TIME, XCB_NONE, 0, 0,
                        0);
  }
  void FakeMotion(int x, int y) {
    xcb_test_fake_input(c_, XCB_MOTION_NOTIFY, 0, XCB_CURRENT_TIME, root_, static_cast<int16_t>(x),
                        static_cast<int16_t>(y), 0);
  }

  // A round trip: everything sent before was processed. Fails on an X error of an unchecked request.
  bool Sync(std::string* error) {
    XPtr<xcb_get_input_focus_reply_t> r;
    if (!AwaitTyped(xcb_get_input_focus(c_).sequence, &r, "waiting for the X server", error)) return false;
    DrainEvents();
    if (!x_error_.empty()) {
      *error = std::exchange(x_error_, "");
      return false;
    }
    return true;
  }
};

}  // namespace sbx::init

#endif  // SBX_SANDBOX_INIT_DRIVERS_X_CONNECTION_H_
