// agent/session/timer.h: the agent's one timer thread (the sessions' kills and approval deadlines).
#include "agent/session/timer.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace sbx::agent {
namespace {

using std::chrono::milliseconds;

TEST(TimerTest, RunsTasksInDeadlineOrder) {
  Timer timer;
  absl::Mutex mu;
  std::vector<int> ran;
  const auto now = Timer::Clock::now();
  const int owner = 0;
  timer.At(now + milliseconds(60), &owner, [&] { absl::MutexLock l(&mu); ran.push_back(3); });
  timer.At(now + milliseconds(20), &owner, [&] { absl::MutexLock l(&mu); ran.push_back(1); });
  timer.At(now + milliseconds(40), &owner, [&] { absl::MutexLock l(&mu); ran.push_back(2); });
  absl::MutexLock l(&mu);
  ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(+[](std::vector<int>* v) { return v->size() == 3; }, &ran),
                                  absl::Seconds(10)));
  EXPECT_EQ(ran, (std::vector<int>{1, 2, 3}));
}

TEST(TimerTest, CancelAllDropsOnlyThatOwnersTasksAndWaitsForOneRunning) {
  Timer timer;
  const int a = 0, b = 0;
  std::atomic<int> ran_a{0}, ran_b{0};
  std::atomic<bool> in_task{false};
  // A running task of `a`: CancelAll(&a) returns only once it finished.
  timer.Now(&a, [&] {
    in_task = true;
    std::this_thread::sleep_for(milliseconds(200));
    ++ran_a;
  });
  while (!in_task) std::this_thread::sleep_for(milliseconds(1));
  timer.At(Timer::Clock::now() + milliseconds(100), &a, [&] { ++ran_a; });
  timer.At(Timer::Clock::now() + milliseconds(100), &b, [&] { ++ran_b; });
  timer.CancelAll(&a);
  EXPECT_EQ(ran_a.load(), 1);  // the running one finished; the later one is dropped
  const auto deadline = Timer::Clock::now() + std::chrono::seconds(10);
  while (ran_b.load() == 0 && Timer::Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  EXPECT_EQ(ran_b.load(), 1);
  std::this_thread::sleep_for(milliseconds(150));
  EXPECT_EQ(ran_a.load(), 1);
}

}  // namespace
}  // namespace sbx::agent
