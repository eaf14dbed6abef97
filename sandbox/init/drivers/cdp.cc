#include "sandbox/init/drivers/cdp.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/cdp_internal.h"

namespace sbx::init {

// ---- Start and stop ----

namespace {

// The configuration's own faults, before anything starts.
bool CheckConfig(const BrowserConfig& config, std::string* error) {
  if (!CheckSize(config.width, config.height, error)) return false;
  if (config.profile_dir.empty()) {
    *error = "the browser needs a profile directory";
    return false;
  }
  if (config.chromium_path.empty()) {
    *error = "the chromium path is empty";
    return false;
  }
  return true;
}

// Chromium's command line: ours, then the configuration's extra flags, then the first page.
std::vector<std::string> ChromiumArgv(const BrowserConfig& config) {
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
  return argv;
}

// What is left of `deadline` in ms for a call (at least 1).
int MsLeft(int64_t deadline) { return static_cast<int>(std::max<int64_t>(1, deadline - NowMs())); }

}  // namespace

std::unique_ptr<Browser> Browser::Start(const BrowserConfig& config, std::string* error) {
  if (!CheckConfig(config, error)) return nullptr;
  std::unique_ptr<Browser> b(new Browser());
  // Chromium's output goes to a memfd: nothing has to drain it, and its tail explains a failure.
  b->log_fd_ = internal::OutputMemfd("chromium");
  b->client_event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  b->client_input_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  std::string e;
  bool ok = b->SpawnChromium(config, &e);
  if (ok) {
    const int64_t deadline = NowMs() + config.start_timeout_ms;
    ok = b->AttachToPage(deadline, &e) && b->SetUpPage(config, deadline, &e);
  }
  if (!ok) {
    *error = e;
    const std::string tail = ChromiumOutputTail(b->log_fd_);
    if (!tail.empty() && error->find("chromium said") == std::string::npos) *error += " (chromium said: " + tail + ")";
    return nullptr;  // ~Browser kills and reaps what was started
  }
  b->TakeEvents();  // nothing the user did
  error->clear();
  return b;
}

bool Browser::SpawnChromium(const BrowserConfig& config, std::string* error) {
  int cmd[2], resp[2];  // cmd: we write, Chromium reads (its fd 3); resp: Chromium writes (its fd 4), we read
  if (pipe2(cmd, O_CLOEXEC) < 0) {
    *error = ErrnoMessage("pipe2", errno);
    return false;
  }
  if (pipe2(resp, O_CLOEXEC) < 0) {
    close(cmd[0]);
    close(cmd[1]);
    *error = ErrnoMessage("pipe2", errno);
    return false;
  }
  to_chromium_ = cmd[1];
  from_chromium_ = resp[0];
  fcntl(cmd[1], F_SETFL, O_NONBLOCK);
  fcntl(resp[0], F_SETFL, O_NONBLOCK);
  std::string spawn_error;
  // Chromium reads commands on fd 3 and writes responses and events on fd 4.
  pid_ = SpawnInSession(ChromiumArgv(config), config.env, log_fd_, {{cmd[0], 3}, {resp[1], 4}}, &spawn_error);
  close(cmd[0]);
  close(resp[1]);
  if (pid_ < 0) {
    *error = "starting chromium: " + spawn_error;
    return false;
  }
  return true;
}

bool Browser::AttachToPage(int64_t deadline, std::string* error) {
  json result;
  std::string e;
  if (!Call("Target.getTargets", json::object(), &result, &e, MsLeft(deadline), true)) {
    *error = "chromium did not answer: " + e;
    return false;
  }
  if (const json* infos = Field(result, "targetInfos"); infos != nullptr && infos->is_array()) {
    for (const json& t : *infos) {
      if (Str(t, "type") == "page") {
        target_id_ = Str(t, "targetId");
        break;
      }
    }
  }
  if (target_id_.empty()) {
    if (!Call("Target.createTarget", {{"url", "about:blank"}}, &result, &e, MsLeft(deadline), true)) {
      *error = "creating a page: " + e;
      return false;
    }
    target_id_ = Str(result, "targetId");
  }
  if (!Call("Target.attachToTarget", {{"targetId", target_id_}, {"flatten", true}}, &result, &e, MsLeft(deadline),
            true)) {
    *error = "attaching to the page: " + e;
    return false;
  }
  session_id_ = Str(result, "sessionId");
  if (session_id_.empty()) {
    *error = "attaching to the page: no session id";
    return false;
  }
  return true;
}

bool Browser::SetUpPage(const BrowserConfig& config, int64_t deadline, std::string* error) {
  json result;
  std::string e;
  download_dir_ = config.download_dir;
  json downloads = {{"behavior", "deny"}};
  if (!config.download_dir.empty()) {
    downloads = {{"behavior", "allowAndName"}, {"downloadPath", config.download_dir}, {"eventsEnabled", true}};
  }
  if (!Call("Browser.setDownloadBehavior", downloads, &result, &e, MsLeft(deadline), true)) {
    *error = "Browser.setDownloadBehavior: " + e;
    return false;
  }
  for (const char* method : {"Page.enable", "Runtime.enable", "Network.enable", "Log.enable"}) {
    if (!Call(method, json::object(), &result, &e, MsLeft(deadline))) {
      *error = std::string(method) + ": " + e;
      return false;
    }
  }
  if (!Call("Page.setLifecycleEventsEnabled", {{"enabled", true}}, &result, &e, MsLeft(deadline))) {
    *error = "Page.setLifecycleEventsEnabled: " + e;
    return false;
  }
  if (!SetViewport(config.width, config.height, &e)) {
    *error = e;
    return false;
  }
  return true;
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
  if (session.empty()) return HandleBrowserEvent(method, params);
  if (session != session_id_) return;
  HandlePageEvent(method, params);
}

void Browser::HandleBrowserEvent(const std::string& method, const json& params) {
  if (method == "Browser.downloadWillBegin") {
    ++downloads_begun_;
    if (downloads_.size() < 1000) {
      downloads_[Str(params, "guid")] = {{"url", Cut(Str(params, "url"), 2048)},
                                         {"suggested_filename", Cut(Str(params, "suggestedFilename"), 1024)}};
    }
    last_download_guid_ = Str(params, "guid");
  } else if (method == "Browser.downloadProgress") {
    HandleDownloadProgress(params);
  } else if (method == "Target.detachedFromTarget" && Str(params, "sessionId") == session_id_ &&
             !session_id_.empty()) {
    MarkGone("the page was closed");
  } else if (method == "Target.targetCrashed" && Str(params, "targetId") == target_id_) {
    crashed_ = true;
  }
}

void Browser::HandleDownloadProgress(const json& params) {
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
}

void Browser::HandlePageEvent(const std::string& method, const json& params) {
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


}  // namespace sbx::init
