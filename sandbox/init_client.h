// InitClient: the agent's side of the init protocol, spoken with sandbox-init (serving mode) over the jail's
// control socket (Jail::TakeControlFd). Frames are length-prefixed protobuf messages with a size cap; the
// agent parses nothing else a jail writes. Every path is resolved by sandbox-init inside the jail.
#ifndef SBX_SANDBOX_INIT_CLIENT_H_
#define SBX_SANDBOX_INIT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "wire/frame.h"
#include "base/unique_fd.h"

namespace sbx::init {  // wire/init_protocol.proto
class BrowserRequest;
class BrowserScreenshot;
class DesktopInput;
class Request;
}  // namespace sbx::init

namespace sbx::sandbox {

struct ExecSpec {
  std::vector<std::string> argv;  // argv[0] is looked up on PATH from `env` inside the jail
  std::vector<std::string> env;   // KEY=VALUE; empty = the jail's policy environment
  std::string cwd;                // empty = the policy's workdir
  bool pty = false;               // run on a new pseudo-terminal (stdout only; stderr merged)
  uint32_t rows = 24;
  uint32_t cols = 80;
  uint64_t timeout_ms = 0;  // 0 = none; on expiry the command's process group is SIGKILLed
  bool stdin_open = false;  // keep stdin open for WriteStdin; otherwise it reads EOF at once (/dev/null-like)
  bool socket_stdio = false;  // stdin and stdout one stream socket (with stdin_open), e.g. for x11vnc -inetd
};

struct ExecEnd {
  int exit_code = -1;  // when it exited
  int signal = 0;      // when a signal ended it
  bool timed_out = false;
  int exec_errno = 0;  // the command could not be executed (ENOENT: not found)
};

enum class OutputStream { kStdout = 1, kStderr = 2 };

// Desktop sessions (sandbox-init drives Xvfb; see sandbox/init/drivers/desktop.h).
struct DesktopInfo {
  uint32_t width = 0, height = 0;
  std::string display;  // ":1"
};

struct Screenshot {
  std::string png;
  std::string sha256;  // lowercase hex, computed inside the jail and checked here
  uint32_t width = 0, height = 0;
  uint32_t display_width = 0, display_height = 0;
};

struct FileInfo {
  enum class Type { kFile, kDirectory, kSymlink, kOther };
  std::string name;  // the entry's name (ListFiles) or the path asked for (Stat)
  Type type = Type::kOther;
  uint64_t size = 0;
  uint32_t mode = 0;  // permission bits
  int64_t mtime_ns = 0;
  std::string symlink_target;  // for kSymlink
};

class InitClient {
 public:
  // Largest frame either side accepts; a bigger length prefix ends the connection.
  static constexpr uint32_t kMaxFrameBytes = sandbox::kMaxFrameBytes;
  // Largest data chunk in one frame (output, file data).
  static constexpr uint32_t kMaxChunkBytes = sandbox::kMaxChunkBytes;
  // Largest chunk of a command's output (on_output's data).
  static constexpr uint32_t kMaxOutputChunkBytes = sandbox::kMaxOutputChunkBytes;
  // How long a blocking call waits for sandbox-init's answer (and a frame for the socket to take it), unless
  // the call carries its own timeout (driver calls: see below).
  static constexpr int kCallTimeoutMs = 30'000;
  // Driver calls (browser and desktop) carry their own timeout to sandbox-init in the request envelope
  // (init_protocol.proto, Request.timeout_ms), which enforces it; the client waits that long plus
  // kAnswerMarginMs (cleanup inside init, e.g. terminating a runaway script, and the trip back), so a call
  // never outlives its caller nor the other way round. At most kMaxCallTimeoutMs (sandbox-init's own cap).
  static constexpr uint32_t kMaxCallTimeoutMs = 600'000;
  static constexpr uint32_t kAnswerMarginMs = 5'000;

  // Takes the control socket (a connected stream socket: shutdown(2) is what wakes the reader); starts the
  // reader thread (owned, joined in the destructor). An invalid fd makes a client that is born unhealthy.
  explicit InitClient(UniqueFd control);
  // Closes the connection (sandbox-init then kills its commands and exits), joins the reader thread, and
  // ends every running command's call with Unavailable (on_end runs before the destructor returns).
  ~InitClient();
  InitClient(const InitClient&) = delete;
  InitClient& operator=(const InitClient&) = delete;

  // The chunk is handed over (moved), so a consumer can keep it without copying.
  using OutputFn = std::function<void(OutputStream stream, std::string data, uint64_t offset)>;
  using EndFn = std::function<void(absl::StatusOr<ExecEnd> end)>;

  // Starts a command. Output chunks arrive in order on `on_output` as the command writes them (called from
  // the reader thread, with the chunk's byte offset in its stream); `on_end` is called exactly once, last.
  // Returns the call id for WriteStdin / Signal / Resize. When StartExec returns an error, neither callback
  // is ever called. NOTE: the callbacks may run before StartExec returns, and must not block on this
  // client's own blocking calls (they run on the thread that delivers the answers).
  absl::StatusOr<uint64_t> StartExec(const ExecSpec& spec, OutputFn on_output, EndFn on_end);
  // Writes to the command's stdin (in chunks of kMaxChunkBytes) and returns once sandbox-init has written
  // it into the command's stdin pipe or pty: a command that does not read makes this wait, up to
  // kCallTimeoutMs per chunk. `eof` then closes stdin (on a pty: sends the terminal's EOF character).
  absl::Status WriteStdin(uint64_t call_id, std::string_view data, bool eof);
  absl::Status Signal(uint64_t call_id, int signo);
  absl::Status Resize(uint64_t call_id, uint32_t rows, uint32_t cols);

  // File tools, executed by sandbox-init inside the jail. Relative paths are relative to the workdir.
  // Paths with ".." components are refused (InvalidArgument); symlinks are not followed out of the jail
  // (the kernel confines resolution to the jail's root). Each call blocks until init answers.
  // WriteFile writes `data` at `offset` (truncating first when `truncate`), creating the file with `mode`;
  // data above kMaxChunkBytes goes in several requests (not atomically). A final symlink is refused.
  absl::Status WriteFile(std::string_view path, std::string_view data, uint64_t offset, bool truncate,
                         uint32_t mode = 0644);
  // sha256 (lowercase hex) of a file's current contents, computed inside the jail.
  absl::StatusOr<std::string> Sha256(std::string_view path);
  // Reads up to `length` bytes (at most kMaxChunkBytes) at `offset`; fewer at the end of the file.
  absl::StatusOr<std::string> ReadFile(std::string_view path, uint64_t offset, uint64_t length);
  absl::StatusOr<std::vector<FileInfo>> ListFiles(std::string_view path);
  absl::StatusOr<FileInfo> Stat(std::string_view path);
  absl::Status Mkdir(std::string_view path, bool parents);
  absl::Status Remove(std::string_view path, bool recursive);

  // Desktop: starts Xvfb (and the window manager) inside the jail. The display's own errors are
  // Unavailable ("the display is gone") once Xvfb has exited.
  absl::StatusOr<DesktopInfo> DesktopStart(uint32_t width, uint32_t height, bool window_manager);
  // One input action (init_protocol.proto's DesktopInput, in display pixels, checked by the caller: see
  // agent/session/driver_actions.h); not cursor_position, screenshot or zoom, which have their calls below.
  // call_timeout_ms: the whole call's deadline (see kMaxCallTimeoutMs); 0 = kCallTimeoutMs.
  absl::Status DesktopInput(const init::DesktopInput& input, uint32_t call_timeout_ms = 0);
  absl::StatusOr<std::pair<int, int>> PointerPosition(uint32_t call_timeout_ms = 0);
  // A PNG of the display, scaled down to target_width (0: native); fetched in chunks, sha256 checked.
  absl::StatusOr<Screenshot> TakeScreenshot(uint32_t target_width, uint32_t call_timeout_ms = 0);
  // The display pixels of [x0, x1) x [y0, y1) at native resolution (display pixels, not scaled).
  absl::StatusOr<Screenshot> Zoom(int x0, int y0, int x1, int y1, uint32_t call_timeout_ms = 0);

  // Browser sessions: starts headless Chromium inside the jail (proxy: --proxy-server, or empty).
  absl::Status BrowserStart(uint32_t width, uint32_t height, std::string_view proxy);
  struct PageReport {
    std::string type, level, text, json;  // console, page_error, log, crash, download...
    std::string path;                     // download: the file, relative to the workspace
    uint64_t size = 0;                    // download: its size
  };
  struct BrowserOutput {
    std::string data;  // evaluate: JSON; content: HTML or text
    bool truncated = false;
    std::vector<PageReport> events;
  };
  // One browser action (init_protocol.proto's BrowserRequest, checked and with its defaults filled by the
  // caller: see agent/session/driver_actions.h); not a screenshot, which BrowserScreenshot takes.
  // call_timeout_ms: the whole call's deadline, carried to sandbox-init, which cuts the action's own timeout
  // to it (see kMaxCallTimeoutMs); 0 = kCallTimeoutMs.
  absl::StatusOr<BrowserOutput> BrowserRequest(const init::BrowserRequest& request, uint32_t call_timeout_ms = 0);
  // A screenshot of the page (PNG or JPEG), fetched in chunks, sha256 checked.
  absl::StatusOr<Screenshot> BrowserScreenshot(const init::BrowserScreenshot& screenshot,
                                               uint32_t call_timeout_ms = 0);

  // An external CDP client on the session's browser (Playwright, Puppeteer; sandbox/init/drivers/cdp.h, CdpMux): the
  // messages for the client arrive on on_output (stdout), each ended by a NUL byte, a message possibly
  // spanning chunks; on_end runs once, last (ExecEnd: a clean end, e.g. the client's Browser.close; an error:
  // refused, the browser is gone, the client fell behind). Callbacks as StartExec's. Returns the stream id.
  absl::StatusOr<uint64_t> StartCdp(OutputFn on_output, EndFn on_end);
  // The client's messages, each ended by a NUL byte (in pieces of kMaxChunkBytes); `close` ends the stream.
  absl::Status CdpSend(uint64_t stream_id, std::string_view data, bool close);

  // False once the connection failed (init died, or sent a malformed, oversized or truncated frame); every
  // pending and later call then fails with Unavailable naming the cause.
  bool healthy() const;

 private:
  struct State;
  // Sends a screenshot request and fetches the whole image it answers with.
  absl::StatusOr<Screenshot> FetchScreenshot(init::Request request, uint32_t call_timeout_ms);
  std::unique_ptr<State> state_;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_INIT_CLIENT_H_
