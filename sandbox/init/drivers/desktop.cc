#include "sandbox/init/drivers/desktop.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <utility>

#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/drivers/x_connection.h"

namespace sbx::init {
namespace {

constexpr int kStartTimeoutMs = 10000;  // Xvfb ready, and the window manager managing the root window
constexpr int kTermGraceMs = 1000;      // between SIGTERM and SIGKILL

using internal::DescribeStatus;
using internal::ErrnoMessage;
using internal::KillAndReap;
using internal::NowMs;
using internal::OutputTail;
using internal::SpawnInSession;
using internal::WaitExit;
using internal::SleepMs;

bool StepFailed(std::string* error, const std::string& message) {
  *error = message;
  return false;
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

// The configuration's own faults, and a display that is taken, before anything starts.
bool CheckConfig(const DesktopConfig& config, std::string* error) {
  if (!internal::CheckScreenSize("display size", config.width, config.height, error)) {
    return false;
  }
  if (config.display < 0 || config.display > 65535) {
    *error = "the display number " + std::to_string(config.display) + " is outside 0..65535";
    return false;
  }
  if (config.xvfb_path.empty() || (config.window_manager && config.wm_path.empty())) {
    *error = "the Xvfb or window manager path is empty";
    return false;
  }
  if (DisplayAnswers(config.display)) {
    *error = "the display :" + std::to_string(config.display) + " is in use: an X server answers on its socket";
    return false;
  }
  return true;
}

// Connects to `display` and reads its root window and pixel format (a true-colour one, of the size asked for).
bool ConnectDisplay(XConnection& x, const std::string& display, const DesktopConfig& config, std::string* error) {
  int screen_number = 0;
  x.c_ = xcb_connect(display.c_str(), &screen_number);
  if (xcb_connection_has_error(x.c_)) {
    return StepFailed(error, "connecting to the display " + display + " failed (xcb error " +
                                 std::to_string(xcb_connection_has_error(x.c_)) + ")");
  }
  const xcb_setup_t* setup = xcb_get_setup(x.c_);
  xcb_screen_iterator_t screens = xcb_setup_roots_iterator(setup);
  for (int i = 0; i < screen_number && screens.rem > 0; ++i) xcb_screen_next(&screens);
  if (screens.rem == 0) {
    return StepFailed(error, "the display " + display + " has no screen " + std::to_string(screen_number));
  }
  const xcb_screen_t* screen = screens.data;
  x.root_ = screen->root;
  x.depth_ = screen->root_depth;
  if (screen->width_in_pixels != config.width || screen->height_in_pixels != config.height) {
    return StepFailed(error, "the display is " + std::to_string(screen->width_in_pixels) + "x" +
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
    return StepFailed(error, "the root window's pixel format (depth " + std::to_string(x.depth_) + ", " +
                                 std::to_string(bpp) + " bits per pixel) is not a supported true-colour format");
  }
  return true;
}

// XTEST, and the keyboard mapping (with its spare keycodes).
bool InitKeyboard(XConnection& x, std::string* error) {
  const xcb_setup_t* setup = xcb_get_setup(x.c_);
  {
    XPtr<xcb_query_extension_reply_t> ext;
    static constexpr char kXtest[] = "XTEST";
    if (!x.AwaitTyped(xcb_query_extension(x.c_, sizeof(kXtest) - 1, kXtest).sequence, &ext, "querying XTEST",
                      error)) {
      return false;
    }
    if (!ext->present) return StepFailed(error, "the X server lacks the XTEST extension");
    xcb_prefetch_extension_data(x.c_, &xcb_test_id);  // xcb's own lookup, answered now rather than at first use
    XPtr<xcb_test_get_version_reply_t> version;
    if (!x.AwaitTyped(xcb_test_get_version(x.c_, 2, 2).sequence, &version, "XTEST GetVersion", error)) {
      return false;
    }
  }
  x.min_keycode_ = setup->min_keycode;
  x.max_keycode_ = setup->max_keycode;
  if (!x.LoadKeymap(error)) return false;
  x.FindSpares();
  return true;
}

}  // namespace

// ---- Desktop ----

std::unique_ptr<Desktop> Desktop::Start(const DesktopConfig& config, std::string* error) {
  if (!CheckConfig(config, error)) return nullptr;
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
  int ready_fd = -1;
  if (!d->SpawnXvfb(config, &ready_fd, error)) return fail(*error);
  const int64_t deadline = NowMs() + kStartTimeoutMs;
  if (!d->AwaitXvfbReady(ready_fd, deadline, error)) return fail(*error);
  d->x_ = std::make_unique<XConnection>();
  if (!ConnectDisplay(*d->x_, display, config, error) || !InitKeyboard(*d->x_, error)) return fail(*error);
  if (config.window_manager && !d->StartWindowManager(config, deadline, error)) return fail(*error);
  error->clear();
  return d;
}

// Xvfb, telling us on a pipe when it accepts connections.
bool Desktop::SpawnXvfb(const DesktopConfig& config, int* ready_fd, std::string* error) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) return StepFailed(error, ErrnoMessage("pipe2", errno));
  const std::string size = std::to_string(config.width) + "x" + std::to_string(config.height) + "x24";
  const std::vector<std::string> argv = {config.xvfb_path, display_name(), "-screen",  "0",     size,
                                         "-nolisten",      "tcp",          "-nolisten", "local", "-noreset",
                                         "-displayfd",     std::to_string(ready[1])};
  std::string spawn_error;
  xvfb_pid_ = SpawnInSession(argv, config.env, log_fd_, {{ready[1], ready[1]}}, &spawn_error);
  close(ready[1]);
  if (xvfb_pid_ < 0) {
    close(ready[0]);
    return StepFailed(error, "starting Xvfb: " + spawn_error);
  }
  *ready_fd = ready[0];
  return true;
}

bool Desktop::AwaitXvfbReady(int ready_fd, int64_t deadline, std::string* error) {
  std::string line;
  for (;;) {
    const int64_t left = deadline - NowMs();
    pollfd p{ready_fd, POLLIN, 0};
    const int n = left > 0 ? poll(&p, 1, static_cast<int>(left)) : 0;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(ready_fd);
      return StepFailed(error, n == 0 ? "Xvfb was not ready within " + std::to_string(kStartTimeoutMs / 1000) + " s"
                                      : ErrnoMessage("poll", errno));
    }
    char buf[32];
    const ssize_t got = read(ready_fd, buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      close(ready_fd);
      int status = 0;
      if (WaitExit(xvfb_pid_, kTermGraceMs, &status)) {
        xvfb_pid_ = -1;
        return StepFailed(error, "Xvfb " + DescribeStatus(status) + " before it was ready");
      }
      return StepFailed(error, "Xvfb closed its -displayfd pipe before it was ready");
    }
    line.append(buf, static_cast<size_t>(got));
    if (line.find('\n') != std::string::npos) break;
  }
  close(ready_fd);
  return true;
}

// The window manager, once it manages the root window (selects SubstructureRedirect on it).
bool Desktop::StartWindowManager(const DesktopConfig& config, int64_t deadline_ms, std::string* error) {
  XConnection& x = *x_;
  std::string spawn_error;
  std::vector<std::string> env;
  for (const std::string& e : config.env) {
    if (e.rfind("DISPLAY=", 0) != 0) env.push_back(e);
  }
  env.push_back("DISPLAY=" + display_name());
  wm_pid_ = SpawnInSession({config.wm_path}, env, log_fd_, {}, &spawn_error);
  if (wm_pid_ < 0) return StepFailed(error, "starting the window manager: " + spawn_error);
  for (;;) {
    XPtr<xcb_get_window_attributes_reply_t> attrs;
    if (!x.AwaitTyped(xcb_get_window_attributes(x.c_, x.root_).sequence, &attrs, "reading the root window",
                      error)) {
      return false;
    }
    if (attrs->all_event_masks & XCB_EVENT_MASK_SUBSTRUCTURE_REDIRECT) break;
    int status = 0;
    if (waitpid(wm_pid_, &status, WNOHANG) == wm_pid_) {
      wm_pid_ = -1;
      return StepFailed(error, "the window manager " + config.wm_path + " " + DescribeStatus(status));
    }
    if (NowMs() >= deadline_ms) {
      return StepFailed(error, "the window manager " + config.wm_path + " did not manage the display within " +
                                   std::to_string(kStartTimeoutMs / 1000) + " s");
    }
    SleepMs(5);
  }
  return true;
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


}  // namespace sbx::init
