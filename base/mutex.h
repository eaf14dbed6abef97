// A mutex that clang's thread-safety analysis (deploy/tsa-check.sh) understands, for code that cannot take
// abseil: sandbox-init is static and abseil-free. Elsewhere the product uses absl::Mutex and ABSL_GUARDED_BY;
// these are the same annotations, spelled for std::mutex:
//
//   base::Mutex mu_;
//   std::deque<Item> queue_ SBX_GUARDED_BY(mu_);
//   ...
//   base::MutexLock lock(mu_);   // or, to wait: cv_.wait(lock, ...) with a std::condition_variable_any
#ifndef SBX_BASE_MUTEX_H_
#define SBX_BASE_MUTEX_H_

#include <mutex>

#if defined(__clang__)
#define SBX_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SBX_THREAD_ANNOTATION(x)
#endif

#define SBX_CAPABILITY(x) SBX_THREAD_ANNOTATION(capability(x))
#define SBX_SCOPED_CAPABILITY SBX_THREAD_ANNOTATION(scoped_lockable)
#define SBX_GUARDED_BY(x) SBX_THREAD_ANNOTATION(guarded_by(x))
#define SBX_ACQUIRE(...) SBX_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define SBX_RELEASE(...) SBX_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define SBX_REQUIRES(...) SBX_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define SBX_NO_THREAD_SAFETY_ANALYSIS SBX_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace sbx::base {

class SBX_CAPABILITY("mutex") Mutex {
 public:
  void lock() SBX_ACQUIRE() { mu_.lock(); }
  void unlock() SBX_RELEASE() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds `mu` for its scope. It is also a BasicLockable, so a std::condition_variable_any can wait on it (the
// wait unlocks and relocks inside; to the analysis the lock is held throughout, as it is for the caller).
class SBX_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) SBX_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() SBX_RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // For std::condition_variable_any only (its wait unlocks and relocks within one call).
  void lock() SBX_NO_THREAD_SAFETY_ANALYSIS { mu_.lock(); }
  void unlock() SBX_NO_THREAD_SAFETY_ANALYSIS { mu_.unlock(); }

 private:
  Mutex& mu_;
};

}  // namespace sbx::base

#endif  // SBX_BASE_MUTEX_H_
