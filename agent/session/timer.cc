#include "agent/session/timer.h"

#include <utility>

#include "absl/time/time.h"

namespace sbx::agent {

Timer::Timer() {
  thread_ = std::jthread([this] { Run(); });
}

Timer::~Timer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    tasks_.clear();
    changed_.SignalAll();
  }
  thread_.join();
}

void Timer::At(Clock::time_point when, const void* owner, std::function<void()> task) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  tasks_.emplace(std::make_pair(when, next_order_++), Task{owner, std::move(task)});
  changed_.SignalAll();
}

void Timer::CancelAll(const void* owner) {
  absl::MutexLock lock(&mu_);
  for (auto it = tasks_.begin(); it != tasks_.end();) {
    it = it->second.owner == owner ? tasks_.erase(it) : std::next(it);
  }
  if (std::this_thread::get_id() == thread_.get_id()) return;  // called by the owner's own task
  while (running_owner_ == owner) changed_.Wait(&mu_);
}

void Timer::Run() {
  mu_.Lock();
  while (!stopping_) {
    if (tasks_.empty()) {
      changed_.Wait(&mu_);
      continue;
    }
    const auto due = tasks_.begin()->first.first;
    if (Clock::now() < due) {
      (void)changed_.WaitWithTimeout(&mu_, absl::FromChrono(due - Clock::now()));
      continue;
    }
    Task task = std::move(tasks_.begin()->second);
    tasks_.erase(tasks_.begin());
    running_owner_ = task.owner;
    mu_.Unlock();
    task.fn();
    task.fn = nullptr;  // what it captured goes before CancelAll may return
    mu_.Lock();
    running_owner_ = nullptr;
    changed_.SignalAll();
  }
  mu_.Unlock();
}

}  // namespace sbx::agent
