// JailLauncher: starts jails from a few long-lived threads it owns.
//
// NOTE: a jail's init has PR_SET_PDEATHSIG(SIGKILL), and the kernel sends it when the *thread* that cloned
// the jail exits, not the process. A daemon that started jails from an RPC thread pool would see them
// killed whenever the pool retires a thread. Every jail of a long-lived process must be cloned here.
#ifndef SBX_SANDBOX_JAIL_LAUNCHER_H_
#define SBX_SANDBOX_JAIL_LAUNCHER_H_

#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sandbox/jail.h"
#include "sandbox/policy/policy.h"

namespace sbx::sandbox {

class JailLauncher {
 public:
  // `threads` jails can be in setup at once.
  explicit JailLauncher(int threads = 2);
  // Joins the threads. Jails started here must be gone before (their init would be killed).
  ~JailLauncher();
  JailLauncher(const JailLauncher&) = delete;
  JailLauncher& operator=(const JailLauncher&) = delete;

  // Jail::Start on one of the launcher's threads; blocks the caller until it returns.
  absl::StatusOr<std::unique_ptr<Jail>> Start(const Policy& policy, const JailOptions& options);

 private:
  // A launcher thread: runs jobs until the destructor stops it and the queue is empty.
  void Run();
  bool HasWorkOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || threads_stop_; }

  absl::Mutex mu_;
  // A job runs with true; with false when the launcher shuts down before running it (the caller gets an
  // error instead of waiting forever).
  std::deque<std::function<void(bool run)>> queue_ ABSL_GUARDED_BY(mu_);
  bool threads_stop_ ABSL_GUARDED_BY(mu_) = false;  // the threads return once the queue is empty
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;      // no more jobs are taken
  std::vector<std::jthread> threads_;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_JAIL_LAUNCHER_H_
