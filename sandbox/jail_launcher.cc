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
}

absl::StatusOr<std::unique_ptr<Jail>> JailLauncher::Start(const Policy& policy, const JailOptions& options) {
  std::promise<absl::StatusOr<std::unique_ptr<Jail>>> promise;
  auto future = promise.get_future();
  {
    std::lock_guard lock(mu_);
    queue_.push_back([&] { promise.set_value(Jail::Start(policy, options)); });
  }
  cv_.notify_one();
  return future.get();
}

void JailLauncher::Run(std::stop_token stop) {
  for (;;) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait(lock, stop, [this] { return !queue_.empty(); })) return;
      job = std::move(queue_.front());
      queue_.pop_front();
    }
    job();
  }
}

}  // namespace sbx::sandbox
