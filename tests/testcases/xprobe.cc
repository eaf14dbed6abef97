// xprobe: an X program for the desktop tests. It covers the whole screen with a window in four quadrants (top
// left red 0xFF0000, top right green 0x00FF00, bottom left blue 0x0000FF, bottom right white; the left/top
// quadrants are width/2 x height/2, the others take the remainder), keeps the keyboard focus, and logs the
// input it receives, one flushed line per event:
//   ready WxH                                 once mapped, exposed and drawn
//   press button=N x=X y=Y state=0xS         ButtonPress (release: "release ...")
//   motion x=X y=Y state=0xS                 with --motion only
//   key keysym=0xK text=UTF8 state=0xS       KeyPress (KeyRelease: "keyrelease ..."); the keysym comes from the
//                                            current keyboard mapping (refreshed on MappingNotify), Shift
//                                            choosing the second column
// state is the event's modifier and button mask (Shift 0x1, Control 0x4, Mod1 0x8, Button1 0x100, ...): what
// was held when the event happened. With --time every event line ends in " time=T": the X server's timestamp
// of the event, in milliseconds.
// Usage: xprobe [--log FILE] [--motion] [--time]. Connects to $DISPLAY; exits on SIGTERM or when the connection closes.
#include <xcb/xcb.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "sandbox/init/drivers/keysyms.h"

namespace {

struct Keymap {
  xcb_keycode_t min = 0, max = 0;
  uint8_t per = 0;
  std::vector<xcb_keysym_t> syms;

  bool Load(xcb_connection_t* c) {
    const xcb_setup_t* setup = xcb_get_setup(c);
    min = setup->min_keycode;
    max = setup->max_keycode;
    xcb_get_keyboard_mapping_reply_t* r = xcb_get_keyboard_mapping_reply(
        c, xcb_get_keyboard_mapping(c, min, static_cast<uint8_t>(max - min + 1)), nullptr);
    if (r == nullptr) return false;
    per = r->keysyms_per_keycode;
    const xcb_keysym_t* k = xcb_get_keyboard_mapping_keysyms(r);
    syms.assign(k, k + xcb_get_keyboard_mapping_keysyms_length(r));
    free(r);
    return true;
  }

  // The core protocol's rule for group 1: column 1 with Shift, column 0 without; an empty column 1 repeats
  // column 0 (upper-cased for a letter).
  xcb_keysym_t Lookup(xcb_keycode_t kc, uint16_t state) const {
    if (kc < min || kc > max || per == 0) return 0;
    const size_t at = static_cast<size_t>(kc - min) * per;
    if (at + per > syms.size()) return 0;
    const xcb_keysym_t lower = syms[at];
    xcb_keysym_t upper = per > 1 ? syms[at + 1] : 0;
    if (upper == 0) upper = (lower >= 'a' && lower <= 'z') ? lower - 'a' + 'A' : lower;
    return (state & XCB_MOD_MASK_SHIFT) ? upper : lower;
  }
};

uint32_t PixelOf(const xcb_visualtype_t* v, uint32_t rgb) {
  auto channel = [](uint32_t mask, uint32_t value8) -> uint32_t {
    if (mask == 0) return 0;
    const int shift = __builtin_ctz(mask);
    const uint32_t max = mask >> shift;
    return ((value8 * max + 127) / 255) << shift;
  };
  return channel(v->red_mask, (rgb >> 16) & 0xff) | channel(v->green_mask, (rgb >> 8) & 0xff) |
         channel(v->blue_mask, rgb & 0xff);
}

std::string TimeField(bool with_time, xcb_timestamp_t t) {
  return with_time ? " time=" + std::to_string(t) : std::string();
}

}  // namespace

int main(int argc, char** argv) {
  const char* log_path = nullptr;
  bool motion = false;
  bool with_time = false;
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--log") == 0 && i + 1 < argc) {
      log_path = argv[++i];
    } else if (strcmp(argv[i], "--motion") == 0) {
      motion = true;
    } else if (strcmp(argv[i], "--time") == 0) {
      with_time = true;
    } else {
      fprintf(stderr, "usage: xprobe [--log FILE] [--motion] [--time]\n");
      return 2;
    }
  }
  FILE* log = stdout;
  if (log_path != nullptr) {
    log = fopen(log_path, "w");
    if (log == nullptr) {
      perror(log_path);
      return 1;
    }
  }
  setvbuf(log, nullptr, _IOLBF, 0);

  int screen_number = 0;
  xcb_connection_t* c = xcb_connect(nullptr, &screen_number);
  if (xcb_connection_has_error(c)) {
    fprintf(stderr, "xprobe: cannot connect to DISPLAY=%s\n", getenv("DISPLAY") ? getenv("DISPLAY") : "");
    return 1;
  }
  xcb_screen_iterator_t screens = xcb_setup_roots_iterator(xcb_get_setup(c));
  for (int i = 0; i < screen_number; ++i) xcb_screen_next(&screens);
  const xcb_screen_t* screen = screens.data;
  const xcb_visualtype_t* visual = nullptr;
  for (auto d = xcb_screen_allowed_depths_iterator(screen); d.rem > 0; xcb_depth_next(&d)) {
    for (auto v = xcb_depth_visuals_iterator(d.data); v.rem > 0; xcb_visualtype_next(&v)) {
      if (v.data->visual_id == screen->root_visual) visual = v.data;
    }
  }
  if (visual == nullptr) {
    fprintf(stderr, "xprobe: no root visual\n");
    return 1;
  }
  const uint16_t w = screen->width_in_pixels, h = screen->height_in_pixels;
  Keymap keymap;
  if (!keymap.Load(c)) {
    fprintf(stderr, "xprobe: cannot read the keyboard mapping\n");
    return 1;
  }

  const xcb_window_t win = xcb_generate_id(c);
  uint32_t events = XCB_EVENT_MASK_EXPOSURE | XCB_EVENT_MASK_BUTTON_PRESS | XCB_EVENT_MASK_BUTTON_RELEASE |
                    XCB_EVENT_MASK_KEY_PRESS | XCB_EVENT_MASK_KEY_RELEASE | XCB_EVENT_MASK_STRUCTURE_NOTIFY;
  if (motion) events |= XCB_EVENT_MASK_POINTER_MOTION;
  const uint32_t values[] = {screen->black_pixel, 1 /* override-redirect */, events};
  xcb_create_window(c, XCB_COPY_FROM_PARENT, win, screen->root, 0, 0, w, h, 0, XCB_WINDOW_CLASS_INPUT_OUTPUT,
                    screen->root_visual, XCB_CW_BACK_PIXEL | XCB_CW_OVERRIDE_REDIRECT | XCB_CW_EVENT_MASK, values);
  const xcb_gcontext_t gc = xcb_generate_id(c);
  xcb_create_gc(c, gc, win, 0, nullptr);
  xcb_map_window(c, win);
  const uint32_t above[] = {XCB_STACK_MODE_ABOVE};
  xcb_configure_window(c, win, XCB_CONFIG_WINDOW_STACK_MODE, above);
  xcb_flush(c);

  const uint16_t hw = w / 2, hh = h / 2;
  struct Quadrant {
    uint32_t rgb;
    xcb_rectangle_t r;
  };
  const Quadrant quadrants[] = {
      {0xFF0000, {0, 0, hw, hh}},
      {0x00FF00, {static_cast<int16_t>(hw), 0, static_cast<uint16_t>(w - hw), hh}},
      {0x0000FF, {0, static_cast<int16_t>(hh), hw, static_cast<uint16_t>(h - hh)}},
      {0xFFFFFF, {static_cast<int16_t>(hw), static_cast<int16_t>(hh), static_cast<uint16_t>(w - hw),
                  static_cast<uint16_t>(h - hh)}},
  };
  auto draw = [&] {
    for (const Quadrant& q : quadrants) {
      const uint32_t pixel = PixelOf(visual, q.rgb);
      xcb_change_gc(c, gc, XCB_GC_FOREGROUND, &pixel);
      xcb_poly_fill_rectangle(c, win, gc, 1, &q.r);
    }
  };

  bool mapped = false, exposed = false, ready = false;
  while (xcb_generic_event_t* ev = xcb_wait_for_event(c)) {
    switch (ev->response_type & 0x7f) {
      case XCB_MAP_NOTIFY:
        mapped = true;
        xcb_set_input_focus(c, XCB_INPUT_FOCUS_POINTER_ROOT, win, XCB_CURRENT_TIME);
        break;
      case XCB_EXPOSE:
        exposed = true;
        draw();
        break;
      case XCB_BUTTON_PRESS:
      case XCB_BUTTON_RELEASE: {
        auto* b = reinterpret_cast<xcb_button_press_event_t*>(ev);
        fprintf(log, "%s button=%u x=%d y=%d state=0x%x%s\n",
                (ev->response_type & 0x7f) == XCB_BUTTON_PRESS ? "press" : "release", b->detail, b->root_x,
                b->root_y, b->state, TimeField(with_time, b->time).c_str());
        break;
      }
      case XCB_MOTION_NOTIFY: {
        auto* m = reinterpret_cast<xcb_motion_notify_event_t*>(ev);
        fprintf(log, "motion x=%d y=%d state=0x%x%s\n", m->root_x, m->root_y, m->state,
                TimeField(with_time, m->time).c_str());
        break;
      }
      case XCB_KEY_PRESS:
      case XCB_KEY_RELEASE: {
        auto* k = reinterpret_cast<xcb_key_press_event_t*>(ev);
        const xcb_keysym_t keysym = keymap.Lookup(k->detail, k->state);
        std::string text;
        if (const uint32_t cp = sbx::init::KeysymToCodepoint(keysym); cp >= 0x20) sbx::init::AppendUtf8(cp, &text);
        fprintf(log, "%s keysym=0x%x text=%s state=0x%x%s\n",
                (ev->response_type & 0x7f) == XCB_KEY_PRESS ? "key" : "keyrelease", keysym, text.c_str(), k->state,
                TimeField(with_time, k->time).c_str());
        break;
      }
      case XCB_MAPPING_NOTIFY: {
        auto* m = reinterpret_cast<xcb_mapping_notify_event_t*>(ev);
        if (m->request == XCB_MAPPING_KEYBOARD) keymap.Load(c);
        break;
      }
      default:
        break;
    }
    free(ev);
    if (mapped && exposed && !ready) {
      // A round trip: the drawing is done (and the focus set) before anyone is told.
      free(xcb_get_input_focus_reply(c, xcb_get_input_focus(c), nullptr));
      ready = true;
      fprintf(log, "ready %ux%u\n", w, h);
    }
    xcb_flush(c);
  }
  return 0;
}
