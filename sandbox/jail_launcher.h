// JailLauncher: starts jails from a few long-lived threads it owns.
//
// NOTE: a jail's init has PR_SET_PDEATHSIG(SIGKILL), and the kernel sends it when the *thread* that cloned
// the jail exits, not the process. A daemon that started jails from an RPC thread pool would see them
// killed whenever the pool retires a thread. Every jail of a long-lived process must be cloned here.
#ifndef SBX_SANDBOX_JAIL_LAUNCHER_H_
#define SBX_SANDBOX_JAIL_LAUNCHER_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
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
  void Run(std::stop_token stop);

  std::mutex mu_;
  std::condition_variable_any cv_;
  // A job runs with true; with false when the launcher shuts down before running it (the caller gets an
  // error instead of waiting forever).
  std::deque<std::function<void(bool run)>> queue_;  // GUARDED_BY(mu_)
  bool stopping_ = false;                            // GUARDED_BY(mu_)
  std::vector<std::jthread> threads_;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_JAIL_LAUNCHER_H_
