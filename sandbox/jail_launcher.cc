#include "sandbox/jail_launcher.h"

#include <future>

namespace sbx::sandbox {

JailLauncher::JailLauncher(int threads) {
  for (int i = 0; i < threads; ++i) {
    threads_.emplace_back([this](std::stop_token stop) { Run(stop); });
  }
}

JailLauncher::~JailLauncher() {
  for (auto& t : threads_) t.request_stop();
  cv_.notify_all();
  threads_.clear();  // joins
  std::deque<std::function<void(bool)>> left;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    left.swap(queue_);
  }
  for (auto& job : left) job(false);
}

absl::StatusOr<std::unique_ptr<Jail>> JailLauncher::Start(const Policy& policy, const JailOptions& options) {
  std::promise<absl::StatusOr<std::unique_ptr<Jail>>> promise;
  auto future = promise.get_future();
  {
    std::lock_guard lock(mu_);
    if (stopping_) return absl::UnavailableError("the jail launcher is shutting down");
    queue_.push_back([&](bool run) {
      promise.set_value(run ? Jail::Start(policy, options)
                            : absl::StatusOr<std::unique_ptr<Jail>>(
                                  absl::UnavailableError("the jail launcher shut down before starting the jail")));
    });
  }
  cv_.notify_one();
  return future.get();
}

void JailLauncher::Run(std::stop_token stop) {
  for (;;) {
    std::function<void(bool)> job;
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait(lock, stop, [this] { return !queue_.empty(); })) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job(true);
  }
}

}  // namespace sbx::sandbox
