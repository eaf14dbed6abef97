// Inside sandbox-init's serving mode (init_server.h says what it does): Server, the single-threaded epoll loop
// that serves the init protocol, and the state it keeps per running command. Its parts, one file a concern:
// - server.cc: setup, the loop and the control socket (framing, dispatch, backpressure);
// - exec.cc: starting a command (stdio pipes or a pty, fork, the child's steps up to execve, its timeout);
// - exec_streams.cc: a running command's output, stdin, signals, window size and end;
// - reaper.cc: signals to PID 1, and reaping every child (PID 1's duty);
// - init_server.cc: the drivers (desktop, browser, the external CDP client), whose calls run on DriverLanes
//   (driver_lane.h);
// - file_ops.cc: the file tools, which keep no state of the Server's.
#ifndef SBX_SANDBOX_INIT_SERVER_H_
#define SBX_SANDBOX_INIT_SERVER_H_

#include <sys/epoll.h>
#include <sys/types.h>
#include <time.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/unique_fd.h"
#include "sandbox/init/driver_lane.h"
#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/desktop.h"
#include "sandbox/init/errors.h"
#include "wire/frame.h"
#include "wire/init_protocol.pb.h"

namespace sbx::sandbox::serve {

using Clock = std::chrono::steady_clock;

// epoll data: the source kind in the top byte, the command's serial (never reused) below it.
enum class Src : uint64_t { kControl = 1, kSignals, kStdout, kStderr, kStdin, kTimer, kDriver, kCdp };
constexpr uint64_t kSerialMask = (uint64_t{1} << 56) - 1;
inline uint64_t Tag(Src src, uint64_t serial) { return static_cast<uint64_t>(src) << 56 | serial; }

// O_NONBLOCK on `fd`, best effort.
void SetNonblocking(int fd);

// An fd in the epoll set, with the events it is registered for (0: not registered). Deregistering instead
// of asking for no events matters: epoll reports EPOLLHUP whatever was asked for.
struct Watch {
  UniqueFd fd;
  uint32_t events = 0;
};

struct StdinChunk {
  uint64_t call_id = 0;  // the StdinWrite request, answered once the chunk is written
  std::string data;
  size_t written = 0;
  bool eof = false;
};

// One running command.
struct Exec {
  uint64_t call_id = 0;
  uint64_t serial = 0;
  pid_t pid = -1;  // also its process group and session id
  bool pty = false;
  Watch out;  // stdout pipe, or the pty master (which also carries stdin)
  Watch err;  // stderr pipe (none with a pty)
  Watch in;   // stdin pipe (stdin_open without a pty)
  Watch timer;
  uint64_t offset[3] = {0, 0, 0};  // by stream (1: stdout, 2: stderr)
  bool eof[3] = {false, false, false};  // by stream; set at EOF, or when there is no such stream
  // By stream: read recently, so not watched until read_at (kReadCoalesce); the loop reads it then.
  bool deferred[3] = {false, false, false};
  Clock::time_point read_at[3];
  bool stdin_opened = false;       // a pipe or the pty: StdinWrite is possible at all
  bool stdin_writable = false;     // StdinWrite is accepted (until eof, or the command closed it)
  std::deque<StdinChunk> stdin_queue;
  size_t stdin_queued_bytes = 0;
  bool reaped = false;
  int wait_status = 0;
  bool timed_out = false;
};

// The serving loop: one thread, one epoll set (the control socket, the signalfd, every command's pipes or pty
// and timer, the drivers' done eventfds and the CDP client's fds), every request answered from here.
class Server {
 public:
  explicit Server(int control_fd) { control_.fd.Reset(control_fd); }
  // The workers first (their running calls canceled), then the drivers they used.
  ~Server() {
    browser_lane_.Stop();
    desktop_lane_.Stop();
    browser_.reset();
    desktop_.reset();
  }
  int Run();

 private:
  bool Setup();
  void Dispatch(const epoll_event& event);
  void SetEvents(Watch& w, uint32_t events, uint64_t tag);
  void Close(Watch& w);

  // The control socket.
  void OnControl(uint32_t events);
  void ProcessFrames();
  void Handle(const pb::Request& request);
  void Send(const pb::Response& response);
  void Flush();
  void UpdateControlEvents();
  void UpdatePause();
  // Ends serving: every command is killed, and the loop stops.
  void Stop(const std::string& why, int status);

  // Desktop sessions.
  void DesktopStartOp(const pb::DesktopStart& q, pb::Response* r);
  void DesktopFetchOp(const pb::DesktopFetch& q, pb::Response* r);
  // Keeps a screenshot (desktop or browser) for DesktopFetch and answers with its info and first chunk.
  void StoreScreenshot(std::string image, uint32_t width, uint32_t height, uint32_t display_width,
                       uint32_t display_height, pb::Response* r);
  void BrowserStartOp(const pb::BrowserStart& q, pb::Response* r);

  // Driver calls (DriverLane): posted to the driver's worker, answered when they come back.
  void PostDriverCall(DriverLane& lane, const pb::Request& q, DriverLane::Job job);
  void PostBrowserCall(const pb::Request& q);
  // The external CDP client (init::CdpMux; one at a time): its stream is the CdpOpen call's id. The loop
  // watches the browser's client eventfd always, and Chromium's pipe and the client's input only while no
  // browser call runs (then the worker carries them, in its waits).
  void CdpOpenOp(uint64_t call_id);
  void CdpSendOp(const pb::CdpSend& q, pb::Response* r);
  void OnCdp(uint64_t which);
  void UpdateCdpWatch();
  void DrainCdp();
  void PostDesktopCall(const pb::Request& q);
  // Starts a lane's worker (once) and watches its done eventfd. False with the error in `r`.
  bool StartLane(DriverLane& lane, uint64_t tag, pb::Response* r);
  void OnDriverDone(uint64_t which);
  // A reaped driver child: handed to its driver now, or once its lane is idle.
  void DriverChildExited(pid_t pid, int status);
  void DeliverPendingExits(DriverLane& lane);

  // Signals and children.
  void OnSignals();
  void ReapChildren();
  void KillAll(int sig);

  // Commands.
  Exec* FindExec(uint64_t call_id);
  // Starts a command (exec.cc): the request checked (CheckExecStart), its stdio opened, forked, its execve
  // awaited, its timeout armed; answered with an error, or later with its output and ExecEnd.
  void StartExec(uint64_t call_id, const pb::ExecStart& q);
  bool CheckExecStart(uint64_t call_id, const pb::ExecStart& q, pb::Response* r);
  void OnExecEvent(Src src, uint64_t serial, uint32_t events);
  void ReadOutput(Exec& e, int stream);
  // The epoll_wait timeout until the first deferred stream is due (nullptr: none, wait for events), and
  // the reads of the streams that are due.
  const timespec* DeferredReadTimeout(timespec* storage) const;
  void ReadDeferred();
  void WriteStdin(uint64_t call_id, const pb::StdinWrite& q);
  void FlushStdin(Exec& e);
  void FailStdin(Exec& e, const std::string& why);
  void SignalExec(const pb::ExecSignal& q, pb::Response* r);
  void ResizeExec(const pb::ExecResize& q, pb::Response* r);
  void UpdateExecEvents(Exec& e);
  // Sends ExecEnd and forgets the command once it was reaped and its output is complete. May destroy `e`.
  void MaybeFinish(Exec& e);

  Watch control_;
  UniqueFd epoll_;
  Watch signals_;
  // The Landlock ruleset every command enters before its execve (invalid: the kernel lacks Landlock, and
  // Setup said so on stderr). Drivers' processes (Xvfb, Chromium) are started without it, on purpose.
  UniqueFd landlock_ruleset_;
  FrameReader reader_;
  std::deque<std::string> out_;  // encoded frames to the agent
  size_t out_sent_ = 0;          // bytes of out_.front() already sent
  size_t out_bytes_ = 0;         // unsent bytes in out_
  bool paused_ = false;          // command output is not read while the agent catches up
  bool stop_ = false;
  int exit_status_ = 0;
  bool terminating_ = false;
  uint64_t next_serial_ = 1;
  std::map<uint64_t, std::unique_ptr<Exec>> execs_;  // by call id
  std::map<uint64_t, uint64_t> serials_;             // serial -> call id
  std::map<pid_t, uint64_t> pids_;                   // unreaped command pid -> call id
  std::unique_ptr<init::Desktop> desktop_;
  std::unique_ptr<init::Browser> browser_;
  uint64_t cdp_stream_ = 0;   // the client's CdpOpen call id, 0: none
  uint64_t cdp_offset_ = 0;   // of its output stream
  std::string cdp_buf_;       // taken from the browser, not yet framed (the agent is behind)
  bool cdp_ended_ = false;    // the browser ended the client: after cdp_buf_, its end
  std::string cdp_error_;
  std::vector<int> cdp_watched_;  // fds in the epoll set for the client (Src::kCdp, serial = index)
  std::string last_png_;          // the last screenshot, for DesktopFetch
  uint64_t last_image_id_ = 0;
  // NOTE: after the drivers: joined (and their calls canceled) before the drivers are destroyed.
  DriverLane browser_lane_{"browser"};
  DriverLane desktop_lane_{"desktop"};
};

}  // namespace sbx::sandbox::serve

#endif  // SBX_SANDBOX_INIT_SERVER_H_
