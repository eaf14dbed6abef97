#include "sandbox/init/drivers/desktop.h"

#include <fcntl.h>
#include <png.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xcb/xcb.h>
#include <xcb/xcbext.h>  // xcb_poll_for_reply
#include <xcb/xtest.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <csetjmp>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/drivers/keysyms.h"

namespace sbx::init {
namespace {

constexpr int kStartTimeoutMs = 10000;  // Xvfb ready, and the window manager managing the root window
constexpr int kReplyTimeoutMs = 10000;  // any one reply of the X server
constexpr int kTermGraceMs = 1000;      // between SIGTERM and SIGKILL
constexpr int kRebindQuietMs = 100;     // a spare keycode is rebound only this long after its last use
constexpr size_t kStripBytes = 16 << 20;  // the most pixel data one GetImage request asks for

// Keysyms (keysymdef.h).
constexpr uint32_t kXkReturn = 0xff0d, kXkTab = 0xff09;
constexpr uint32_t kXkShiftL = 0xffe1, kXkControlL = 0xffe3, kXkAltL = 0xffe9, kXkSuperL = 0xffeb;
constexpr uint32_t kXkIsoLevel3Shift = 0xfe03;

struct FreeDeleter {
  void operator()(void* p) const { free(p); }
};
template <typename T>
using XPtr = std::unique_ptr<T, FreeDeleter>;



using internal::DescribeStatus;
using internal::ErrnoMessage;
using internal::KillAndReap;
using internal::NowMs;
using internal::OutputTail;
using internal::SpawnInSession;
using internal::WaitExit;
using internal::SleepMs;

std::string Hex(uint32_t v) {
  char buf[16];
  snprintf(buf, sizeof(buf), "0x%x", v);
  return buf;
}

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

char Lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

// ---- Processes ----

// Whether an X server answers on display `n`'s socket (the file, or the abstract one of this network
// namespace). NOTE: Xvfb takes no lock file with -displayfd and replaces another server's socket file, so
// Start checks this first.
bool DisplayAnswers(int n) {
  const std::string path = "/tmp/.X11-unix/X" + std::to_string(n);
  for (bool abstract : {false, true}) {
    const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path + (abstract ? 1 : 0), path.data(), path.size());
    const socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 1 : 0));
    const bool answers = connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0;
    close(fd);
    if (answers) return true;
  }
  return false;
}

// ---- Pixels ----

struct PixelFormat {
  uint32_t bits_per_pixel = 0, scanline_pad = 0;
  bool msb_first = false;
  uint32_t red_mask = 0, green_mask = 0, blue_mask = 0;
};

struct Channel {
  int shift = 0;
  uint32_t max = 0;  // the largest value of the channel after the shift
};

Channel ChannelOf(uint32_t mask) {
  Channel c;
  if (mask == 0) return c;
  c.shift = __builtin_ctz(mask);
  c.max = mask >> c.shift;
  return c;
}

uint8_t Scale8(uint32_t v, uint32_t max) {
  return max == 255 ? static_cast<uint8_t>(v) : static_cast<uint8_t>((v * 255 + max / 2) / max);
}

// Converts `rows` rows of a ZPixmap image into packed RGB.
void ToRgb(const PixelFormat& f, const uint8_t* data, uint32_t stride, uint32_t width, uint32_t rows,
           uint8_t* rgb) {
  if (f.bits_per_pixel == 32 && !f.msb_first && f.red_mask == 0xff0000 && f.green_mask == 0xff00 &&
      f.blue_mask == 0xff) {
    for (uint32_t y = 0; y < rows; ++y) {
      const uint8_t* p = data + static_cast<size_t>(y) * stride;
      uint8_t* o = rgb + static_cast<size_t>(y) * width * 3;
      for (uint32_t x = 0; x < width; ++x, p += 4, o += 3) {
        o[0] = p[2];
        o[1] = p[1];
        o[2] = p[0];
      }
    }
    return;
  }
  const Channel r = ChannelOf(f.red_mask), g = ChannelOf(f.green_mask), b = ChannelOf(f.blue_mask);
  const uint32_t bytes = f.bits_per_pixel / 8;
  for (uint32_t y = 0; y < rows; ++y) {
    const uint8_t* p = data + static_cast<size_t>(y) * stride;
    uint8_t* o = rgb + static_cast<size_t>(y) * width * 3;
    for (uint32_t x = 0; x < width; ++x, p += bytes, o += 3) {
      uint32_t v = 0;
      for (uint32_t i = 0; i < bytes; ++i) {
        v |= static_cast<uint32_t>(f.msb_first ? p[i] : p[bytes - 1 - i]) << (8 * (bytes - 1 - i));
      }
      o[0] = r.max ? Scale8((v >> r.shift) & r.max, r.max) : 0;
      o[1] = g.max ? Scale8((v >> g.shift) & g.max, g.max) : 0;
      o[2] = b.max ? Scale8((v >> b.shift) & b.max, b.max) : 0;
    }
  }
}

// Area-average (box filter) weights from `src` samples to `dst` (< src): output i covers source
// [i*src/dst, (i+1)*src/dst); each source sample weighs its overlap. Weights are 14-bit fixed point and sum
// to exactly 1 << 14 per output, so a flat colour stays exact.
constexpr int kWeightBits = 14;
struct Taps {
  std::vector<uint32_t> first;     // per output: the first source index
  std::vector<uint32_t> count;     // per output: how many source samples
  std::vector<uint32_t> offset;    // per output: where its weights start in `weights`
  std::vector<uint32_t> weights;
};

Taps BoxTaps(uint32_t src, uint32_t dst) {
  Taps t;
  for (uint64_t i = 0; i < dst; ++i) {
    const uint64_t start = i * src, end = (i + 1) * src;  // in units of 1/dst source pixels
    const uint32_t first = static_cast<uint32_t>(start / dst);
    const uint32_t last = static_cast<uint32_t>((end - 1) / dst);
    t.first.push_back(first);
    t.count.push_back(last - first + 1);
    t.offset.push_back(static_cast<uint32_t>(t.weights.size()));
    uint32_t sum = 0, biggest = 0;
    const size_t at = t.weights.size();
    for (uint64_t j = first; j <= last; ++j) {
      const uint64_t overlap = std::min(end, (j + 1) * dst) - std::max(start, j * dst);
      const uint32_t w = static_cast<uint32_t>((overlap * (1u << kWeightBits) + src / 2) / src);
      t.weights.push_back(w);
      sum += w;
      if (w > t.weights[at + biggest]) biggest = static_cast<uint32_t>(j - first);
    }
    t.weights[at + biggest] += (1u << kWeightBits) - sum;  // rounding leftovers go to the largest tap
  }
  return t;
}

std::vector<uint8_t> ScaleDown(const std::vector<uint8_t>& rgb, uint32_t w, uint32_t h, uint32_t tw,
                               uint32_t th) {
  const Taps tx = BoxTaps(w, tw), ty = BoxTaps(h, th);
  // Horizontal pass into 8.8 fixed point, then vertical.
  std::vector<uint16_t> mid(static_cast<size_t>(h) * tw * 3);
  for (uint32_t y = 0; y < h; ++y) {
    const uint8_t* row = rgb.data() + static_cast<size_t>(y) * w * 3;
    uint16_t* o = mid.data() + static_cast<size_t>(y) * tw * 3;
    for (uint32_t x = 0; x < tw; ++x) {
      uint32_t acc[3] = {0, 0, 0};
      const uint8_t* p = row + static_cast<size_t>(tx.first[x]) * 3;
      const uint32_t* wt = tx.weights.data() + tx.offset[x];
      for (uint32_t k = 0; k < tx.count[x]; ++k, p += 3) {
        acc[0] += p[0] * wt[k];
        acc[1] += p[1] * wt[k];
        acc[2] += p[2] * wt[k];
      }
      for (int c = 0; c < 3; ++c) o[x * 3 + c] = static_cast<uint16_t>((acc[c] + 32) >> (kWeightBits - 8));
    }
  }
  std::vector<uint8_t> out(static_cast<size_t>(tw) * th * 3);
  std::vector<uint32_t> acc(static_cast<size_t>(tw) * 3);
  for (uint32_t y = 0; y < th; ++y) {
    std::fill(acc.begin(), acc.end(), 0);
    const uint32_t* wt = ty.weights.data() + ty.offset[y];
    for (uint32_t k = 0; k < ty.count[y]; ++k) {
      const uint16_t* row = mid.data() + static_cast<size_t>(ty.first[y] + k) * tw * 3;
      for (size_t i = 0; i < acc.size(); ++i) acc[i] += row[i] * wt[k];
    }
    uint8_t* o = out.data() + static_cast<size_t>(y) * tw * 3;
    constexpr int kShift = kWeightBits + 8;
    for (size_t i = 0; i < acc.size(); ++i) o[i] = static_cast<uint8_t>((acc[i] + (1u << (kShift - 1))) >> kShift);
  }
  return out;
}

// ---- PNG ----

struct PngState {
  std::string* out;
  char message[200];
};

void PngWrite(png_structp png, png_bytep data, size_t n) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    s->out->append(reinterpret_cast<const char*>(data), n);
  } catch (...) {
    ok = false;
  }
  if (!ok) png_error(png, "out of memory");
}

void PngFlush(png_structp) {}

void PngError(png_structp png, png_const_charp message) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  snprintf(s->message, sizeof(s->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

// NOTE: libpng reports errors by longjmp: nothing with a destructor lives in this frame past setjmp.
bool EncodePng(const uint8_t* rgb, uint32_t width, uint32_t height, std::string* out, std::string* error) {
  PngState state{out, {}};
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, PngError, PngWarning);
  if (png == nullptr) {
    *error = "png_create_write_struct failed";
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    *error = "png_create_info_struct failed";
    return false;
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    *error = std::string("encoding the PNG: ") + state.message;
    return false;
  }
  png_set_write_fn(png, &state, PngWrite, PngFlush);
  // Fast settings, measured on 1280x800 screens (xterms under twm; and with a photo-like quarter): zlib level 1
  // with the SUB filter takes 8 / 14 ms where the defaults (level 6, adaptive filters) take 23 / 78 ms, for
  // 13% more bytes. No filter is as fast on flat UI but 50% bigger on photos; Z_RLE gains nothing.
  png_set_compression_level(png, 1);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, PNG_FILTER_SUB);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_BASE,
               PNG_FILTER_TYPE_BASE);
  png_write_info(png, info);
  for (uint32_t y = 0; y < height; ++y) {
    png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return true;
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

// ---- The connection ----

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
    const int64_t deadline = NowMs() + kReplyTimeoutMs;
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
      const int64_t left = deadline - NowMs();
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
        s.used_ms = NowMs();
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
      const int64_t wait = pick->used_ms + kRebindQuietMs - NowMs();
      if (wait > 0) {
        if (!Sync(error)) return false;
        SleepMs(static_cast<int>(std::min<int64_t>(wait, kRebindQuietMs)));
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

// ---- Desktop ----

std::unique_ptr<Desktop> Desktop::Start(const DesktopConfig& config, std::string* error) {
  if (!internal::CheckScreenSize("display size", config.width, config.height, error)) {
    return nullptr;
  }
  if (config.display < 0 || config.display > 65535) {
    *error = "the display number " + std::to_string(config.display) + " is outside 0..65535";
    return nullptr;
  }
  if (config.xvfb_path.empty() || (config.window_manager && config.wm_path.empty())) {
    *error = "the Xvfb or window manager path is empty";
    return nullptr;
  }
  if (DisplayAnswers(config.display)) {
    *error = "the display :" + std::to_string(config.display) + " is in use: an X server answers on its socket";
    return nullptr;
  }
  std::unique_ptr<Desktop> d(new Desktop());
  d->display_ = config.display;
  d->width_ = config.width;
  d->height_ = config.height;
  // Xvfb's (and the window manager's) output goes to a memfd: nothing has to drain it, and its tail explains
  // a failure. Without memfd_create it goes to /dev/null.
  d->log_fd_ = internal::OutputMemfd("Xvfb");
  const std::string display = d->display_name();
  auto fail = [&](const std::string& message) -> std::unique_ptr<Desktop> {
    *error = message;
    const std::string tail = OutputTail(d->log_fd_);
    if (!tail.empty()) *error += " (Xvfb said: " + tail + ")";
    return nullptr;  // ~Desktop kills and reaps what was started
  };

  // Xvfb, telling us on a pipe when it accepts connections.
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return fail(ErrnoMessage("pipe2", errno));
  const std::string size = std::to_string(config.width) + "x" + std::to_string(config.height) + "x24";
  const std::vector<std::string> argv = {config.xvfb_path, display,  "-screen",  "0",        size,
                                         "-nolisten",      "tcp",    "-nolisten", "local",   "-noreset",
                                         "-displayfd",     std::to_string(ready[1])};
  std::string spawn_error;
  d->xvfb_pid_ = SpawnInSession(argv, config.env, d->log_fd_, {{ready[1], ready[1]}}, &spawn_error);
  close(ready[1]);
  if (d->xvfb_pid_ < 0) {
    close(ready[0]);
    return fail("starting Xvfb: " + spawn_error);
  }
  std::string line;
  const int64_t deadline = NowMs() + kStartTimeoutMs;
  for (;;) {
    const int64_t left = deadline - NowMs();
    pollfd p{ready[0], POLLIN, 0};
    const int n = left > 0 ? poll(&p, 1, static_cast<int>(left)) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(ready[0]);
      return fail(n == 0 ? "Xvfb was not ready within " + std::to_string(kStartTimeoutMs / 1000) + " s"
                         : ErrnoMessage("poll", errno));
    }
    char buf[32];
    const ssize_t got = read(ready[0], buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      close(ready[0]);
      int status = 0;
      if (WaitExit(d->xvfb_pid_, kTermGraceMs, &status)) {
        d->xvfb_pid_ = -1;
        return fail("Xvfb " + DescribeStatus(status) + " before it was ready");
      }
      return fail("Xvfb closed its -displayfd pipe before it was ready");
    }
    line.append(buf, static_cast<size_t>(got));
    if (line.find('\n') != std::string::npos) break;
  }
  close(ready[0]);

  // The connection.
  d->x_ = std::make_unique<XConnection>();
  XConnection& x = *d->x_;
  int screen_number = 0;
  x.c_ = xcb_connect(display.c_str(), &screen_number);
  if (xcb_connection_has_error(x.c_)) {
    return fail("connecting to the display " + display + " failed (xcb error " +
                std::to_string(xcb_connection_has_error(x.c_)) + ")");
  }
  const xcb_setup_t* setup = xcb_get_setup(x.c_);
  xcb_screen_iterator_t screens = xcb_setup_roots_iterator(setup);
  for (int i = 0; i < screen_number && screens.rem > 0; ++i) xcb_screen_next(&screens);
  if (screens.rem == 0) return fail("the display " + display + " has no screen " + std::to_string(screen_number));
  const xcb_screen_t* screen = screens.data;
  x.root_ = screen->root;
  x.depth_ = screen->root_depth;
  if (screen->width_in_pixels != config.width || screen->height_in_pixels != config.height) {
    return fail("the display is " + std::to_string(screen->width_in_pixels) + "x" +
                std::to_string(screen->height_in_pixels) + ", not the size asked for");
  }
  x.format_.msb_first = setup->image_byte_order == XCB_IMAGE_ORDER_MSB_FIRST;
  for (auto f = xcb_setup_pixmap_formats_iterator(setup); f.rem > 0; xcb_format_next(&f)) {
    if (f.data->depth == x.depth_) {
      x.format_.bits_per_pixel = f.data->bits_per_pixel;
      x.format_.scanline_pad = f.data->scanline_pad;
    }
  }
  for (auto dep = xcb_screen_allowed_depths_iterator(screen); dep.rem > 0; xcb_depth_next(&dep)) {
    for (auto v = xcb_depth_visuals_iterator(dep.data); v.rem > 0; xcb_visualtype_next(&v)) {
      if (v.data->visual_id == screen->root_visual) {
        x.format_.red_mask = v.data->red_mask;
        x.format_.green_mask = v.data->green_mask;
        x.format_.blue_mask = v.data->blue_mask;
      }
    }
  }
  const uint32_t bpp = x.format_.bits_per_pixel;
  if ((bpp != 16 && bpp != 24 && bpp != 32) || x.format_.scanline_pad == 0 || x.format_.red_mask == 0) {
    return fail("the root window's pixel format (depth " + std::to_string(x.depth_) + ", " + std::to_string(bpp) +
                " bits per pixel) is not a supported true-colour format");
  }

  // XTEST, and the keyboard.
  {
    XPtr<xcb_query_extension_reply_t> ext;
    static constexpr char kXtest[] = "XTEST";
    if (!x.AwaitTyped(xcb_query_extension(x.c_, sizeof(kXtest) - 1, kXtest).sequence, &ext, "querying XTEST",
                      error)) {
      return fail(*error);
    }
    if (!ext->present) return fail("the X server lacks the XTEST extension");
    xcb_prefetch_extension_data(x.c_, &xcb_test_id);  // xcb's own lookup, answered now rather than at first use
    XPtr<xcb_test_get_version_reply_t> version;
    if (!x.AwaitTyped(xcb_test_get_version(x.c_, 2, 2).sequence, &version, "XTEST GetVersion", error)) {
      return fail(*error);
    }
  }
  x.min_keycode_ = setup->min_keycode;
  x.max_keycode_ = setup->max_keycode;
  if (!x.LoadKeymap(error)) return fail(*error);
  x.FindSpares();

  // The window manager, once it manages the root window (selects SubstructureRedirect on it).
  if (config.window_manager) {
    std::vector<std::string> env;
    for (const std::string& e : config.env) {
      if (e.rfind("DISPLAY=", 0) != 0) env.push_back(e);
    }
    env.push_back("DISPLAY=" + display);
    d->wm_pid_ = SpawnInSession({config.wm_path}, env, d->log_fd_, {}, &spawn_error);
    if (d->wm_pid_ < 0) return fail("starting the window manager: " + spawn_error);
    for (;;) {
      XPtr<xcb_get_window_attributes_reply_t> attrs;
      if (!x.AwaitTyped(xcb_get_window_attributes(x.c_, x.root_).sequence, &attrs, "reading the root window",
                        error)) {
        return fail(*error);
      }
      if (attrs->all_event_masks & XCB_EVENT_MASK_SUBSTRUCTURE_REDIRECT) break;
      int status = 0;
      if (waitpid(d->wm_pid_, &status, WNOHANG) == d->wm_pid_) {
        d->wm_pid_ = -1;
        return fail("the window manager " + config.wm_path + " " + DescribeStatus(status));
      }
      if (NowMs() >= deadline) {
        return fail("the window manager " + config.wm_path + " did not manage the display within " +
                    std::to_string(kStartTimeoutMs / 1000) + " s");
      }
      SleepMs(5);
    }
  }
  error->clear();
  return d;
}

Desktop::~Desktop() { Terminate(); }

void Desktop::Terminate() {
  x_.reset();  // disconnects
  if (wm_pid_ > 0) KillAndReap(wm_pid_, kTermGraceMs);
  if (xvfb_pid_ > 0) KillAndReap(xvfb_pid_, kTermGraceMs);
  wm_pid_ = xvfb_pid_ = -1;
  if (log_fd_ >= 0) close(log_fd_);
  log_fd_ = -1;
}

void Desktop::ChildExited(pid_t pid) {
  if (pid <= 0) return;
  if (pid == xvfb_pid_) {
    xvfb_pid_ = -1;
    xvfb_exited_ = true;
  } else if (pid == wm_pid_) {
    wm_pid_ = -1;
  }
}

bool Desktop::alive() const { return !xvfb_exited_ && x_ != nullptr && !x_->broken(); }

bool Desktop::Check(std::string* error) const {
  if (xvfb_exited_) {
    *error = "the display " + display_name() + " is gone: Xvfb exited";
    return false;
  }
  if (x_ == nullptr || x_->broken()) {
    *error = "the display " + display_name() + " is gone: the X connection broke (Xvfb exited or closed it)";
    return false;
  }
  return true;
}

bool Desktop::Fail(const std::string& what, std::string* error) {
  if (!Check(error)) return false;  // the display is gone: say that instead
  *error = what;
  return false;
}

bool Desktop::CheckPoint(Point p, std::string* error) const {
  if (p.x < 0 || p.y < 0 || static_cast<uint32_t>(p.x) >= width_ || static_cast<uint32_t>(p.y) >= height_) {
    *error = "the point (" + std::to_string(p.x) + ", " + std::to_string(p.y) + ") is outside the display (" +
             std::to_string(width_) + "x" + std::to_string(height_) + ")";
    return false;
  }
  return true;
}

bool Desktop::Sync(std::string* error) {
  std::string e;
  if (x_->Sync(&e)) return true;
  return Fail(e, error);
}

bool Desktop::Capture(uint32_t x0, uint32_t y0, uint32_t w, uint32_t h, std::vector<uint8_t>* rgb,
                      std::string* error) {
  XConnection& x = *x_;
  x.DrainEvents();
  const PixelFormat& f = x.format_;
  const uint32_t stride = ((w * f.bits_per_pixel + f.scanline_pad - 1) / f.scanline_pad) * f.scanline_pad / 8;
  const uint32_t strip = static_cast<uint32_t>(std::max<size_t>(1, std::min<size_t>(h, kStripBytes / stride)));
  rgb->assign(static_cast<size_t>(w) * h * 3, 0);
  for (uint32_t y = 0; y < h; y += strip) {
    const uint32_t rows = std::min(strip, h - y);
    XPtr<xcb_get_image_reply_t> image;
    std::string e;
    if (!x.AwaitTyped(xcb_get_image(x.c_, XCB_IMAGE_FORMAT_Z_PIXMAP, x.root_, static_cast<int16_t>(x0),
                                    static_cast<int16_t>(y0 + y), static_cast<uint16_t>(w),
                                    static_cast<uint16_t>(rows), ~0u)
                          .sequence,
                      &image, "screenshot: GetImage", &e)) {
      return Fail(e, error);
    }
    const int length = xcb_get_image_data_length(image.get());
    if (image->depth != x.depth_ || length < 0 || static_cast<size_t>(length) < static_cast<size_t>(stride) * rows) {
      return Fail("screenshot: GetImage returned " + std::to_string(length) + " bytes of depth " +
                      std::to_string(image->depth) + " for " + std::to_string(rows) + " rows",
                  error);
    }
    ToRgb(f, xcb_get_image_data(image.get()), stride, w, rows, rgb->data() + static_cast<size_t>(y) * w * 3);
  }
  return true;
}

bool Desktop::Screenshot(uint32_t target_width, DesktopImage* out, std::string* error) {
  if (!Check(error)) return false;
  const uint32_t w = width_, h = height_;
  std::vector<uint8_t> rgb;
  if (!Capture(0, 0, w, h, &rgb, error)) return false;
  uint32_t tw = w, th = h;
  if (target_width != 0 && target_width < w) {
    tw = target_width;
    th = static_cast<uint32_t>(std::max<uint64_t>(1, (static_cast<uint64_t>(h) * tw + w / 2) / w));
    rgb = ScaleDown(rgb, w, h, tw, th);
  }
  DesktopImage image;
  image.png.reserve(rgb.size() / 4);
  if (!EncodePng(rgb.data(), tw, th, &image.png, error)) return false;
  image.width = tw;
  image.height = th;
  image.display_width = w;
  image.display_height = h;
  *out = std::move(image);
  return true;
}

bool Desktop::Zoom(Point from, Point to, DesktopImage* out, std::string* error) {
  if (!Check(error)) return false;
  if (from.x < 0 || from.y < 0 || to.x <= from.x || to.y <= from.y || static_cast<uint32_t>(to.x) > width_ ||
      static_cast<uint32_t>(to.y) > height_) {
    *error = "zoom: the region (" + std::to_string(from.x) + ", " + std::to_string(from.y) + ") - (" +
             std::to_string(to.x) + ", " + std::to_string(to.y) + ") is empty or not inside the display (" +
             std::to_string(width_) + "x" + std::to_string(height_) + ")";
    return false;
  }
  const uint32_t w = static_cast<uint32_t>(to.x - from.x), h = static_cast<uint32_t>(to.y - from.y);
  std::vector<uint8_t> rgb;
  if (!Capture(static_cast<uint32_t>(from.x), static_cast<uint32_t>(from.y), w, h, &rgb, error)) return false;
  DesktopImage image;
  if (!EncodePng(rgb.data(), w, h, &image.png, error)) return false;
  image.width = w;
  image.height = h;
  image.display_width = width_;
  image.display_height = height_;
  *out = std::move(image);
  return true;
}

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
  if (at && !CheckPoint(*at, error)) return false;
  if (at) x_->FakeMotion(at->x, at->y);
  std::vector<uint8_t> held;
  if (!modifiers.empty()) {
    if (!PressChord(modifiers, "click: modifiers", &held, error)) {
      ReleaseKeys(&held);
      std::string e;
      Sync(&e);
      return false;
    }
  }
  for (int i = 0; i < count; ++i) {
    x_->FakeButton(true, static_cast<uint8_t>(button));
    x_->FakeButton(false, static_cast<uint8_t>(button));
  }
  ReleaseKeys(&held);
  return Sync(error);
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
  if (at && !CheckPoint(*at, error)) return false;
  if (at) x_->FakeMotion(at->x, at->y);
  std::vector<uint8_t> held;
  if (!modifiers.empty()) {
    if (!PressChord(modifiers, "scroll: modifiers", &held, error)) {
      ReleaseKeys(&held);
      std::string e;
      Sync(&e);
      return false;
    }
  }
  for (int i = 0; i < amount; ++i) {
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
