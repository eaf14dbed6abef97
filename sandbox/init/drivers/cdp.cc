#include "sandbox/init/drivers/cdp.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/driver_util.h"

namespace sbx::init {
namespace {

using nlohmann::json;

constexpr size_t kMaxMessageBytes = 64 << 20;  // one CDP message (a full-page screenshot is the biggest)
constexpr size_t kReadChunk = 1 << 20;
constexpr size_t kMaxDepth = 2000;  // of a CDP message's JSON
constexpr size_t kMaxEvents = 1000;
constexpr size_t kMaxEventText = 8192;
constexpr size_t kMaxInFlight = 10000;  // requests tracked for network idle
constexpr int kNetworkIdleMs = 500;
constexpr int kDownloadAnnounceMs = 1000;  // after a navigation aborted, until a download it became is announced
constexpr int kErrorPageSettleMs = 1000;  // a failed navigation's error page, until it loaded
constexpr int kCloseGraceMs = 2000;        // Browser.close until the process exits
constexpr int kTermGraceMs = 1000;         // between SIGTERM and SIGKILL
constexpr int kInputTimeoutMs = 10000;     // input events, focus, element lookups
constexpr int kTerminateWaitMs = 1000;     // a terminated script's evaluate response (a pending
                                           // promise never answers)
constexpr double kMaxFullPageHeight = 16384;



using internal::DescribeStatus;
using internal::KillAndReap;
using internal::SpawnInSession;
using internal::WaitExit;
using internal::ErrnoMessage;
using internal::NowMs;
using internal::SleepMs;

// ---- JSON access that never throws ----

// Whether `j` nests deeper than `max` levels. Iterative: dump() and our readers recurse, and Chromium runs
// hostile pages (V8 itself refuses to serialize values nested deeper than about 1000 levels).
bool TooDeep(const json& j, size_t max) {
  std::vector<std::pair<const json*, size_t>> stack = {{&j, 1}};
  while (!stack.empty()) {
    const auto [node, depth] = stack.back();
    stack.pop_back();
    if (!node->is_structured()) continue;
    if (depth > max) return true;
    for (const json& child : *node) {
      if (child.is_structured()) stack.emplace_back(&child, depth + 1);
    }
  }
  return false;
}

const json* Field(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::string Str(const json& j, const char* key) {
  const json* f = Field(j, key);
  return f != nullptr && f->is_string() ? f->get<std::string>() : std::string();
}

double Num(const json& j, const char* key, double fallback = 0) {
  const json* f = Field(j, key);
  return f != nullptr && f->is_number() ? f->get<double>() : fallback;
}

// A count Chromium reports (bytes, a line number) as an integer: a value out of int64's range or not a
// number (the pipe's peer is as hostile as the page driving it) is 0, never an undefined conversion.
int64_t Count(const json& j, const char* key) {
  const double v = Num(j, key);
  return v >= 0 && v < 9.2e18 ? static_cast<int64_t>(v) : 0;
}

// `text` with every \uXXXX escape of a lone UTF-16 surrogate (one not in a high-low pair) made \ufffd.
std::string ReplaceLoneSurrogates(std::string_view text) {
  const auto unit = [&](size_t i) -> int {  // the code unit of a \uXXXX escape at i, or -1
    if (i + 6 > text.size() || text[i] != '\\' || text[i + 1] != 'u') return -1;
    int v = 0;
    for (size_t k = i + 2; k < i + 6; ++k) {
      const char c = text[k];
      const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  };
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    if (text[i] != '\\' || i + 1 >= text.size()) {
      out.push_back(text[i++]);
      continue;
    }
    const int u = unit(i);
    if (u < 0) {  // another escape: copied whole, so an escaped backslash is never mistaken for one
      out.append(text.substr(i, 2));
      i += 2;
      continue;
    }
    const bool high = u >= 0xd800 && u <= 0xdbff, low = u >= 0xdc00 && u <= 0xdfff;
    const int next = high ? unit(i + 6) : -1;
    if (high && next >= 0xdc00 && next <= 0xdfff) {
      out.append(text.substr(i, 12));
      i += 12;
    } else {
      out.append(high || low ? "\\ufffd" : text.substr(i, 6));
      i += 6;
    }
  }
  return out;
}

std::string Cut(std::string s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) --n;  // a UTF-8 boundary
  s.resize(n);
  return s + "...";
}

// A file name for a download from the name the page suggested (which the page controls): its last path
// component (after the last slash or backslash), control characters replaced, no leading dot (no hidden
// files, no "." or ".."), at most 200 bytes (a UTF-8 boundary, a short extension kept). "download" when
// nothing is left.
std::string SafeDownloadName(const std::string& suggested) {
  const size_t slash = suggested.find_last_of("/\\");
  std::string name = slash == std::string::npos ? suggested : suggested.substr(slash + 1);
  for (char& c : name) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '_';
  }
  while (!name.empty() && (name[0] == '.' || name[0] == ' ')) name.erase(0, 1);
  constexpr size_t kMax = 200;
  if (name.size() > kMax) {
    const size_t dot = name.rfind('.');
    const std::string ext = dot != std::string::npos && name.size() - dot <= 16 ? name.substr(dot) : "";
    size_t n = kMax - ext.size();
    while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xc0) == 0x80) --n;
    name = name.substr(0, n) + ext;
  }
  return name.empty() ? "download" : name;
}

// Moves a finished download from `dir`/GUID to `dir`/NAME, never replacing a file: "NAME (1).ext",
// "NAME (2).ext"... Returns the final path, or the GUID path when it could not be moved.
std::string SettleDownload(const std::string& dir, const std::string& guid, const std::string& suggested) {
  const std::string from = dir + "/" + guid;
  const std::string name = SafeDownloadName(suggested);
  const size_t dot = name.rfind('.');
  const std::string stem = dot == std::string::npos || dot == 0 ? name : name.substr(0, dot);
  const std::string ext = dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
  for (int i = 0; i < 1000; ++i) {
    const std::string to = dir + "/" + (i == 0 ? name : stem + " (" + std::to_string(i) + ")" + ext);
    if (renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return to;
    if (errno != EEXIST) break;
  }
  return from;
}

// The message of a Runtime exceptionDetails: the exception's description's first line ("Error: boom"), else
// its value, else the details' text ("Uncaught").
std::string ExceptionText(const json& details) {
  std::string text = Str(details, "text");
  if (const json* ex = Field(details, "exception")) {
    std::string desc = Str(*ex, "description");
    if (desc.empty()) {
      if (const json* v = Field(*ex, "value")) desc = v->is_string() ? v->get<std::string>() : v->dump();
    }
    desc = desc.substr(0, desc.find('\n'));
    if (!desc.empty()) text = text.empty() ? desc : text + " " + desc;
  }
  return text.empty() ? "an exception was thrown" : text;
}

// The text of a console API call: its arguments' values (or descriptions), space-separated.
std::string ConsoleText(const json& params) {
  std::string text;
  if (const json* args = Field(params, "args"); args != nullptr && args->is_array()) {
    for (const json& a : *args) {
      std::string part;
      if (const json* v = Field(a, "value")) {
        part = v->is_string() ? v->get<std::string>() : v->dump();
      } else {
        part = Str(a, "description");
        if (part.empty()) part = Str(a, "type");
      }
      if (!text.empty()) text += " ";
      text += part;
      if (text.size() > kMaxEventText) break;
    }
  }
  return Cut(text, kMaxEventText);
}

bool DecodeBase64(const std::string& in, std::string* out) {
  static const auto kTable = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    const char* chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(chars[i])] = static_cast<int8_t>(i);
    return t;
  }();
  out->clear();
  out->reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    const int v = kTable[static_cast<unsigned char>(c)];
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return true;
}

uint32_t Be16(const std::string& s, size_t i) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[i])) << 8 | static_cast<unsigned char>(s[i + 1]);
}

// The size of a PNG (IHDR) or JPEG (the first SOFn marker) image.
bool ImageSize(const std::string& img, uint32_t* w, uint32_t* h) {
  if (img.size() >= 24 && img.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0) {
    *w = Be16(img, 16) << 16 | Be16(img, 18);
    *h = Be16(img, 20) << 16 | Be16(img, 22);
    return true;
  }
  if (img.size() < 4 || static_cast<unsigned char>(img[0]) != 0xff || static_cast<unsigned char>(img[1]) != 0xd8) {
    return false;
  }
  size_t i = 2;
  while (i + 9 < img.size()) {
    if (static_cast<unsigned char>(img[i]) != 0xff) return false;
    const unsigned char marker = static_cast<unsigned char>(img[i + 1]);
    if (marker == 0xff) {
      ++i;
      continue;
    }
    const uint32_t len = Be16(img, i + 2);
    if (marker >= 0xc0 && marker <= 0xcf && marker != 0xc4 && marker != 0xc8 && marker != 0xcc) {
      *h = Be16(img, i + 5);
      *w = Be16(img, i + 7);
      return true;
    }
    i += 2 + len;
  }
  return false;
}

// Chromium's D-Bus complaints (a jail has no bus): harmless, and they would crowd out what matters.
bool IsDbusNoise(std::string_view line) {
  return line.find("dbus") != std::string_view::npos || line.find("DBus") != std::string_view::npos;
}

std::string ChromiumOutputTail(int fd) { return internal::OutputTail(fd, IsDbusNoise); }

bool CheckSize(uint32_t w, uint32_t h, std::string* error) {
  return internal::CheckScreenSize("viewport", w, h, error);
}

struct KeyInfo {
  std::string key, code, text;
  int vk = 0;
};

bool LookupKey(const std::string& name, KeyInfo* k) {
  struct Named {
    const char* name;
    const char* code;
    int vk;
    const char* text;
  };
  static const Named kNamed[] = {
      {"Enter", "Enter", 13, "\r"},
      {"Tab", "Tab", 9, ""},
      {"Escape", "Escape", 27, ""},
      {"Backspace", "Backspace", 8, ""},
      {"Delete", "Delete", 46, ""},
      {"Space", "Space", 32, " "},
      {"ArrowLeft", "ArrowLeft", 37, ""},
      {"ArrowUp", "ArrowUp", 38, ""},
      {"ArrowRight", "ArrowRight", 39, ""},
      {"ArrowDown", "ArrowDown", 40, ""},
      {"Home", "Home", 36, ""},
      {"End", "End", 35, ""},
      {"PageUp", "PageUp", 33, ""},
      {"PageDown", "PageDown", 34, ""},
  };
  static const std::pair<const char*, const char*> kAliases[] = {
      {"return", "Enter"},     {"esc", "Escape"},     {"del", "Delete"},  {"left", "ArrowLeft"}, {"up", "ArrowUp"},
      {"right", "ArrowRight"}, {"down", "ArrowDown"}, {"pgup", "PageUp"}, {"pgdn", "PageDown"},  {" ", "Space"},
  };
  std::string lower;
  for (char c : name) lower.push_back(static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c));
  std::string canonical;
  for (const auto& [alias, to] : kAliases) {
    if (lower == alias) canonical = to;
  }
  for (const Named& n : kNamed) {
    std::string nl;
    for (const char* p = n.name; *p; ++p) nl.push_back(static_cast<char>(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p));
    if (lower == nl || canonical == n.name) {
      *k = {n.name, n.code, n.text, n.vk};
      return true;
    }
  }
  if (name.size() == 1 && name[0] > 0x20 && name[0] < 0x7f) {
    const char c = name[0];
    k->key = name;
    k->text = name;
    if (c >= 'a' && c <= 'z') {
      k->code = std::string("Key") + static_cast<char>(c - 'a' + 'A');
      k->vk = c - 'a' + 'A';
    } else if (c >= 'A' && c <= 'Z') {
      k->code = std::string("Key") + c;
      k->vk = c;
    } else if (c >= '0' && c <= '9') {
      k->code = std::string("Digit") + c;
      k->vk = c;
    } else {
      k->vk = 0;  // punctuation: the text is what matters
    }
    return true;
  }
  return false;
}

}  // namespace

// ---- Start and stop ----

std::unique_ptr<Browser> Browser::Start(const BrowserConfig& config, std::string* error) {
  if (!CheckSize(config.width, config.height, error)) return nullptr;
  if (config.profile_dir.empty()) {
    *error = "the browser needs a profile directory";
    return nullptr;
  }
  if (config.chromium_path.empty()) {
    *error = "the chromium path is empty";
    return nullptr;
  }
  std::unique_ptr<Browser> b(new Browser());
  // Chromium's output goes to a memfd: nothing has to drain it, and its tail explains a failure.
  b->log_fd_ = internal::OutputMemfd("chromium");
  b->client_event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  b->client_input_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  auto fail = [&](const std::string& message) -> std::unique_ptr<Browser> {
    *error = message;
    const std::string tail = ChromiumOutputTail(b->log_fd_);
    if (!tail.empty() && error->find("chromium said") == std::string::npos) *error += " (chromium said: " + tail + ")";
    return nullptr;  // ~Browser kills and reaps what was started
  };

  int cmd[2], resp[2];  // cmd: we write, Chromium reads (its fd 3); resp: Chromium writes (its fd 4), we read
  if (pipe2(cmd, O_CLOEXEC) < 0) return fail(ErrnoMessage("pipe2", errno));
  if (pipe2(resp, O_CLOEXEC) < 0) {
    close(cmd[0]);
    close(cmd[1]);
    return fail(ErrnoMessage("pipe2", errno));
  }
  b->to_chromium_ = cmd[1];
  b->from_chromium_ = resp[0];
  fcntl(cmd[1], F_SETFL, O_NONBLOCK);
  fcntl(resp[0], F_SETFL, O_NONBLOCK);

  std::vector<std::string> argv = {
      config.chromium_path,
      "--headless=new",
      // NOTE: Chromium's own sandbox needs user namespaces or a setuid helper, neither of which a jail has (and
      // it would be a sandbox inside ours). The jail (namespaces, seccomp, cgroup, no capabilities) is the
      // sandbox around the browser and everything it runs.
      "--no-sandbox",
      "--remote-debugging-pipe",  // CDP on fds 3 and 4; no port is opened
      "--user-data-dir=" + config.profile_dir,
      "--window-size=" + std::to_string(config.width) + "," + std::to_string(config.height),
      "--no-first-run",
      "--no-default-browser-check",
      "--disable-gpu",  // no GPU in a jail: software compositing, no GPU process probing /dev/dri
      // Nothing that phones home or runs by itself: the egress proxy would see (and audit) it.
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-default-apps",
      "--disable-extensions",
      "--disable-domain-reliability",
      "--disable-client-side-phishing-detection",
      "--disable-breakpad",
      "--metrics-recording-only",
      "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider,AutofillServerCommunication",
      // A headless page is never "in the background": timers and rendering run at full speed.
      "--disable-background-timer-throttling",
      "--disable-backgrounding-occluded-windows",
      "--disable-renderer-backgrounding",
      "--disable-hang-monitor",
      // Screenshots: exact sRGB colours, no scrollbars eating the viewport.
      "--force-color-profile=srgb",
      "--hide-scrollbars",
      "--mute-audio",
      "--password-store=basic",  // no keyring over D-Bus
      "--noerrdialogs",
  };
  if (config.disable_dev_shm_usage) argv.push_back("--disable-dev-shm-usage");
  if (!config.proxy.empty()) argv.push_back("--proxy-server=" + config.proxy);
  for (const std::string& f : config.extra_flags) argv.push_back(f);
  argv.push_back("about:blank");

  std::string spawn_error;
  // Chromium reads commands on fd 3 and writes responses and events on fd 4.
  b->pid_ = SpawnInSession(argv, config.env, b->log_fd_, {{cmd[0], 3}, {resp[1], 4}}, &spawn_error);
  close(cmd[0]);
  close(resp[1]);
  if (b->pid_ < 0) return fail("starting chromium: " + spawn_error);

  const int64_t deadline = NowMs() + config.start_timeout_ms;
  auto left = [&] { return static_cast<int>(std::max<int64_t>(1, deadline - NowMs())); };
  json result;
  std::string e;
  if (!b->Call("Target.getTargets", json::object(), &result, &e, left(), true)) {
    return fail("chromium did not answer: " + e);
  }
  if (const json* infos = Field(result, "targetInfos"); infos != nullptr && infos->is_array()) {
    for (const json& t : *infos) {
      if (Str(t, "type") == "page") {
        b->target_id_ = Str(t, "targetId");
        break;
      }
    }
  }
  if (b->target_id_.empty()) {
    if (!b->Call("Target.createTarget", {{"url", "about:blank"}}, &result, &e, left(), true)) {
      return fail("creating a page: " + e);
    }
    b->target_id_ = Str(result, "targetId");
  }
  if (!b->Call("Target.attachToTarget", {{"targetId", b->target_id_}, {"flatten", true}}, &result, &e, left(), true)) {
    return fail("attaching to the page: " + e);
  }
  b->session_id_ = Str(result, "sessionId");
  if (b->session_id_.empty()) return fail("attaching to the page: no session id");
  b->download_dir_ = config.download_dir;
  json downloads = {{"behavior", "deny"}};
  if (!config.download_dir.empty()) {
    downloads = {{"behavior", "allowAndName"}, {"downloadPath", config.download_dir}, {"eventsEnabled", true}};
  }
  if (!b->Call("Browser.setDownloadBehavior", downloads, &result, &e, left(), true)) {
    return fail("Browser.setDownloadBehavior: " + e);
  }
  for (const char* method : {"Page.enable", "Runtime.enable", "Network.enable", "Log.enable"}) {
    if (!b->Call(method, json::object(), &result, &e, left())) return fail(std::string(method) + ": " + e);
  }
  if (!b->Call("Page.setLifecycleEventsEnabled", {{"enabled", true}}, &result, &e, left())) {
    return fail("Page.setLifecycleEventsEnabled: " + e);
  }
  if (!b->SetViewport(config.width, config.height, &e)) return fail(e);
  b->TakeEvents();  // nothing the user did
  error->clear();
  return b;
}

Browser::~Browser() { Terminate(); }

void Browser::Terminate() {
  if (pid_ > 0) {
    // A clean close flushes the profile; then the process exits by itself.
    json result;
    std::string e;
    const bool closing = !gone_ && Call("Browser.close", json::object(), &result, &e, kCloseGraceMs, true);
    int status = 0;
    if (WaitExit(pid_, closing ? kCloseGraceMs : 0, &status)) {
      kill(-pid_, SIGKILL);  // helpers left in its group
    } else {
      KillAndReap(pid_, kTermGraceMs);
    }
    pid_ = -1;
  }
  for (int* fd : {&to_chromium_, &from_chromium_, &log_fd_, &client_event_fd_, &client_input_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Browser::ChildExited(pid_t pid, int status) {
  if (pid <= 0 || pid != pid_) return;
  pid_ = -1;
  exit_status_ = status;
  MarkGone("chromium " + DescribeStatus(status));
}

void Browser::MarkGone(const std::string& why, bool exiting) {
  if (gone_) return;
  gone_ = true;
  gone_why_ = why;
  mux_.reset();
  PushClientEnd("the browser is gone (" + why + ")");
  // The pipe closes while the process exits, a moment before it can be waited for: give it that moment, so
  // GoneMessage can say how it ended. Without reaping (WNOWAIT): the reaper still gets it.
  const int64_t deadline = NowMs() + 500;
  while (exiting && pid_ > 0 && !exit_status_ && NowMs() < deadline) {
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) < 0 && errno != EINTR) break;
    if (info.si_pid == pid_) break;
    SleepMs(5);
  }
  // A browser given up on while it runs is of no more use: it and what it started stop now (the reaper
  // reaps them), and the reason stays what made us give up.
  if (!exiting && pid_ > 0 && !exit_status_) {
    killed_ = true;
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
  }
}

std::string Browser::GoneMessage() const {
  std::string why = gone_why_;
  if (killed_) {
    // We killed it: how it ended says nothing.
  } else if (exit_status_) {
    why = "chromium " + DescribeStatus(*exit_status_);
  } else if (pid_ > 0) {
    // Describe, without reaping, how it ended, if it did (the reaper still gets it).
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid_) {
      if (info.si_code == CLD_EXITED) {
        why = "chromium exited with status " + std::to_string(info.si_status);
      } else {
        why = std::string("chromium was killed by signal ") + strsignal(info.si_status);
      }
    }
  }
  std::string message = "the browser is gone (" + why + ")";
  const std::string tail = ChromiumOutputTail(log_fd_);
  if (!tail.empty()) message += " (chromium said: " + tail + ")";
  return message;
}

bool Browser::Check(std::string* error) const {
  if (gone_) {
    *error = GoneMessage();
    return false;
  }
  if (crashed_) {
    *error = "the page crashed (its renderer died); navigate to load a page again";
    return false;
  }
  return true;
}

// ---- The connection ----

bool Browser::Send(const json& message, int64_t deadline_ms, std::string* error) {
  std::string text = message.dump(-1, ' ', false, json::error_handler_t::replace);
  text.push_back('\0');
  size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = write(to_chromium_, text.data() + off, text.size() - off);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      // Chromium is not reading: keep reading its side meanwhile, so neither of us blocks the other.
      pollfd p[2] = {{to_chromium_, POLLOUT, 0}, {from_chromium_, POLLIN, 0}};
      const int64_t left = deadline_ms - NowMs();
      if (left <= 0) {
        // Half a message would corrupt the framing of every later one.
        if (off > 0) MarkGone("timed out in the middle of a message to chromium");
        *error = off > 0 ? GoneMessage() : "timed out sending to the browser";
        return false;
      }
      if (poll(p, 2, static_cast<int>(left)) > 0 && (p[1].revents & (POLLIN | POLLHUP))) {
        if (!Pump(NowMs(), error)) return false;
      }
      continue;
    }
    MarkGone(n < 0 ? ErrnoMessage("writing to chromium", errno) : "chromium stopped reading", true);
    *error = GoneMessage();
    return false;
  }
  return true;
}

bool Browser::Pump(int64_t deadline_ms, std::string* error) {
  if (gone_) {
    *error = GoneMessage();
    return false;
  }
  // The external client's input goes out whoever holds the browser (a call's waits included).
  FlushClientInput();
  pollfd p[3] = {{from_chromium_, POLLIN, 0}, {cancel_fd_, POLLIN, 0}, {client_input_fd_, POLLIN, 0}};
  const int64_t left = std::max<int64_t>(0, deadline_ms - NowMs());
  const int n = poll(p, 3, static_cast<int>(std::min<int64_t>(left, 1 << 30)));
  if (n < 0 && errno != EINTR) {
    MarkGone(ErrnoMessage("poll", errno));
    *error = GoneMessage();
    return false;
  }
  if (n > 0 && cancel_fd_ >= 0 && (p[1].revents & POLLIN)) {
    *error = "canceled: sandbox-init is ending";
    return false;
  }
  if (n > 0 && (p[2].revents & POLLIN)) FlushClientInput();
  if (n <= 0 || !(p[0].revents & (POLLIN | POLLHUP | POLLERR))) return true;
  for (;;) {
    const size_t old = in_.size();
    in_.resize(old + kReadChunk);
    const ssize_t got = read(from_chromium_, in_.data() + old, kReadChunk);
    in_.resize(old + static_cast<size_t>(std::max<ssize_t>(got, 0)));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && errno == EAGAIN) break;
    if (got <= 0) {
      MarkGone(got == 0 ? "chromium closed its CDP pipe: it exited" : ErrnoMessage("reading from chromium", errno),
               true);
      break;
    }
    if (ConsumeInput()) continue;
    if (gone_ || static_cast<size_t>(got) < kReadChunk) break;
  }
  if (gone_) {
    *error = GoneMessage();
    return false;
  }
  return true;
}

bool Browser::ConsumeInput() {
  if (skipping_) {
    // The rest of an oversized message: dropped up to its end.
    const size_t nul = in_.find('\0');
    if (nul == std::string::npos) {
      in_.clear();
      scanned_ = 0;
      return true;
    }
    in_.erase(0, nul + 1);
    scanned_ = 0;
    skipping_ = false;
  }
  // Every complete message.
  size_t start = 0;
  for (;;) {
    const size_t nul = in_.find('\0', std::max(start, scanned_));
    if (nul == std::string::npos) break;
    std::string_view text(in_.data() + start, nul - start);
    json message = json::parse(text.begin(), text.end(), nullptr, false);
    if (message.is_discarded()) {
      // Chromium escapes a lone UTF-16 surrogate (a page's string) as \ud800, which JSON parsers refuse.
      const std::string fixed = ReplaceLoneSurrogates(text);
      message = json::parse(fixed, nullptr, false);
      if (message.is_discarded()) FailWaitingCallIfItsAnswer(text, "chromium sent an answer that is not JSON");
    }
    start = nul + 1;
    scanned_ = start;
    if (message.is_discarded()) continue;
    if (TooDeep(message, kMaxDepth)) {
      MarkGone("chromium sent a message nested deeper than " + std::to_string(kMaxDepth) + " levels");
      break;
    }
    Handle(message);
  }
  in_.erase(0, start);
  scanned_ = in_.size();  // what is left holds no NUL
  if (in_.size() > kMaxMessageBytes) {
    // Too big to hold: the call waiting for it (it is almost surely its answer) fails at once, and the
    // rest of the message is skipped; the browser stays usable.
    in_.clear();
    scanned_ = 0;
    skipping_ = true;
    FailWaitingCall("chromium's answer is over " + std::to_string(kMaxMessageBytes >> 20) +
                    " MiB (a screenshot that big: scale it down with a width, or take a JPEG)");
    return true;
  }
  return false;
}

std::vector<json> Browser::HandleBytesForTesting(std::string_view bytes, size_t chunk, const std::string& download_dir) {
  Browser b;
  b.download_dir_ = download_dir;
  b.session_id_ = "S";
  b.target_id_ = "T";
  b.waiting_id_ = 1;
  if (chunk == 0) chunk = bytes.size() + 1;
  for (size_t i = 0; i < bytes.size() && !b.gone_; i += chunk) {
    b.in_.append(bytes.substr(i, chunk));
    b.ConsumeInput();
  }
  std::vector<json> events = b.TakeEvents();
  if (b.response_) events.push_back({{"type", "response"}, {"message", *b.response_}});
  return events;
}

void Browser::FailWaitingCall(const std::string& message) {
  if (waiting_id_ == 0 || response_) return;
  response_ = json{{"id", waiting_id_}, {"error", {{"message", message}}}};
}

void Browser::FailWaitingCallIfItsAnswer(std::string_view text, const std::string& message) {
  // A response begins {"id":N (Chromium writes the id first).
  const std::string prefix = "{\"id\":" + std::to_string(waiting_id_);
  if (waiting_id_ != 0 && text.substr(0, prefix.size()) == prefix && text.size() > prefix.size() &&
      (text[prefix.size()] == ',' || text[prefix.size()] == '}')) {
    FailWaitingCall(message);
  }
}

void Browser::PushEvent(json event) {
  if (events_.size() >= kMaxEvents) {
    events_.pop_front();
    ++dropped_events_;
  }
  events_.push_back(std::move(event));
}

void Browser::Handle(const json& message_in) {
  const json* message_p = &message_in;
  json routed;
  if (mux_) {
    routed = message_in;
    const CdpMux::Route route = mux_->FromBrowser(&routed);
    if (route == CdpMux::Route::kClient || route == CdpMux::Route::kBoth) PushClient(routed);
    if (route == CdpMux::Route::kClient || route == CdpMux::Route::kDrop) return;
    if (route == CdpMux::Route::kBoth) routed = message_in;  // the driver sees Chromium's own
    message_p = &routed;
  }
  const json& message = *message_p;
  if (const json* id = Field(message, "id"); id != nullptr && id->is_number_integer()) {
    const int64_t got = id->get<int64_t>();
    if (got == waiting_id_) response_ = message;
    if (got == terminated_id_) terminated_answered_ = true;
    return;  // a stale response (of a call that timed out) is dropped
  }
  const std::string method = Str(message, "method");
  const std::string session = Str(message, "sessionId");
  static const json kEmpty = json::object();
  const json* params_p = Field(message, "params");
  const json& params = params_p != nullptr ? *params_p : kEmpty;
  if (session.empty()) {
    if (method == "Browser.downloadWillBegin") {
      ++downloads_begun_;
      if (downloads_.size() < 1000) {
        downloads_[Str(params, "guid")] = {{"url", Cut(Str(params, "url"), 2048)},
                                           {"suggested_filename", Cut(Str(params, "suggestedFilename"), 1024)}};
      }
      last_download_guid_ = Str(params, "guid");
    } else if (method == "Browser.downloadProgress") {
      const std::string state = Str(params, "state");
      const std::string guid = Str(params, "guid");
      auto it = downloads_.find(guid);
      if ((state == "completed" || state == "canceled") && it != downloads_.end()) {
        json event = {{"type", "download"}, {"state", state}};
        event.update(it->second);
        // Chromium saved it under its GUID (a name the page cannot choose); give it the suggested name.
        event["path"] = state == "completed" && !guid.empty() && guid.find('/') == std::string::npos
                            ? SettleDownload(download_dir_, guid, Str(it->second, "suggested_filename"))
                            : download_dir_ + "/" + guid;
        event["bytes"] = Count(params, "receivedBytes");
        event["text"] = state + " " + Str(event, "path");
        downloads_.erase(it);
        ++downloads_finished_;
        PushEvent(std::move(event));
      }
    } else if (method == "Target.detachedFromTarget" && Str(params, "sessionId") == session_id_ &&
               !session_id_.empty()) {
      MarkGone("the page was closed");
    } else if (method == "Target.targetCrashed" && Str(params, "targetId") == target_id_) {
      crashed_ = true;
    }
    return;
  }
  if (session != session_id_) return;
  if (method == "Network.requestWillBeSent") {
    if (in_flight_.size() < kMaxInFlight) in_flight_.insert(Str(params, "requestId"));
    last_network_ms_ = NowMs();
  } else if (method == "Network.loadingFinished" || method == "Network.loadingFailed") {
    in_flight_.erase(Str(params, "requestId"));
    last_network_ms_ = NowMs();
  } else if (method == "Page.lifecycleEvent") {
    // "load" of the main frame's document (a page target's main frame id is its target id), by the loader
    // that loaded it: a late load of a previous navigation (an error page committing after Page.navigate
    // answered) must not end the wait for the next one.
    if (Str(params, "name") == "load" && Str(params, "frameId") == target_id_) {
      if (loaded_.size() >= 64) loaded_.clear();  // only the newest matter
      loaded_.insert(Str(params, "loaderId"));
    }
  } else if (method == "Runtime.consoleAPICalled") {
    PushEvent({{"type", "console"}, {"level", Str(params, "type")}, {"text", ConsoleText(params)}});
  } else if (method == "Runtime.exceptionThrown") {
    const json* d = Field(params, "exceptionDetails");
    json event = {{"type", "page_error"}, {"text", Cut(d ? ExceptionText(*d) : "", kMaxEventText)}};
    if (d) {
      event["url"] = Cut(Str(*d, "url"), 2048);
      event["line"] = Count(*d, "lineNumber");
    }
    PushEvent(std::move(event));
  } else if (method == "Log.entryAdded") {
    const json* entry = Field(params, "entry");
    if (entry != nullptr) {
      PushEvent({{"type", "log"},
                 {"level", Str(*entry, "level")},
                 {"source", Str(*entry, "source")},
                 {"text", Cut(Str(*entry, "text"), kMaxEventText)},
                 {"url", Cut(Str(*entry, "url"), 2048)}});
    }
  } else if (method == "Fetch.requestPaused") {
    if (paused_requests_.size() < 64) paused_requests_.push_back(Str(params, "requestId"));
  } else if (method == "Inspector.targetCrashed") {
    crashed_ = true;
    PushEvent({{"type", "crash"}});
  } else if (method == "Inspector.detached") {
    MarkGone("the page was detached: " + Str(params, "reason"));
  }
}

bool Browser::Call(const std::string& method, const json& params, json* result, std::string* error, int timeout_ms,
                   bool browser_level) {
  return CallIn(browser_level ? std::string() : session_id_, method, params, result, error, timeout_ms);
}

bool Browser::CallIn(const std::string& session, const std::string& method, const json& params, json* result,
                     std::string* error, int timeout_ms) {
  const bool browser_level = session.empty();
  if (gone_ || (!browser_level && crashed_ && session == session_id_)) return Check(error);
  const int64_t start = NowMs();
  int64_t deadline = start + std::max(timeout_ms, 1);
  if (call_deadline_ms_ > 0) deadline = std::min(deadline, std::max(call_deadline_ms_, NowMs() + 1));
  const int64_t id = next_id_++;
  json message = {{"id", id}, {"method", method}, {"params", params.is_null() ? json::object() : params}};
  if (!browser_level) message["sessionId"] = session;
  waiting_id_ = id;
  response_.reset();
  if (!Send(message, deadline, error)) return false;
  while (!response_) {
    if (NowMs() >= deadline) {
      waiting_id_ = 0;
      *error = method + ": no answer within " + std::to_string(deadline - start) + " ms";
      return false;
    }
    if (!Pump(deadline, error)) return false;
    if (!browser_level && session == session_id_ && crashed_ && !response_) return Check(error);
  }
  waiting_id_ = 0;
  const json response = std::move(*response_);
  response_.reset();
  if (const json* err = Field(response, "error")) {
    *error = method + ": " + Str(*err, "message");
    const std::string data = Str(*err, "data");
    if (!data.empty()) *error += " (" + data + ")";
    return false;
  }
  const json* r = Field(response, "result");
  *result = r != nullptr ? *r : json::object();
  return true;
}

std::vector<json> Browser::TakeEvents() {
  std::vector<json> out;
  // What arrived since the last call, without waiting.
  std::string e;
  if (!gone_) Pump(NowMs(), &e);
  if (dropped_events_ > 0) out.push_back({{"type", "dropped"}, {"count", dropped_events_}});
  dropped_events_ = 0;
  for (json& event : events_) out.push_back(std::move(event));
  events_.clear();
  return out;
}

// ---- Tools ----

bool Browser::Navigate(const std::string& url, const std::string& wait, int timeout_ms, std::string* error) {
  if (wait != "load" && wait != "networkidle") {
    *error = "navigate: wait must be \"load\" or \"networkidle\", not \"" + wait + "\"";
    return false;
  }
  const int64_t deadline = NowMs() + timeout_ms;
  loaded_.clear();
  in_flight_.clear();
  // A crashed page can be navigated again: Chromium gives it a new renderer.
  const bool was_crashed = crashed_;
  crashed_ = false;
  const uint64_t downloads_before = downloads_begun_;
  json result;
  if (!Call("Page.navigate", {{"url", url}}, &result, error, timeout_ms)) {
    crashed_ = crashed_ || was_crashed;
    return false;
  }
  const std::string error_text = Str(result, "errorText");
  if (error_text == "net::ERR_ABORTED" && !download_dir_.empty()) {
    // Perhaps a download: Chromium announces it just after answering.
    const int64_t until = std::min(deadline, NowMs() + kDownloadAnnounceMs);
    while (downloads_begun_ == downloads_before && NowMs() < until) {
      if (!Pump(until, error)) return false;
    }
    if (downloads_begun_ != downloads_before) {
      // The navigation became a download: its result is the file, so wait for it to finish.
      const std::string guid = last_download_guid_;
      while (downloads_.count(guid) != 0) {
        if (NowMs() >= deadline) {
          *error = "navigate: " + url + " became a download that did not finish within " +
                   std::to_string(timeout_ms) + " ms (it goes on; a later call reports it)";
          return false;
        }
        if (!Pump(deadline, error)) return false;
      }
      ++downloads_waited_;  // this navigation waited for it: a later wait_for is for another
      return true;
    }
  }
  const std::string loader = Str(result, "loaderId");
  if (!error_text.empty()) {
    // Chromium goes on to commit an error page (in another renderer): let it settle (briefly), so the next
    // call sees that page rather than one half swapped out.
    const int64_t until = std::min(deadline, NowMs() + kErrorPageSettleMs);
    std::string ignored;
    while (!loader.empty() && loaded_.count(loader) == 0 && NowMs() < until && Pump(until, &ignored)) {
    }
    *error = "navigate: " + url + ": " + error_text;
    return false;
  }
  if (loader.empty()) return true;  // same-document: no load
  while (loaded_.count(loader) == 0) {
    if (NowMs() >= deadline) {
      *error = "navigate: the page did not finish loading within " + std::to_string(timeout_ms) + " ms";
      return false;
    }
    if (!Pump(deadline, error)) return false;
    if (!Check(error)) return false;
  }
  if (wait == "networkidle") return WaitNetworkIdle(deadline, error);
  return true;
}

bool Browser::WaitNetworkIdle(int64_t deadline_ms, std::string* error) {
  // Quiet time before the load event counts too (like Playwright's networkidle).
  last_network_ms_ = std::max(last_network_ms_, NowMs() - kNetworkIdleMs);
  for (;;) {
    const int64_t now = NowMs();
    if (in_flight_.empty() && now - last_network_ms_ >= kNetworkIdleMs) return true;
    if (now >= deadline_ms) {
      *error = "navigate: the network was not idle before the timeout (" + std::to_string(in_flight_.size()) +
               " requests in flight)";
      return false;
    }
    const int64_t until = in_flight_.empty() ? std::min(deadline_ms, last_network_ms_ + kNetworkIdleMs) : deadline_ms;
    if (!Pump(until, error)) return false;
    if (!Check(error)) return false;
  }
}

bool Browser::Screenshot(bool full_page, const std::string& format, int quality, uint32_t scale_width,
                         std::string* image, uint32_t* width, uint32_t* height, std::string* error) {
  if (format != "png" && format != "jpeg") {
    *error = "screenshot: the format must be png or jpeg, not \"" + format + "\"";
    return false;
  }
  json params = {{"format", format}};
  if (format == "jpeg") params["quality"] = std::clamp(quality, 1, 100);
  json result;
  if (full_page || scale_width != 0) {
    if (!Call("Page.getLayoutMetrics", json::object(), &result, error)) return false;
    double x = 0, y = 0, w = 0, h = 0;
    if (full_page) {
      const json* size = Field(result, "cssContentSize");
      if (size == nullptr) size = Field(result, "contentSize");
      w = size ? std::min(Num(*size, "width"), static_cast<double>(internal::kMaxScreenWidth)) : 0;
      h = size ? std::min(Num(*size, "height"), kMaxFullPageHeight) : 0;
      params["captureBeyondViewport"] = true;
    } else {
      // The viewport, where the page is scrolled to.
      const json* vp = Field(result, "cssVisualViewport");
      if (vp == nullptr) vp = Field(result, "visualViewport");
      x = vp ? Num(*vp, "pageX") : 0;
      y = vp ? Num(*vp, "pageY") : 0;
      w = vp ? Num(*vp, "clientWidth") : 0;
      h = vp ? Num(*vp, "clientHeight") : 0;
    }
    if (w < 1 || h < 1) {
      *error = "screenshot: the page has no size";
      return false;
    }
    double scale = 1;
    if (scale_width != 0) {
      if (scale_width < 16 || scale_width > static_cast<uint32_t>(w)) {
        *error = "screenshot: the width to scale to, " + std::to_string(scale_width) + ", is outside 16.." +
                 std::to_string(static_cast<uint32_t>(w)) + " (the image's own width; screenshots only scale down)";
        return false;
      }
      // Chromium rounds the clip's scaled size; aim at the middle of the pixel.
      scale = (scale_width + 0.25) / std::floor(w);
      w = std::floor(w);
    }
    params["clip"] = {{"x", x}, {"y", y}, {"width", w}, {"height", h}, {"scale", scale}};
  }
  if (!Call("Page.captureScreenshot", params, &result, error, 60000)) return false;
  if (!DecodeBase64(Str(result, "data"), image) || image->empty()) {
    *error = "screenshot: chromium sent no image";
    return false;
  }
  if (!ImageSize(*image, width, height)) {
    *error = "screenshot: chromium sent an image that is not " + format;
    return false;
  }
  return true;
}

bool Browser::EvaluateValue(const std::string& expression, int timeout_ms, json* value, std::string* error) {
  if (!Check(error)) return false;
  json result;
  const json params = {
      {"expression", expression}, {"returnByValue", true}, {"awaitPromise", true}, {"userGesture", true}};
  std::string e;
  if (!Call("Runtime.evaluate", params, &result, &e, timeout_ms)) {
    if (!Check(error)) return false;
    if (e.find("no answer within") == std::string::npos) {
      *error = "evaluate: " + e;
      return false;
    }
    // A script that does not stop: terminate it (handled off the page's main thread), then wait for the
    // evaluate's own answer, so the page is free again when we return.
    terminated_id_ = next_id_ - 1;
    terminated_answered_ = false;
    // The cleanup is short and must happen even at the call's deadline (the script would run on).
    const int64_t call_deadline = call_deadline_ms_;
    call_deadline_ms_ = 0;
    json ignored;
    std::string te;
    Call("Runtime.terminateExecution", json::object(), &ignored, &te, kTerminateWaitMs);
    const int64_t deadline = NowMs() + kTerminateWaitMs;
    while (!terminated_answered_ && NowMs() < deadline && Pump(deadline, &te)) {
    }
    terminated_id_ = 0;
    call_deadline_ms_ = call_deadline;
    if (!Check(error)) return false;
    *error = "evaluate: timed out after " + std::to_string(timeout_ms) + " ms (the script was terminated)";
    return false;
  }
  if (const json* details = Field(result, "exceptionDetails")) {
    *error = "evaluate: " + ExceptionText(*details);
    return false;
  }
  const json* r = Field(result, "result");
  const json* v = r != nullptr ? Field(*r, "value") : nullptr;
  *value = v != nullptr ? *v : json();
  return true;
}

bool Browser::Evaluate(const std::string& expression, int timeout_ms, size_t max_result_bytes, std::string* json_result,
                       std::string* error) {
  json value;
  if (!EvaluateValue(expression, timeout_ms, &value, error)) return false;
  *json_result = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (json_result->size() > max_result_bytes) {
    *error = "evaluate: the result is " + std::to_string(json_result->size()) + " bytes, over the limit of " +
             std::to_string(max_result_bytes);
    json_result->clear();
    return false;
  }
  return true;
}

bool Browser::Content(bool text, size_t max_bytes, std::string* out, bool* truncated, std::string* error) {
  json value;
  const char* expression = text ? "document.body ? document.body.innerText : ''"
                                : "document.documentElement ? document.documentElement.outerHTML : ''";
  if (!EvaluateValue(expression, 30000, &value, error)) return false;
  *out = value.is_string() ? value.get<std::string>() : std::string();
  *truncated = out->size() > max_bytes;
  if (*truncated) {
    size_t n = max_bytes;
    while (n > 0 && (static_cast<unsigned char>((*out)[n]) & 0xc0) == 0x80) --n;
    out->resize(n);
  }
  return true;
}

bool Browser::DispatchClick(double x, double y, std::string* error) {
  json result;
  for (const char* type : {"mouseMoved", "mousePressed", "mouseReleased"}) {
    json params = {{"type", type}, {"x", x}, {"y", y}};
    if (std::string(type) != "mouseMoved") {
      params["button"] = "left";
      params["buttons"] = std::string(type) == "mousePressed" ? 1 : 0;
      params["clickCount"] = 1;
    }
    if (!Call("Input.dispatchMouseEvent", params, &result, error, kInputTimeoutMs)) return false;
  }
  return true;
}

bool Browser::ClickAt(double x, double y, std::string* error) {
  if (!(x >= 0 && y >= 0)) {
    *error = "click: the point is outside the viewport";
    return false;
  }
  return DispatchClick(x, y, error);
}

bool Browser::Click(const std::string& selector, std::string* error) {
  const std::string expression =
      "(() => { const e = document.querySelector(" + json(selector).dump() +
      "); if (!e) return null; e.scrollIntoView({block: 'center', inline: 'center'});"
      " const r = e.getBoundingClientRect(); return {x: r.left + r.width / 2, y: r.top + r.height / 2,"
      " w: r.width, h: r.height}; })()";
  json box;
  if (!EvaluateValue(expression, kInputTimeoutMs, &box, error)) {
    *error = "click: " + *error;
    return false;
  }
  if (box.is_null()) {
    *error = "click: nothing matches the selector " + selector;
    return false;
  }
  if (Num(box, "w") <= 0 || Num(box, "h") <= 0) {
    *error = "click: the element " + selector + " is not visible (it has no box)";
    return false;
  }
  return DispatchClick(Num(box, "x"), Num(box, "y"), error);
}

bool Browser::Type(const std::string& text, const std::string& selector, std::string* error) {
  if (!selector.empty()) {
    const std::string expression = "(() => { const e = document.querySelector(" + json(selector).dump() +
                                   "); if (!e) return false; e.focus(); return true; })()";
    json found;
    if (!EvaluateValue(expression, kInputTimeoutMs, &found, error)) {
      *error = "type: " + *error;
      return false;
    }
    if (found != true) {
      *error = "type: nothing matches the selector " + selector;
      return false;
    }
  }
  json result;
  return Call("Input.insertText", {{"text", text}}, &result, error, kInputTimeoutMs);
}

bool Browser::Press(const std::string& key, std::string* error) {
  KeyInfo k;
  if (!LookupKey(key, &k)) {
    *error = "press: unknown key \"" + key + "\"";
    return false;
  }
  json down = {{"type", k.text.empty() ? "rawKeyDown" : "keyDown"}, {"key", k.key}};
  if (!k.code.empty()) down["code"] = k.code;
  if (k.vk != 0) down["windowsVirtualKeyCode"] = k.vk;
  if (!k.text.empty()) {
    down["text"] = k.text;
    down["unmodifiedText"] = k.text;
  }
  json up = {{"type", "keyUp"}, {"key", k.key}};
  if (!k.code.empty()) up["code"] = k.code;
  if (k.vk != 0) up["windowsVirtualKeyCode"] = k.vk;
  json result;
  return Call("Input.dispatchKeyEvent", down, &result, error, kInputTimeoutMs) &&
         Call("Input.dispatchKeyEvent", up, &result, error, kInputTimeoutMs);
}

bool Browser::WaitFor(const std::string& selector, const std::string& text, int timeout_ms, std::string* error) {
  if (selector.empty() && text.empty()) {
    *error = "wait_for: give a selector or a text";
    return false;
  }
  std::string expression = "(() => { ";
  if (!selector.empty()) expression += "if (!document.querySelector(" + json(selector).dump() + ")) return false; ";
  if (!text.empty()) {
    expression += "if (!document.body || !document.body.innerText.includes(" + json(text).dump() + ")) return false; ";
  }
  expression += "return true; })()";
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    json found;
    const int left = static_cast<int>(std::max<int64_t>(1000, deadline - NowMs()));
    if (!EvaluateValue(expression, left, &found, error)) {
      // A navigation in between destroys the context the evaluate ran in ("Execution context was destroyed",
      // "Cannot find context with specified id"), or Chromium answers an evaluate that was in flight when the
      // navigation began with "Inspected target navigated or closed": try again. A target that really closed
      // fails Check() or runs into the deadline.
      if (!Check(error)) return false;
      if (error->find("context") == std::string::npos &&
          error->find("Inspected target navigated or closed") == std::string::npos) {
        *error = "wait_for: " + *error;
        return false;
      }
    } else if (found == true) {
      return true;
    }
    if (NowMs() >= deadline) {
      *error = "wait_for: " + (selector.empty() ? "" : "the selector " + selector) +
               (selector.empty() || text.empty() ? "" : " and ") + (text.empty() ? "" : "the text \"" + text + "\"") +
               " did not appear within " + std::to_string(timeout_ms) + " ms";
      return false;
    }
    // Sleep 100 ms, reading events meanwhile.
    const int64_t until = std::min(deadline, NowMs() + 100);
    while (NowMs() < until) {
      if (!Pump(until, error)) return false;
    }
  }
}

bool Browser::WaitForDownload(int timeout_ms, std::string* error) {
  if (download_dir_.empty()) {
    *error = "wait_for: downloads are off in this browser";
    return false;
  }
  const int64_t deadline = NowMs() + timeout_ms;
  for (;;) {
    // One finished download per wait, whenever it finished (the call before may already have reported it).
    if (downloads_finished_ > downloads_waited_) {
      ++downloads_waited_;
      return true;
    }
    if (NowMs() >= deadline) {
      *error = "wait_for: no download finished within " + std::to_string(timeout_ms) + " ms (" +
               std::to_string(downloads_.size()) + " in progress)";
      return false;
    }
    if (!Pump(deadline, error)) return false;
  }
}

bool Browser::SetViewport(uint32_t width, uint32_t height, std::string* error) {
  if (!CheckSize(width, height, error)) return false;
  json result;
  return Call("Emulation.setDeviceMetricsOverride",
              {{"width", width}, {"height", height}, {"deviceScaleFactor", 1}, {"mobile", false}}, &result, error,
              kInputTimeoutMs);
}

// ---- Storage state (Playwright's storageState) ----

namespace {

// "https://a.example:8443/x?y" -> "https://a.example:8443"; "" for what has no web origin (about:, data:...).
std::string OriginOf(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  const std::string s = url.substr(0, scheme);
  if (s != "http" && s != "https") return "";
  const size_t end = url.find_first_of("/?#", scheme + 3);
  return url.substr(0, end);
}

}  // namespace

bool Browser::ImportStorageState(const std::string& state_json, std::string* error) {
  const json state = json::parse(state_json, nullptr, false);
  if (!state.is_object() || TooDeep(state, 64)) {
    *error = "storage state: not a JSON object (Playwright's storageState: {\"cookies\": [...], \"origins\": [...]})";
    return false;
  }
  json result;
  if (const json* cookies = Field(state, "cookies"); cookies != nullptr) {
    if (!cookies->is_array()) {
      *error = "storage state: \"cookies\" is not an array";
      return false;
    }
    json params = json::array();
    for (const json& c : *cookies) {
      if (!c.is_object() || Str(c, "name").empty()) {
        *error = "storage state: a cookie without a name";
        return false;
      }
      json p = {{"name", Str(c, "name")}, {"value", Str(c, "value")}, {"domain", Str(c, "domain")},
                {"path", Str(c, "path").empty() ? "/" : Str(c, "path")}};
      if (const json* v = Field(c, "httpOnly"); v != nullptr && v->is_boolean()) p["httpOnly"] = *v;
      if (const json* v = Field(c, "secure"); v != nullptr && v->is_boolean()) p["secure"] = *v;
      const std::string same_site = Str(c, "sameSite");
      if (same_site == "Strict" || same_site == "Lax" || same_site == "None") p["sameSite"] = same_site;
      if (const double expires = Num(c, "expires", -1); expires > 0) p["expires"] = expires;
      params.push_back(std::move(p));
    }
    if (!params.empty() && !Call("Storage.setCookies", {{"cookies", params}}, &result, error, kInputTimeoutMs, true)) {
      return false;
    }
  }
  if (const json* origins = Field(state, "origins"); origins != nullptr) {
    if (!origins->is_array()) {
      *error = "storage state: \"origins\" is not an array";
      return false;
    }
    // localStorage belongs to a frame of its origin: the page is navigated to each origin with the request
    // answered here (Fetch: no network, nothing for the proxy to see), the items are set by script, and the
    // page goes back to about:blank. Runs before the session is handed out.
    bool fetching = false;
    for (const json& o : *origins) {
      const std::string origin = OriginOf(Str(o, "origin"));
      if (origin.empty()) {
        *error = "storage state: an origin that is not http(s)://HOST[:PORT]: \"" + Cut(Str(o, "origin"), 200) + "\"";
        return false;
      }
      const json* items = Field(o, "localStorage");
      if (items == nullptr || !items->is_array() || items->empty()) continue;
      json pairs = json::array();
      for (const json& item : *items) pairs.push_back(json::array({Str(item, "name"), Str(item, "value")}));
      if (!fetching) {
        if (!Call("Fetch.enable", {{"patterns", json::array({{{"urlPattern", "*"}}})}}, &result, error, kInputTimeoutMs)) {
          return false;
        }
        fetching = true;
      }
      const int64_t deadline = NowMs() + kInputTimeoutMs;
      paused_requests_.clear();
      json navigate = {{"id", next_id_++}, {"method", "Page.navigate"}, {"params", {{"url", origin + "/"}}},
                       {"sessionId", session_id_}};
      if (!Send(navigate, deadline, error)) return false;  // its answer comes after the fulfilment; dropped
      while (paused_requests_.empty()) {
        if (NowMs() >= deadline) {
          *error = "storage state: loading " + origin + " for its localStorage: no request to answer";
          return false;
        }
        if (!Pump(deadline, error)) return false;
      }
      // "<html></html>", base64
      if (!Call("Fetch.fulfillRequest",
                {{"requestId", paused_requests_.front()},
                 {"responseCode", 200},
                 {"responseHeaders", json::array({{{"name", "Content-Type"}, {"value", "text/html"}}})},
                 {"body", "PGh0bWw+PC9odG1sPg=="}},
                &result, error, kInputTimeoutMs)) {
        return false;
      }
      json value;
      std::string e;
      while (!EvaluateValue("location.origin", kInputTimeoutMs, &value, &e) || value != origin) {
        if (NowMs() >= deadline) {
          *error = "storage state: " + origin + " did not load for its localStorage" + (e.empty() ? "" : ": " + e);
          return false;
        }
        SleepMs(20);
      }
      if (!EvaluateValue("(() => { for (const [k, v] of " + pairs.dump(-1, ' ', true) +
                             ") localStorage.setItem(k, v); return true; })()",
                         kInputTimeoutMs, &value, error)) {
        return false;
      }
      if (storage_origins_.size() < 1000) storage_origins_.insert(origin);
    }
    if (fetching) {
      if (!Call("Fetch.disable", json::object(), &result, error, kInputTimeoutMs)) return false;
      if (!Navigate("about:blank", "load", kInputTimeoutMs, error)) return false;
    }
  }
  return true;
}

bool Browser::ExportStorageState(std::string* state_json, std::string* error) {
  json result;
  if (!Call("Storage.getCookies", json::object(), &result, error, kInputTimeoutMs, true)) return false;
  json cookies = json::array();
  if (const json* list = Field(result, "cookies"); list != nullptr && list->is_array()) {
    for (const json& c : *list) {
      cookies.push_back({{"name", Str(c, "name")},
                         {"value", Str(c, "value")},
                         {"domain", Str(c, "domain")},
                         {"path", Str(c, "path")},
                         {"expires", Field(c, "session") != nullptr && (*Field(c, "session")) == true ? -1.0 : Num(c, "expires", -1)},
                         {"httpOnly", Field(c, "httpOnly") != nullptr && (*Field(c, "httpOnly")) == true},
                         {"secure", Field(c, "secure") != nullptr && (*Field(c, "secure")) == true},
                         {"sameSite", Str(c, "sameSite").empty() ? "Lax" : Str(c, "sameSite")}});
    }
  }
  // Each origin's localStorage is read in a page of that origin (DOMStorage needs a frame of it): the pages
  // open now, attached to for the occasion. Origins imported but not open now are not exported.
  std::map<std::string, std::string> origin_targets;  // origin -> a page target showing it
  if (!Call("Target.getTargets", json::object(), &result, error, kInputTimeoutMs, true)) return false;
  if (const json* infos = Field(result, "targetInfos"); infos != nullptr && infos->is_array()) {
    for (const json& t : *infos) {
      const std::string origin = Str(t, "type") == "page" ? OriginOf(Str(t, "url")) : "";
      if (!origin.empty() && origin_targets.size() < 100) origin_targets.emplace(origin, Str(t, "targetId"));
    }
  }
  json out_origins = json::array();
  for (const auto& [origin, target] : origin_targets) {
    std::string session = session_id_;
    const bool own = target == target_id_;
    if (!own) {
      if (!Call("Target.attachToTarget", {{"targetId", target}, {"flatten", true}}, &result, error, kInputTimeoutMs,
                true)) {
        continue;  // closed meanwhile
      }
      session = Str(result, "sessionId");
    }
    json items = json::array();
    json value;
    const bool read = CallIn(session, "Runtime.evaluate",
                             {{"expression", "JSON.stringify(Object.entries(localStorage))"}, {"returnByValue", true}},
                             &value, error, kInputTimeoutMs);
    if (!own) {
      json ignored;
      std::string e;
      Call("Target.detachFromTarget", {{"sessionId", session}}, &ignored, &e, kInputTimeoutMs, true);
    }
    if (!read) return false;
    const json* r = Field(value, "result");
    const json entries = r != nullptr && Field(*r, "value") != nullptr && Field(*r, "value")->is_string()
                             ? json::parse(Field(*r, "value")->get<std::string>(), nullptr, false)
                             : json();
    if (entries.is_array()) {
      for (const json& e : entries) {
        if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          items.push_back({{"name", e[0]}, {"value", e[1]}});
        }
      }
    }
    if (!items.empty()) out_origins.push_back({{"origin", origin}, {"localStorage", std::move(items)}});
  }
  // ASCII only (ensure_ascii): what a page stored cannot put terminal controls into a printed state.
  *state_json = json{{"cookies", std::move(cookies)}, {"origins", std::move(out_origins)}}.dump(-1, ' ', true);
  return true;
}

// ---- The external CDP client ----

namespace {

json ErrorAnswer(const json& id, const std::string& message) {
  return {{"id", id}, {"error", {{"code", -32000}, {"message", message}}}};
}

}  // namespace

CdpMux::FromClientResult CdpMux::FromClient(std::string_view text) {
  FromClientResult out;
  json message = json::parse(text.begin(), text.end(), nullptr, false);
  if (message.is_discarded() || !message.is_object() || TooDeep(message, kMaxDepth)) {
    out.to_client = ErrorAnswer(0, "the message is not a JSON object");
    return out;
  }
  const json* id = Field(message, "id");
  if (id == nullptr || !id->is_number_integer()) {
    out.to_client = ErrorAnswer(0, "a command needs an integer \"id\"");
    return out;
  }
  const json client_id = *id;
  const std::string method = Str(message, "method");
  if (method.empty()) {
    out.to_client = ErrorAnswer(client_id, "a command needs a \"method\"");
    return out;
  }
  const std::string session = Str(message, "sessionId");
  static const json kEmpty = json::object();
  const json* params_p = Field(message, "params");
  const json& params = params_p != nullptr ? *params_p : kEmpty;
  // An answer given here carries the command's sessionId, as Chromium's do: clients route answers by it.
  auto answer = [&](json a) {
    if (!session.empty()) a["sessionId"] = session;
    return a;
  };
  auto refuse = [&](const std::string& why) {
    out.to_client = answer(ErrorAnswer(client_id, method + " is refused in this sandbox: " + why));
    return out;
  };
  if (!driver_session_.empty() && session == driver_session_) {
    return refuse("that session is the sandbox's own driver");
  }
  if (method == "Browser.close") {
    // The session's browser goes on: only this connection ends.
    out.to_client = answer(json{{"id", client_id}, {"result", json::object()}});
    out.close = true;
    return out;
  }
  if (method == "Browser.crash" || method == "Browser.crashGpuProcess") {
    return refuse("it would take the session's browser down");
  }
  if (method == "Target.setRemoteLocations" || method.rfind("Tethering.", 0) == 0) {
    return refuse("it would reach other hosts or open a port inside the jail");
  }
  if (method == "Target.exposeDevToolsProtocol") return refuse("it would hand the protocol to a page's script");
  if (method == "Target.closeTarget" && Str(params, "targetId") == driver_target_ && !driver_target_.empty()) {
    return refuse("that page is the session's own (its browser tool calls use it)");
  }
  if (method == "Page.close") {
    auto it = sessions_.find(session);
    if (it != sessions_.end() && it->second == driver_target_ && !driver_target_.empty()) {
      return refuse("that page is the session's own (its browser tool calls use it)");
    }
  }
  if (method == "Target.detachFromTarget" && !driver_session_.empty() &&
      Str(params, "sessionId") == driver_session_) {
    return refuse("that session is the sandbox's own driver");
  }
  if (method == "Browser.setDownloadBehavior" || method == "Page.setDownloadBehavior") {
    const std::string behavior = Str(params, "behavior");
    if (behavior == "allow" || behavior == "allowAndName") {
      if (download_dir_.empty()) return refuse("downloads are off in this session");
      // The client's path is one of its own machine; the files stay in the jail's download directory.
      message["params"]["downloadPath"] = download_dir_;
    } else if (Field(params, "downloadPath") != nullptr) {
      message["params"].erase("downloadPath");
    }
  }
  if (pending_.size() >= kMaxInFlight) {
    out.to_client = answer(ErrorAnswer(client_id, "too many commands awaiting answers (" + std::to_string(kMaxInFlight) + ")"));
    return out;
  }
  const int64_t internal = next_id_++;
  if (next_id_ >= kCleanupIdBase) next_id_ = kClientIdBase;
  pending_[internal] = Pending{client_id, method};
  message["id"] = internal;
  out.to_browser = std::move(message);
  return out;
}

CdpMux::Route CdpMux::FromBrowser(json* message) {
  if (const json* id = Field(*message, "id"); id != nullptr && id->is_number_integer()) {
    const int64_t got = id->get<int64_t>();
    if (got < kClientIdBase) return Route::kDriver;
    auto it = pending_.find(got);
    if (it == pending_.end()) return Route::kDrop;  // our cleanup's, or a stale one
    const Pending p = std::move(it->second);
    pending_.erase(it);
    (*message)["id"] = p.client_id;
    if (const json* result = Field(*message, "result")) {
      if (p.method == "Target.attachToTarget" || p.method == "Target.attachToBrowserTarget") {
        const std::string sid = Str(*result, "sessionId");
        if (!sid.empty() && sid != driver_session_ && sessions_.size() < 100000) sessions_.emplace(sid, "");
      } else if (p.method == "Target.createTarget") {
        const std::string tid = Str(*result, "targetId");
        if (!tid.empty() && created_targets_.size() < 100000) created_targets_.insert(tid);
      } else if (p.method == "Target.createBrowserContext") {
        const std::string cid = Str(*result, "browserContextId");
        if (!cid.empty() && created_contexts_.size() < 100000) created_contexts_.insert(cid);
      }
    }
    return Route::kClient;
  }
  const std::string method = Str(*message, "method");
  const std::string session = Str(*message, "sessionId");
  if (const json* params = Field(*message, "params")) {
    if (method == "Target.attachedToTarget") {
      const std::string sid = Str(*params, "sessionId");
      const json* info = Field(*params, "targetInfo");
      if (!sid.empty() && sid != driver_session_ && sessions_.size() < 100000) {
        sessions_[sid] = info != nullptr ? Str(*info, "targetId") : "";
      }
    } else if (method == "Target.detachedFromTarget") {
      sessions_.erase(Str(*params, "sessionId"));
    } else if (method == "Target.targetDestroyed") {
      created_targets_.erase(Str(*params, "targetId"));
    }
  }
  if (session.empty()) {
    // The driver's own attachment is none of the client's business.
    if (method == "Target.attachedToTarget" || method == "Target.detachedFromTarget") {
      if (const json* params = Field(*message, "params"); params != nullptr && Str(*params, "sessionId") == driver_session_) {
        return Route::kDriver;
      }
    }
    return Route::kBoth;
  }
  return session == driver_session_ ? Route::kDriver : Route::kClient;
}

std::vector<json> CdpMux::Disconnect() {
  std::vector<json> out;
  auto add = [&](const char* method, json params) {
    out.push_back({{"id", next_cleanup_id_++}, {"method", method}, {"params", std::move(params)}});
    if (next_cleanup_id_ >= int64_t{0x7fffffff}) next_cleanup_id_ = kCleanupIdBase;
  };
  for (const auto& [sid, target] : sessions_) add("Target.detachFromTarget", {{"sessionId", sid}});
  for (const std::string& tid : created_targets_) {
    if (tid != driver_target_) add("Target.closeTarget", {{"targetId", tid}});
  }
  for (const std::string& cid : created_contexts_) add("Target.disposeBrowserContext", {{"browserContextId", cid}});
  sessions_.clear();
  created_targets_.clear();
  created_contexts_.clear();
  pending_.clear();
  return out;
}

bool Browser::ClientOpen(std::string* error) {
  std::lock_guard<std::mutex> lock(client_mu_);
  if (client_connected_) {
    *error = "a CDP client is already connected to this browser (one at a time)";
    return false;
  }
  client_connected_ = true;
  client_out_ = ClientOutput{};
  client_inbox_.push_back(ClientInputItem{true, false, {}, {}});
  const uint64_t one = 1;
  ssize_t unused = write(client_input_fd_, &one, sizeof(one));
  (void)unused;
  return true;
}

void Browser::ClientInput(std::string data, bool close) {
  std::lock_guard<std::mutex> lock(client_mu_);
  if (!client_connected_) return;
  if (client_inbox_bytes_ + data.size() > kMaxClientMessageBytes + (1 << 20)) {
    // The browser is not taking what the client sends: cut it off.
    client_inbox_.push_back(ClientInputItem{false, true, {}, "the CDP client sent more than the browser took in"});
  } else {
    client_inbox_bytes_ += data.size();
    client_inbox_.push_back(ClientInputItem{false, close, std::move(data), {}});
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_input_fd_, &one, sizeof(one));
  (void)unused;
}

Browser::ClientOutput Browser::TakeClientOutput() {
  uint64_t count = 0;
  ssize_t unused = read(client_event_fd_, &count, sizeof(count));
  (void)unused;
  std::lock_guard<std::mutex> lock(client_mu_);
  ClientOutput out = std::move(client_out_);
  client_out_ = ClientOutput{};
  if (out.ended) client_connected_ = false;
  return out;
}

void Browser::PushClient(const json& message) {
  std::string text = message.dump(-1, ' ', false, json::error_handler_t::replace);
  bool cut = false;
  {
    std::lock_guard<std::mutex> lock(client_mu_);
    if (client_out_.ended) return;
    if (client_out_.data.size() + text.size() > kMaxClientBacklogBytes) {
      cut = true;
    } else {
      client_out_.data.append(text);
      client_out_.data.push_back('\0');
    }
  }
  if (cut) {
    EndClient("the CDP client fell behind: over " + std::to_string(kMaxClientBacklogBytes >> 20) +
              " MiB of messages waited for it");
    return;
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_event_fd_, &one, sizeof(one));
  (void)unused;
}

void Browser::PushClientEnd(const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(client_mu_);
    if (client_out_.ended || !client_connected_) return;
    client_out_.ended = true;
    client_out_.error = error;
    client_inbox_.clear();
    client_inbox_bytes_ = 0;
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_event_fd_, &one, sizeof(one));
  (void)unused;
}

void Browser::EndClient(const std::string& error) {
  if (mux_) {
    std::vector<json> cleanup = mux_->Disconnect();
    mux_.reset();
    client_in_.clear();
    std::string e;
    for (const json& command : cleanup) {
      if (gone_ || !Send(command, NowMs() + kInputTimeoutMs, &e)) break;
    }
  }
  PushClientEnd(error);
}

void Browser::FlushClientInput() {
  if (flushing_) return;  // Send pumps while Chromium is not reading: no recursion
  flushing_ = true;
  if (client_input_fd_ >= 0) {
    uint64_t count = 0;
    ssize_t unused = read(client_input_fd_, &count, sizeof(count));
    (void)unused;
  }
  for (;;) {
    ClientInputItem item;
    {
      std::lock_guard<std::mutex> lock(client_mu_);
      if (client_inbox_.empty()) break;
      item = std::move(client_inbox_.front());
      client_inbox_.pop_front();
      client_inbox_bytes_ -= std::min(client_inbox_bytes_, item.data.size());
    }
    if (item.open) {
      if (mux_) EndClient("");  // a previous client's leftovers
      {
        std::lock_guard<std::mutex> lock(client_mu_);
        client_connected_ = true;
        client_out_ = ClientOutput{};
      }
      mux_.emplace(session_id_, target_id_, download_dir_);
      client_in_.clear();
      continue;
    }
    if (!mux_) continue;
    client_in_.append(item.data);
    size_t start = 0;
    bool closed = false;
    for (;;) {
      const size_t nul = client_in_.find('\0', start);
      if (nul == std::string::npos) break;
      CdpMux::FromClientResult r = mux_->FromClient(std::string_view(client_in_).substr(start, nul - start));
      start = nul + 1;
      if (r.to_client) PushClient(*r.to_client);
      std::string e;
      if (r.to_browser && !Send(*r.to_browser, NowMs() + kInputTimeoutMs, &e)) {
        EndClient("sending to the browser: " + e);
        closed = true;
        break;
      }
      if (r.close) {
        EndClient("");
        closed = true;
        break;
      }
    }
    if (closed) continue;
    client_in_.erase(0, start);
    if (client_in_.size() > kMaxClientMessageBytes) {
      EndClient("the CDP client sent a message over " + std::to_string(kMaxClientMessageBytes >> 20) + " MiB");
      continue;
    }
    if (item.close) EndClient(item.error);
  }
  flushing_ = false;
}

void Browser::RelayPump() {
  std::string e;
  FlushClientInput();
  if (!gone_) Pump(NowMs(), &e);
  if (gone_ && mux_) EndClient(GoneMessage());
}


}  // namespace sbx::init
