#include "sandbox/jail_launcher.h"

#include <future>

namespace sbx::sandbox {

JailLauncher::JailLauncher(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Run(); });
  }
}

JailLauncher::~JailLauncher() {
  {
    absl::MutexLock lock(&mu_);
    threads_stop_ = true;
  }
  threads_.clear();  // joins
  std::deque<std::function<void(bool)>> left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    left.swap(queue_);
  }
  for (auto& job : left) job(false);
}

absl::StatusOr<std::unique_ptr<Jail>> JailLauncher::Start(const Policy& policy, const JailOptions& options) {
  std::promise<absl::StatusOr<std::unique_ptr<Jail>>> promise;
  auto future = promise.get_future();
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::UnavailableError("the jail launcher is shutting down");
    queue_.push_back([&](bool run) {
      promise.set_value(run ? Jail::Start(policy, options)
                            : absl::StatusOr<std::unique_ptr<Jail>>(
                                  absl::UnavailableError("the jail launcher shut down before starting the jail")));
    });
  }
  return future.get();
}

void JailLauncher::Run() {
  for (;;) {
    std::function<void(bool)> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &JailLauncher::HasWorkOrStop));
      if (queue_.empty()) return;  // stopping
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job(true);
  }
}

}  // namespace sbx::sandbox
