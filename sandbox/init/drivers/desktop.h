// The X side of desktop sessions: sandbox-init starts a virtual display (Xvfb, and optionally a window manager)
// inside the jail and drives it as an X client: input through XTEST, screenshots as PNG. Pure xcb + xcb-xtest
// and libpng; no abseil, no protobuf, no global state (sandbox-init links it statically).
#ifndef SBX_SANDBOX_INIT_DRIVERS_DESKTOP_H_
#define SBX_SANDBOX_INIT_DRIVERS_DESKTOP_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sbx::init {

struct DesktopConfig {
  uint32_t width = 1280, height = 800;  // 64..7680 x 64..4320, else Start fails
  int display = 1;                      // ":1" -> socket /tmp/.X11-unix/X1
  bool window_manager = false;          // start wm_path too (after Xvfb is ready), so windows can be focused
  std::string xvfb_path = "/usr/bin/Xvfb";
  std::string wm_path = "/usr/bin/twm";
  std::vector<std::string> env;  // environment for Xvfb and the WM ("PATH=...", ...); DISPLAY is added for the WM
};

struct Point {
  int x = 0, y = 0;
};

enum class Button { kLeft = 1, kMiddle = 2, kRight = 3 };
enum class ScrollDirection { kUp, kDown, kLeft, kRight };

struct DesktopImage {
  std::string png;                  // the encoded image
  uint32_t width = 0, height = 0;   // of the image (after scaling)
  uint32_t display_width = 0, display_height = 0;
};

class XConnection;  // x_connection.h: the xcb connection and what was read from the server

// A running virtual display and the X connection that drives it. Owns the Xvfb and window-manager processes
// (each in its own session): the destructor disconnects, SIGTERMs, then SIGKILLs and reaps them.
// NOTE: the owner reaps children with waitpid(-1) (sandbox-init is PID 1) and must call ChildExited when it
// reaps xvfb_pid() or wm_pid(). Apart from Start's failure path and the destructor, nothing here waits on them.
// NOTE: writing to a dead X server raises SIGPIPE; the process must ignore it (sandbox-init does).
// Not thread-safe; every call blocks until the X server answered (at most 10 s per request).
class Desktop {
 public:
  // Spawns `Xvfb :N -screen 0 WxHx24 -nolisten tcp -nolisten local -noreset -displayfd FD` (it listens on
  // /tmp/.X11-unix/XN only, with no auth file), waits until it is ready (<= 10 s), connects, checks XTEST and
  // reads the keyboard mapping; then starts the window manager if asked and waits until it manages the root
  // window (selects SubstructureRedirect). Fails at once if an X server already answers on display N (with
  // -displayfd Xvfb takes no lock file and would take the socket over). Returns nullptr and sets *error
  // (naming what failed, with the tail of Xvfb's output) on failure, after killing and reaping what it
  // started.
  static std::unique_ptr<Desktop> Start(const DesktopConfig& config, std::string* error);
  ~Desktop();
  Desktop(const Desktop&) = delete;
  Desktop& operator=(const Desktop&) = delete;

  pid_t xvfb_pid() const { return xvfb_pid_; }  // -1 once it exited
  pid_t wm_pid() const { return wm_pid_; }      // -1 without a window manager or once it exited
  // The reaper reaped `pid`. Xvfb gone: the desktop is dead and every call fails. The window manager gone:
  // wm_pid() becomes -1 and the display keeps working (unmanaged).
  void ChildExited(pid_t pid);
  bool alive() const;  // Xvfb running and the connection healthy
  std::string display_name() const { return ":" + std::to_string(display_); }
  uint32_t width() const { return width_; }
  uint32_t height() const { return height_; }

  // Every call below returns false and sets *error when it fails (Xvfb gone: "the display :N is gone ...";
  // coordinates outside the display: says so). Coordinates are display pixels. Every input action returns
  // after the X server processed it (a round trip).

  // target_width 0 or >= width(): native size; else scaled down (area average) keeping the aspect ratio.
  bool Screenshot(uint32_t target_width, DesktopImage* out, std::string* error);
  // The display pixels of [from.x, to.x) x [from.y, to.y) at native resolution (not scaled); display_width
  // and display_height of *out are the display's.
  bool Zoom(Point from, Point to, DesktopImage* out, std::string* error);
  bool MouseMove(Point p, std::string* error);
  // Presses and releases `b` count (1..3) times, after moving to `at` if given. `modifiers` (a chord of keys,
  // "shift", "ctrl+alt"; empty: none) are pressed before the first press and released after the last
  // release, also when the click fails.
  bool Click(Button b, int count, std::optional<Point> at, std::string_view modifiers, std::string* error);
  bool Click(Button b, int count, std::optional<Point> at, std::string* error) {
    return Click(b, count, at, {}, error);
  }
  // Presses (down) or releases `b`, after moving to `at` if given, and leaves it so: the button stays held
  // across calls until a release (a drag done in steps). Pressing a held button, or releasing one that is
  // not held (as the X server reports it), sends nothing and succeeds.
  bool MouseButton(Button b, bool down, std::optional<Point> at, std::string* error);
  // Left button: move to `from`, press, move to `to` in a few steps, release.
  bool Drag(Point from, Point to, std::string* error);
  // `amount` (1..100) clicks of buttons 4/5/6/7, after moving to `at` if given, with `modifiers` held as
  // in Click.
  bool Scroll(ScrollDirection d, int amount, std::optional<Point> at, std::string_view modifiers,
              std::string* error);
  bool Scroll(ScrollDirection d, int amount, std::optional<Point> at, std::string* error) {
    return Scroll(d, amount, at, {}, error);
  }
  // Presses the keys of `chord` (as Key does), holds them `duration_ms` (0..kMaxHoldMs), then releases them
  // in reverse. The wait ends early when `cancel_fd` (>= 0) becomes readable (the server is stopping); the
  // keys are released on every way out.
  static constexpr int kMaxHoldMs = 100'000;
  bool HoldKey(std::string_view chord, int duration_ms, int cancel_fd, std::string* error);
  // An xdotool-style chord: "ctrl+shift+t", "Return", "a", "F5", "super", "KP_Enter", "ctrl+alt+Delete".
  // Modifiers (ctrl/control, shift, alt, super/win/meta/cmd) and common aliases (enter, esc, del, pgup, ...)
  // are case-insensitive; other names are X keysym names (exact, else case-insensitive) or single characters.
  // Keys are pressed in order and released in reverse; a keysym on the shifted level gets Shift added.
  bool Key(std::string_view chord, std::string* error);
  // Types UTF-8 text (any Unicode; "\n" is Return, "\t" Tab). A character whose keysym is not in the keymap
  // is bound to a spare keycode (keysym = cp < 0x100 ? cp : 0x01000000 | cp). NOTE: such bindings are left
  // in place and reused (least recently bound first) rather than restored right away: a client reads the
  // new mapping only after its MappingNotify, and restoring at once would race it.
  bool Type(std::string_view utf8, std::string* error);
  bool CursorPosition(Point* out, std::string* error);

 private:
  Desktop() = default;
  bool Check(std::string* error) const;  // false with "the display is gone" when it is
  bool CheckPoint(Point p, std::string* error) const;
  bool Sync(std::string* error);  // a round trip: the server processed everything sent before
  bool Fail(const std::string& what, std::string* error);  // sets *error, marking the desktop dead if it is
  void Terminate();
  // Captures [x, x + w) x [y, y + h) of the root window as packed RGB.
  bool Capture(uint32_t x, uint32_t y, uint32_t w, uint32_t h, std::vector<uint8_t>* rgb, std::string* error);
  // Presses the keys of `chord` in order (Shift first for a keysym on the shifted level); *pressed gets the
  // keycodes pressed, for ReleaseKeys, also when it fails part way. `what` prefixes errors ("key").
  bool PressChord(std::string_view chord, std::string_view what, std::vector<uint8_t>* pressed,
                  std::string* error);
  void ReleaseKeys(std::vector<uint8_t>* pressed);  // in reverse; sends only (a Sync follows)
  // Click's and Scroll's presses: moves to `at` (if given), holds `modifiers`, presses and releases `button`
  // `times` times, releases the modifiers. `what` prefixes a modifier's error ("click: modifiers").
  bool PressButton(uint8_t button, int times, std::optional<Point> at, std::string_view modifiers,
                   std::string_view what, std::string* error);
  // Start's steps (desktop.cc): Xvfb spawned with a -displayfd pipe (*ready_fd); Xvfb ready by `deadline_ms`
  // (closes ready_fd); the window manager managing the root window by `deadline_ms`. Each false with *error.
  bool SpawnXvfb(const DesktopConfig& config, int* ready_fd, std::string* error);
  bool AwaitXvfbReady(int ready_fd, int64_t deadline_ms, std::string* error);
  bool StartWindowManager(const DesktopConfig& config, int64_t deadline_ms, std::string* error);

  int display_ = 0;
  uint32_t width_ = 0, height_ = 0;
  pid_t xvfb_pid_ = -1, wm_pid_ = -1;
  bool xvfb_exited_ = false;
  int log_fd_ = -1;  // Xvfb's stdout/stderr (a memfd), for error messages
  std::unique_ptr<XConnection> x_;
};

}  // namespace sbx::init

#endif  // SBX_SANDBOX_INIT_DRIVERS_DESKTOP_H_
