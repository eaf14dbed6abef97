// DriverLane: one driver's (the browser's or the desktop's) calls, run one at a time on a worker thread of
// its own, off sandbox-init's loop; the thread rules are stated on the class.
#ifndef SBX_SANDBOX_INIT_DRIVER_LANE_H_
#define SBX_SANDBOX_INIT_DRIVER_LANE_H_

#include <sys/eventfd.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <stop_token>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/unique_fd.h"
#include "sandbox/init/drivers/driver_util.h"
#include "sandbox/init/errors.h"

namespace sbx::sandbox::serve {

// What a driver call produced: its answer, and a screenshot for the loop to keep for DesktopFetch.
struct DriverResult {
  pb::Response response;
  bool has_image = false;
  std::string image;
  uint32_t width = 0, height = 0, display_width = 0, display_height = 0;
};

// One driver's (the browser's or the desktop's) calls, carried out one at a time, in order, on a worker thread
// of its own, so that a call that waits (a wait_for of a minute, a page that does not load) does not hold the
// loop: exec output, file tools, signals and reaping go on meanwhile.
//
// NOTE: the thread rules.
// - The worker runs only the jobs posted to it: each touches its driver and what it captured, nothing else.
//   It never reaps (PID 1 reaps with waitpid(-1) on the loop), never sends a frame, never touches the
//   Server. It is started after Setup blocked every signal, so it inherits that mask: signals stay the
//   signalfd's.
// - While the lane has calls outstanding (posted, not yet finished on the loop: !idle()), the driver object
//   belongs to the worker: the loop neither calls, starts, replaces nor destroys it. The only thing the loop
//   reads then is the driver's child pids, which nothing but the loop (ChildExited) and the driver's
//   Start/destructor write. A driver child the loop reaps meanwhile is kept in pending_exits and handed to
//   the driver (ChildExited) once the lane is idle again.
// - A finished call's result goes back through done_ (under mu_) and the done eventfd the loop watches; the
//   loop sends the answer and keeps the screenshot, so frames and the last screenshot stay the loop's alone.
// - At most kMaxQueuedDriverCalls calls are outstanding per driver; the loop refuses more. A call whose
//   deadline passed while it waited behind another is answered DEADLINE_EXCEEDED without running.
// - Stop (the end of serving) makes the cancel eventfd readable, which ends the browser's waits at once,
//   drops the calls still queued, and joins the worker; the drivers are destroyed after that, on the loop.
class DriverLane {
 public:
  using Job = std::function<void(int64_t deadline_ms, DriverResult* result)>;

  explicit DriverLane(const char* what) : what_(what) {}
  ~DriverLane() { Stop(); }
  DriverLane(const DriverLane&) = delete;
  DriverLane& operator=(const DriverLane&) = delete;

  // Creates the eventfds and starts the worker, once. False (with *error) when the kernel refuses.
  bool Start(std::string* error) {
    if (worker_.joinable()) return true;
    done_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    cancel_fd_.Reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!done_fd_ || !cancel_fd_) {
      *error = std::string(what_) + ": eventfd: " + strerror(errno);
      return false;
    }
    try {
      worker_ = std::jthread([this](std::stop_token stop) { Work(stop); });
    } catch (const std::system_error& e) {
      *error = std::string(what_) + ": cannot start its worker thread: " + e.what();
      return false;
    }
    return true;
  }
  bool started() const { return worker_.joinable(); }
  int done_fd() const { return done_fd_.get(); }
  int cancel_fd() const { return cancel_fd_.get(); }
  const char* what() const { return what_; }

  // Loop only.
  bool idle() const { return outstanding_ == 0; }
  size_t outstanding() const { return outstanding_; }
  void Post(uint64_t call_id, int64_t deadline_ms, Job job) {
    ++outstanding_;
    {
      base::MutexLock lock(mu_);
      queue_.push_back(Queued{call_id, deadline_ms, std::move(job)});
    }
    cv_.notify_one();
  }
  // The calls finished since the last time (after the done eventfd became readable).
  std::vector<DriverResult> TakeDone() {
    uint64_t count = 0;
    ssize_t unused = read(done_fd_.get(), &count, sizeof(count));
    (void)unused;
    std::vector<DriverResult> done;
    {
      base::MutexLock lock(mu_);
      done.swap(done_);
    }
    outstanding_ -= std::min(outstanding_, done.size());
    return done;
  }
  // Ends the worker: the running call is canceled (the browser's waits end at once), queued ones dropped.
  void Stop() {
    if (!worker_.joinable()) return;
    const uint64_t one = 1;
    ssize_t unused = write(cancel_fd_.get(), &one, sizeof(one));
    (void)unused;
    worker_.request_stop();
    cv_.notify_all();
    worker_.join();
  }

  std::vector<std::pair<pid_t, int>> pending_exits;  // loop only: driver children reaped while not idle

 private:
  struct Queued {
    uint64_t call_id = 0;
    int64_t deadline_ms = 0;
    Job job;
  };

  void Work(std::stop_token stop) {
    for (;;) {
      Queued next;
      {
        base::MutexLock lock(mu_);
        cv_.wait(lock, stop, [this]() SBX_REQUIRES(mu_) { return !queue_.empty(); });
        if (stop.stop_requested()) return;
        next = std::move(queue_.front());
        queue_.pop_front();
      }
      DriverResult result;
      result.response.set_call_id(next.call_id);
      if (init::internal::NowMs() >= next.deadline_ms) {
        SetError(&result.response, pb::CODE_DEADLINE_EXCEEDED,
                 std::string(what_) + ": the call's deadline passed while it waited for the " + what_ +
                     "'s previous call");
      } else {
        next.job(next.deadline_ms, &result);
      }
      {
        base::MutexLock lock(mu_);
        done_.push_back(std::move(result));
      }
      const uint64_t one = 1;
      ssize_t unused = write(done_fd_.get(), &one, sizeof(one));
      (void)unused;
    }
  }

  const char* const what_;
  UniqueFd done_fd_;    // eventfd: one count per finished call
  UniqueFd cancel_fd_;  // eventfd: readable once Stop began
  size_t outstanding_ = 0;  // loop only
  base::Mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Queued> queue_ SBX_GUARDED_BY(mu_);
  std::vector<DriverResult> done_ SBX_GUARDED_BY(mu_);
  std::jthread worker_;  // NOTE: last member: joined (by Stop) before the rest goes
};

}  // namespace sbx::sandbox::serve

#endif  // SBX_SANDBOX_INIT_DRIVER_LANE_H_
