// Timer: one thread per agent that runs short tasks at their deadlines (a deadline heap), so that a session
// does not keep a thread of its own for each thing it does later or off a caller's thread (the output
// limit's kill, run off the init client's reader). Owned by the SessionManager and passed to each Session
// through Session::Options; a session cancels its tasks (CancelAll with itself as the owner) before it goes.
// Tasks must be short and must not wait for other tasks: they all share this one thread.
#ifndef SBX_AGENT_SESSION_TIMER_H_
#define SBX_AGENT_SESSION_TIMER_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace sbx::agent {

class Timer {
 public:
  using Clock = std::chrono::steady_clock;

  Timer();
  ~Timer();  // drops the tasks not yet run and joins the thread
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Runs `task` on the timer's thread at `when` (at once when it has passed); tasks due at one time run in
  // the order they were scheduled. `owner` names who may cancel it (CancelAll).
  void At(Clock::time_point when, const void* owner, std::function<void()> task);
  void Now(const void* owner, std::function<void()> task) { At(Clock::now(), owner, std::move(task)); }
  // Drops `owner`'s tasks not yet run and waits for its task running now, if any (unless called from that
  // task): once it returns, nothing of `owner` runs.
  void CancelAll(const void* owner);

 private:
  void Run();

  struct Task {
    const void* owner;
    std::function<void()> fn;
  };
  absl::Mutex mu_;
  absl::CondVar changed_;  // a task was added or one finished running
  // By deadline, then by the order scheduled.
  std::map<std::pair<Clock::time_point, uint64_t>, Task> tasks_ ABSL_GUARDED_BY(mu_);
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 0;
  const void* running_owner_ ABSL_GUARDED_BY(mu_) = nullptr;  // the task being run, or nullptr
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::jthread thread_;  // last: started once the members exist, joined first
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_TIMER_H_
