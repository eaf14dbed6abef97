// The browser side of browser sessions: sandbox-init starts headless Chromium inside the jail with
// --remote-debugging-pipe and drives it over the Chrome DevTools Protocol (CDP): commands go to Chromium's fd 3,
// responses and events come back on its fd 4, each message a JSON text terminated by a NUL byte. No debugging
// port is opened. Pure C++ plus nlohmann-json (header-only); no abseil, no protobuf, no global state
// (sandbox-init links it statically).
#ifndef SBX_SANDBOX_INIT_DRIVERS_CDP_H_
#define SBX_SANDBOX_INIT_DRIVERS_CDP_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "base/mutex.h"

namespace sbx::init {

struct BrowserConfig {
  std::string chromium_path = "/usr/lib/chromium/chromium";  // the real binary, not Debian's /usr/bin wrapper
  std::string profile_dir;              // --user-data-dir: required, writable, private to this browser
  uint32_t width = 1280, height = 800;  // the viewport, 64..7680 x 64..4320, else Start fails
  std::string proxy;                    // --proxy-server when set, e.g. "http://127.0.0.1:3128"
  // --disable-dev-shm-usage: what Chromium would put in /dev/shm goes to TMPDIR instead (a jail's /dev/shm may
  // be small or absent). NOTE: most of its shared memory is memfd_create, which needs neither.
  bool disable_dev_shm_usage = true;
  // Where downloads go. Chromium saves each under its GUID; once complete it is renamed to the page's suggested
  // name, made safe ("report.pdf", never a path, a hidden file or a replaced file: "report (1).pdf").
  // Empty: downloads are refused.
  std::string download_dir;
  std::vector<std::string> env;          // Chromium's whole environment ("HOME=...", "PATH=...", "TZ=...")
  std::vector<std::string> extra_flags;  // appended after ours (tests, tuning)
  int start_timeout_ms = 20000;          // until the first page is attached and its domains are enabled
};

// The external CDP client's half of the browser's one pipe (Playwright or Puppeteer through the Cdp RPC):
// sandbox-init's own driver (Browser) and one client share it. Pure logic, no I/O (tests/unit/cdp_mux_test.cc).
// - Ids: the client's command ids are rewritten into [kClientIdBase, kCleanupIdBase) (the driver counts up from
//   1; the client's range wraps) and mapped back on the answers; answers to our own cleanup commands (kCleanupIdBase and up) are dropped.
// - Events: those of the driver's page session go to the driver only; those of any other session to the client
//   (one client at a time, so every other session is the client's); browser-level ones (no sessionId:
//   Target.targetCreated, Browser.downloadProgress...) to both.
// - Rules: the client gets no more than the session's policy. Refused (answered with an error, never sent):
//     Browser.crash, Browser.crashGpuProcess: would take the session's browser down;
//     Target.setRemoteLocations, Tethering.bind: would open ports / reach other hosts from inside the jail;
//     Target.exposeDevToolsProtocol: hands CDP to a page's script, around these rules;
//     Target.closeTarget / Page.close of the session's own page, Target.detachFromTarget of the driver's
//     session, any command on the driver's session: the session's browser tool calls need that page.
//   Browser.close is answered with success and ends the client's connection only (the session goes on).
//   Browser.setDownloadBehavior / Page.setDownloadBehavior: the downloadPath (the client's own, a host path
//   of its machine) is replaced by the session's download directory inside the jail, or refused when
//   downloads are off.
// - Disconnect: the client's sessions are detached (Target.detachFromTarget), the targets and browser contexts
//   it created closed (Playwright expects its contexts gone), so a reconnecting client starts clean.
class CdpMux {
 public:
  // NOTE: Chromium takes only ids that fit an int32 ("Message must have integer 'id' property").
  static constexpr int64_t kClientIdBase = int64_t{1} << 30;
  static constexpr int64_t kCleanupIdBase = 2'000'000'000;
  static constexpr size_t kMaxInFlight = 100000;  // the client's commands awaiting answers

  CdpMux(std::string driver_session, std::string driver_target, std::string download_dir)
      : driver_session_(std::move(driver_session)),
        driver_target_(std::move(driver_target)),
        download_dir_(std::move(download_dir)) {}

  struct FromClientResult {
    std::optional<nlohmann::json> to_browser;  // the command, its id rewritten
    std::optional<nlohmann::json> to_client;   // an answer given here (a refusal; Browser.close's success)
    bool close = false;                        // then end the client's connection (Browser.close)
  };
  // One message from the client (a CDP JSON text).
  FromClientResult FromClient(std::string_view text);

  enum class Route { kDriver, kClient, kBoth, kDrop };
  // Where one message from Chromium goes; an answer to the client gets the client's id back in *message.
  Route FromBrowser(nlohmann::json* message);

  // Commands that undo what the client set up (sent when it goes; their answers are dropped).
  std::vector<nlohmann::json> Disconnect();

  size_t client_sessions() const { return sessions_.size(); }

 private:
  struct Pending {
    nlohmann::json client_id;
    std::string method;
  };
  // Why a client's command (not Browser.close) is refused by the rules above, or "" when it may go on.
  std::string Refusal(const std::string& method, const std::string& session, const nlohmann::json& params) const;
  const std::string driver_session_, driver_target_, download_dir_;
  int64_t next_id_ = kClientIdBase;
  int64_t next_cleanup_id_ = kCleanupIdBase;
  std::map<int64_t, Pending> pending_;
  std::map<std::string, std::string> sessions_;  // the client's session id -> its target id
  std::set<std::string> created_targets_, created_contexts_;
};

// A running headless Chromium and the CDP connection to its first page target (a flat session). Owns the
// Chromium process, started in its own session (process group): the destructor sends Browser.close, waits a
// moment, then SIGTERMs and SIGKILLs the group and reaps the process.
// NOTE: the owner reaps children with waitpid(-1) (sandbox-init is PID 1) and must call ChildExited when it
// reaps pid(). Apart from Start's failure path and the destructor, nothing here reaps it (a closed pipe is
// described with waitid(WNOWAIT), which leaves the child to the reaper).
// NOTE: writing to a dead Chromium's pipe raises SIGPIPE; the process must ignore it (sandbox-init does).
// Not thread-safe: one thread at a time (sandbox-init runs the calls on a worker thread and hands the object
// over explicitly, see DriverLane in sandbox/init/driver_lane.h); every call blocks until Chromium answered or
// its timeout passed.
class Browser {
 public:
  // Spawns Chromium (flags in cdp.cc), attaches to its first page target, enables the Page, Runtime, Network
  // and Log domains and sets the viewport. Returns nullptr and sets *error (with the tail of Chromium's output)
  // on failure, after killing and reaping what it started.
  static std::unique_ptr<Browser> Start(const BrowserConfig& config, std::string* error);
  ~Browser();
  Browser(const Browser&) = delete;
  Browser& operator=(const Browser&) = delete;

  pid_t pid() const { return pid_; }  // -1 once it exited
  // The reaper reaped `pid` with wait status `status`: if it is Chromium, the browser is dead and every call
  // fails naming how it ended.
  void ChildExited(pid_t pid, int status);
  bool alive() const { return !gone_; }

  // The running call's deadline on internal::NowMs's clock (0: none): every CDP command of the call waits at
  // most until then, whatever its own timeout (the short cleanup after a timed-out script excepted). The
  // owner sets it around each call.
  void set_call_deadline_ms(int64_t deadline_ms) { call_deadline_ms_ = deadline_ms; }
  // An fd (an eventfd; not owned, -1: none) that, once readable, ends every wait at once with "canceled"
  // (sandbox-init is ending). It must stay open as long as this object.
  void set_cancel_fd(int fd) { cancel_fd_ = fd; }

  // Every call below returns false and sets *error when it fails. Chromium gone (exited, closed its pipe or
  // broke the framing): "the browser is gone (...)"; the page crashed: "the page crashed" (until a Navigate
  // succeeds).

  // Sends one CDP command to the page session (or to the browser when `browser_level`) and waits up to
  // timeout_ms for its response; events read meanwhile update the page state and the event queue. A CDP error
  // response sets *error to its message (and data); *result gets the response's "result" object.
  bool Call(const std::string& method, const nlohmann::json& params, nlohmann::json* result, std::string* error,
            int timeout_ms = 30000, bool browser_level = false);

  // Page.navigate, then waits for the page's load event ("load") or, after it, for no network request in
  // flight for 500 ms ("networkidle"). A navigation error (net::ERR_..., a bad URL) is an error; an HTTP error
  // status is not (it is a page). A same-document navigation (#fragment) returns at once, and so does one that
  // turned into a download waits for the download to finish (a "download" event reports it; with no
  // download_dir it is net::ERR_ABORTED).
  bool Navigate(const std::string& url, const std::string& wait, int timeout_ms, std::string* error);

  // A PNG ("png") or JPEG ("jpeg", quality 1..100) of the viewport, or of the whole page (up to 16384 CSS px
  // tall), scaled down to scale_width pixels wide when it is not 0 (16 up to the image's own width; the
  // height keeps the aspect ratio). *image gets the encoded bytes, *width/*height its size in pixels.
  bool Screenshot(bool full_page, const std::string& format, int quality, uint32_t scale_width, std::string* image,
                  uint32_t* width, uint32_t* height, std::string* error);

  // Evaluates a JavaScript expression in the page (awaiting a promise) and sets *json_result to the value as
  // JSON text ("2", "{\"a\":1}"; undefined is "null"). A thrown exception or rejected promise: *error is
  // "evaluate: Uncaught Error: ..." (the exception's message). Longer than timeout_ms: the script is
  // terminated (Runtime.terminateExecution), *error says it timed out, and the page stays usable. A result
  // longer than max_result_bytes is an error.
  bool Evaluate(const std::string& expression, int timeout_ms, size_t max_result_bytes, std::string* json_result,
                std::string* error);

  // The page's text (document.body.innerText) or HTML (document.documentElement.outerHTML), cut at max_bytes
  // (at a UTF-8 boundary; *truncated says whether it was).
  bool Content(bool text, size_t max_bytes, std::string* out, bool* truncated, std::string* error);

  // Scrolls the first element matching a CSS selector into view and clicks (left button) the centre of its
  // box. Fails if nothing matches or the element has no box (display:none).
  bool Click(const std::string& selector, std::string* error);
  // Clicks the viewport point (x, y) in CSS pixels (the coordinates of a viewport screenshot).
  bool ClickAt(double x, double y, std::string* error);
  // Inserts text as if typed (Input.insertText) into the focused element, after focusing the first element
  // matching `selector` if it is not empty.
  bool Type(const std::string& text, const std::string& selector, std::string* error);
  // Presses and releases one key: Enter, Tab, Escape, Backspace, Delete, Space, ArrowLeft/Right/Up/Down, Home,
  // End, PageUp, PageDown, or a single ASCII letter, digit or punctuation character.
  bool Press(const std::string& key, std::string* error);
  // Waits until an element matches `selector` (if not empty) and the page's text contains `text` (if not
  // empty), polling every 100 ms, up to timeout_ms.
  bool WaitFor(const std::string& selector, const std::string& text, int timeout_ms, std::string* error);
  // Waits until a download finished (completed or canceled) that no earlier WaitForDownload counted: returns at
  // once when one already did (even if an earlier call reported it). Fails when downloads are off.
  bool WaitForDownload(int timeout_ms, std::string* error);
  // Playwright's storageState JSON: {"cookies":[{name,value,domain,path,expires,httpOnly,secure,sameSite}],
  // "origins":[{"origin":"https://a.example","localStorage":[{name,value}]}]}. Import sets the cookies
  // (Storage.setCookies) and each origin's localStorage (the page loads the origin from an answer given here,
  // no network: Fetch); Export reads every
  // cookie and the localStorage of the origins open in a page now (read in those pages).
  bool ImportStorageState(const std::string& state_json, std::string* error);
  bool ExportStorageState(std::string* state_json, std::string* error);
  // The viewport in CSS pixels (device scale factor 1), same bounds as BrowserConfig.
  bool SetViewport(uint32_t width, uint32_t height, std::string* error);

  // ---- The external CDP client (CdpMux), one at a time ----
  // ClientOpen, ClientInput and TakeClientOutput are thread-safe (a mutex): the owner's loop calls them while
  // another thread holds the browser for a call. Whoever holds the browser carries the client's input out (in
  // Pump: every call's waits do it, and RelayPump when no call runs); the client's messages are gathered for
  // TakeClientOutput, and client_fd() (an eventfd) becomes readable when there is some.
  static constexpr size_t kMaxClientMessageBytes = 64 << 20;
  // What may wait for a client that reads too slowly before it is cut off.
  static constexpr size_t kMaxClientBacklogBytes = 160 << 20;
  struct ClientOutput {
    std::string data;     // messages to the client, each ended by a NUL byte
    bool ended = false;   // the connection is over: `error` says why, or empty for a clean end
    std::string error;
  };
  bool ClientOpen(std::string* error);  // false when the browser is gone or another client is connected
  // The client's bytes: messages each ended by a NUL byte (a message may span calls); `close` ends it.
  void ClientInput(std::string data, bool close);
  ClientOutput TakeClientOutput();
  int client_fd() const { return client_event_fd_; }
  int client_input_fd() const { return client_input_fd_; }
  // The loop, holding the browser (no call runs): carries the client's input out and reads what Chromium sent.
  void RelayPump();
  int chromium_fd() const { return from_chromium_; }

  // What the page reported since the last call, oldest first (at most 1000 kept; the oldest are dropped):
  //   {"type":"console","level":"log|warning|error|...","text":"..."}
  //   {"type":"page_error","text":"Uncaught Error: ...","url":"...","line":N}
  //   {"type":"log","level":"...","source":"network|...","text":"...","url":"..."}
  //   {"type":"crash"}   (the page's renderer crashed: Inspector.targetCrashed)
  //   {"type":"download","state":"completed|canceled","url":"...","suggested_filename":"...","path":"...",
  //    "bytes":N,"text":"completed PATH"}   (path: download_dir/NAME, the file as saved)
  //   {"type":"dropped","count":N}   (events dropped because the queue was full)
  std::vector<nlohmann::json> TakeEvents();

  // Fuzzing (tests/fuzz/cdp_fuzz.cc): what a Browser with no Chromium does with `bytes` as if read from
  // Chromium's pipe in pieces of `chunk` bytes (0: all at once), waiting for call 1 on page session "S" of
  // target "T". Downloads settle in `download_dir`. Returns the events queued, then {"type":"response",...}
  // when call 1 got an answer.
  static std::vector<nlohmann::json> HandleBytesForTesting(std::string_view bytes, size_t chunk,
                                                           const std::string& download_dir);

 private:
  Browser() = default;
  // Start's steps: Chromium spawned on its pipes; its first page found (or created) and attached to; the
  // downloads, the domains, the lifecycle events and the viewport set. Each false with *error.
  bool SpawnChromium(const BrowserConfig& config, std::string* error);
  bool AttachToPage(int64_t deadline_ms, std::string* error);
  bool SetUpPage(const BrowserConfig& config, int64_t deadline_ms, std::string* error);
  bool Check(std::string* error) const;  // false with "the browser is gone ..." / "the page crashed"
  bool Send(const nlohmann::json& message, int64_t deadline_ms, std::string* error);
  // Reads what is there (waiting until deadline_ms for something) and handles every complete message. False
  // only when the browser is gone.
  bool Pump(int64_t deadline_ms, std::string* error);
  // Handles every complete message in in_ (what Pump read) and drops what is consumed. True when Pump should
  // read again at once (skipping the rest of an oversized message).
  bool ConsumeInput();
  void Handle(const nlohmann::json& message);
  // Handle's events: browser-level ones (downloads, the page's target), and those of the page's session.
  void HandleBrowserEvent(const std::string& method, const nlohmann::json& params);
  void HandleDownloadProgress(const nlohmann::json& params);
  void HandlePageEvent(const std::string& method, const nlohmann::json& params);
  void PushEvent(nlohmann::json event);
  // The call waiting for its answer (if any) fails with `message` (an answer that cannot be read).
  void FailWaitingCall(const std::string& message);
  // The same, if `text` (a message that could not be parsed) is that call's answer.
  void FailWaitingCallIfItsAnswer(std::string_view text, const std::string& message);
  // `exiting`: the pipe broke, so the process is exiting; wait a moment for that, to say how it ended.
  void MarkGone(const std::string& why, bool exiting = false);
  std::string GoneMessage() const;
  bool WaitNetworkIdle(int64_t deadline_ms, std::string* error);
  // Call on another flat session (empty: the browser).
  bool CallIn(const std::string& session, const std::string& method, const nlohmann::json& params,
              nlohmann::json* result, std::string* error, int timeout_ms);
  bool EvaluateValue(const std::string& expression, int timeout_ms, nlohmann::json* value, std::string* error);
  bool DispatchClick(double x, double y, std::string* error);
  // ImportStorageState's parts: the cookies, each origin's localStorage, and loading an origin in the page
  // from an answer given here (Fetch).
  bool ImportCookies(const nlohmann::json& cookies, std::string* error);
  bool ImportOrigins(const nlohmann::json& origins, std::string* error);
  bool LoadOriginLocally(const std::string& origin, std::string* error);
  void Terminate();
  // Holding the browser: the client's queued input, its messages sent to Chromium.
  void FlushClientInput();
  void PushClient(const nlohmann::json& message);
  void EndClient(const std::string& error);  // holding the browser: undoes the client's state
  void PushClientEnd(const std::string& error);

  int64_t call_deadline_ms_ = 0;
  int cancel_fd_ = -1;
  pid_t pid_ = -1;
  int to_chromium_ = -1, from_chromium_ = -1;  // our ends of its fd 3 and fd 4
  int log_fd_ = -1;                            // Chromium's stdout/stderr (a memfd), for error messages
  std::string session_id_;
  std::string target_id_;
  bool gone_ = false, crashed_ = false;
  bool killed_ = false;  // MarkGone killed it (it still ran)
  std::string gone_why_;
  std::optional<int> exit_status_;

  int64_t next_id_ = 1;
  int64_t waiting_id_ = 0;
  std::optional<nlohmann::json> response_;
  int64_t terminated_id_ = 0;  // a timed-out Runtime.evaluate that was terminated, until it answers
  bool terminated_answered_ = false;
  std::string in_;
  size_t scanned_ = 0;  // in_[0, scanned_) holds no NUL
  bool skipping_ = false;  // dropping the rest of an oversized message, up to its NUL

  std::set<std::string> loaded_;  // loader ids whose document fired "load", since the navigation began
  std::set<std::string> in_flight_;  // request ids
  int64_t last_network_ms_ = 0;      // when in_flight_ last changed

  std::string download_dir_;
  std::map<std::string, nlohmann::json> downloads_;  // by GUID: begun, not finished (at most 1000)
  uint64_t downloads_begun_ = 0;
  uint64_t downloads_finished_ = 0, downloads_waited_ = 0;  // completed or canceled; counted by WaitForDownload
  std::string last_download_guid_;

  std::deque<nlohmann::json> events_;
  uint64_t dropped_events_ = 0;
  std::set<std::string> storage_origins_;  // imported by ImportStorageState
  std::vector<std::string> paused_requests_;  // Fetch.requestPaused on the page (ImportStorageState)

  // The external client. mux_ and client_in_ belong to whoever holds the browser; the rest is under client_mu_.
  std::optional<CdpMux> mux_;
  std::string client_in_;  // the client's input not yet split into messages
  bool flushing_ = false;
  int client_event_fd_ = -1;  // eventfd: output for the client (or its end) waits
  int client_input_fd_ = -1;  // eventfd: input from the client waits
  base::Mutex client_mu_;
  bool client_connected_ SBX_GUARDED_BY(client_mu_) = false;  // between ClientOpen and the end
  struct ClientInputItem {
    bool open = false, close = false;
    std::string data;
    std::string error;  // close: why (empty: the client closed)
  };
  std::deque<ClientInputItem> client_inbox_ SBX_GUARDED_BY(client_mu_);
  size_t client_inbox_bytes_ SBX_GUARDED_BY(client_mu_) = 0;
  ClientOutput client_out_ SBX_GUARDED_BY(client_mu_);
};

}  // namespace sbx::init

#endif  // SBX_SANDBOX_INIT_DRIVERS_CDP_H_
