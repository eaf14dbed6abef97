// Cloning the jail child: clone3 into new namespaces with a pidfd, on x86-64 sharing the agent's memory until
// exec (CLONE_VM | CLONE_VFORK on a stack of its own), with a clone(2) fallback.
#include "sandbox/jail_clone.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace sbx::sandbox::internal {
namespace {

// clone3's arguments for a jail child: a pidfd, its pid in *tid, and (v2) born in the session cgroup with no
// migration afterwards.
clone_args JailCloneArgs(uint64_t flags, int* pidfd, pid_t* tid, int cgroup_fd) {
  clone_args args{};
  args.flags = flags | CLONE_PIDFD | CLONE_PARENT_SETTID;
  if (cgroup_fd >= 0) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = static_cast<uint64_t>(cgroup_fd);
  }
  args.pidfd = reinterpret_cast<uint64_t>(pidfd);
  args.parent_tid = reinterpret_cast<uint64_t>(tid);
  args.exit_signal = SIGCHLD;
  return args;
}

// clone3 with a pidfd (and CLONE_PARENT_SETTID into *tid); falls back to clone(2) on kernels (or seccomp
// profiles) without clone3. Returns 0 in the child.
// NOTE: clone(2) returns the pidfd through its parent_tid argument, so it cannot take CLONE_PARENT_SETTID
// too (EINVAL): there *tid is stored after clone returns, and a reader of it must wait for it to be set.
// Nor can it take CLONE_INTO_CGROUP: with a cgroup (v2) the fallback sets *move_into_cgroup before *tid,
// and the reader of *tid then moves the child into the cgroup before releasing it from its sync pipe.
pid_t CloneWithPidfd(uint64_t flags, int* pidfd, pid_t* tid, int cgroup_fd, int* move_into_cgroup) {
  clone_args args = JailCloneArgs(flags, pidfd, tid, cgroup_fd);
  long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid < 0 && errno == ENOSYS) {
    pid = syscall(SYS_clone, flags | CLONE_PIDFD | SIGCHLD, nullptr, pidfd, nullptr, nullptr);
    if (pid > 0) {
      if (cgroup_fd >= 0) __atomic_store_n(move_into_cgroup, 1, __ATOMIC_RELAXED);
      __atomic_store_n(tid, static_cast<pid_t>(pid), __ATOMIC_RELEASE);
    }
  }
  return static_cast<pid_t>(pid);
}

#if defined(__x86_64__)
// The jail child shares the agent's memory until it execs: clone3(CLONE_VM | CLONE_VFORK) onto its own stack,
// as posix_spawn does. A fork-style clone of the agent (a large, many-threaded process) copies its page
// tables, and then every page any agent thread writes takes a copy-on-write fault with a TLB shootdown on
// every CPU: under a stream of session starts that was half the agent's CPU time. With CLONE_VFORK the
// launching thread sleeps until the child execs or exits, so the child alone uses that thread's TLS.
constexpr size_t kChildStackBytes = 256 << 10;

// A stack for the children this thread clones, kept for the thread's life (one child at a time: the
// thread is suspended while its child runs). A guard page below catches an overflow.
struct ChildStack {
  void* base = nullptr;
  ~ChildStack() {
    if (base != nullptr) munmap(base, kChildStackBytes + 4096);
  }
  char* top() {
    if (base == nullptr) {
      void* p = mmap(nullptr, kChildStackBytes + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK,
                     -1, 0);
      if (p == MAP_FAILED) return nullptr;
      mprotect(p, 4096, PROT_NONE);
      base = p;
    }
    return static_cast<char*>(base) + 4096 + kChildStackBytes;  // 16-byte aligned
  }
};

[[noreturn]] void ChildEntry(void* spec) { RunJailChild(*static_cast<const ChildSpec*>(spec)); }

// clone3 that runs fn(arg) on `stack_top` in the child and never returns there. In the parent: the pid, or
// -1 with errno.
[[gnu::noinline]] long Clone3OnStack(clone_args* args, void (*fn)(void*), void* arg) {
  long ret;
  register void (*r8)(void*) asm("r8") = fn;
  register void* r9 asm("r9") = arg;
  asm volatile(
      "syscall\n\t"
      "testq %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      // The child, on its new stack (16-byte aligned; the call pushes the return address).
      "xorl %%ebp, %%ebp\n\t"
      "movq %%r9, %%rdi\n\t"
      "callq *%%r8\n\t"
      "movl $60, %%eax\n\t"  // SYS_exit, should fn ever return
      "movl $125, %%edi\n\t"
      "syscall\n\t"
      "hlt\n\t"
      "1:\n\t"
      : "=a"(ret)
      : "0"(static_cast<long>(SYS_clone3)), "D"(args), "S"(sizeof(clone_args)), "r"(r8), "r"(r9)
      : "rcx", "r11", "memory", "cc");
  if (ret < 0) {
    errno = static_cast<int>(-ret);
    return -1;
  }
  return ret;
}
#endif

}  // namespace

SharedForkHandoff::SharedForkHandoff() {
  void* p = mmap(nullptr, sizeof(ForkHandoff), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p != MAP_FAILED) handoff_ = static_cast<ForkHandoff*>(p);
}

SharedForkHandoff::~SharedForkHandoff() {
  if (handoff_ != nullptr) munmap(handoff_, sizeof(ForkHandoff));
}

bool FillForkHandoff(ForkHandoff* h, const std::vector<sock_filter>* instructions,
                     const std::vector<std::string>* tasks_files) {
  if (instructions != nullptr) {
    if (instructions->size() > BPF_MAXINSNS) return false;
    memcpy(h->filter, instructions->data(), instructions->size() * sizeof(sock_filter));
    h->prog.len = static_cast<unsigned short>(instructions->size());
    h->prog.filter = h->filter;
  }
  if (tasks_files != nullptr) {
    if (tasks_files->size() > ForkHandoff::kMaxTasksFiles) return false;
    for (size_t i = 0; i < tasks_files->size(); ++i) {
      const std::string& path = (*tasks_files)[i];
      if (path.size() >= PATH_MAX) return false;
      memcpy(h->tasks_paths[i], path.c_str(), path.size() + 1);
      h->tasks_files[i] = h->tasks_paths[i];
    }
  }
  return true;
}

namespace {

// This process's command line and environment blocks from /proc/self/stat (fields 48 to 51: arg_start,
// arg_end, env_start, env_end; Linux >= 3.5). Both empty when it cannot be read.
void ArgsAndEnvRegions(ChildSpec::Region* args, ChildSpec::Region* env) {
  char buf[4096];
  const int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  const ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return;
  buf[n] = '\0';
  // Field 2 (comm) may hold spaces and parentheses: count fields from the last ')', which ends it.
  const char* p = strrchr(buf, ')');
  if (p == nullptr) return;
  unsigned long long fields[51] = {};
  int field = 2;
  for (++p; *p != '\0' && field < 51;) {
    while (*p == ' ') ++p;
    char* end = nullptr;
    const unsigned long long v = strtoull(p, &end, 10);
    if (end == p) {  // field 3, the state letter
      while (*p != ' ' && *p != '\0') ++p;
    } else {
      p = end;
    }
    fields[++field - 1] = v;
  }
  if (field < 51 || fields[47] == 0 || fields[48] < fields[47] || fields[50] < fields[49]) return;
  *args = {reinterpret_cast<char*>(fields[47]), static_cast<size_t>(fields[48] - fields[47])};
  *env = {reinterpret_cast<char*>(fields[49]), static_cast<size_t>(fields[50] - fields[49])};
}

}  // namespace

void UseForkHandoff(ForkHandoff* h, ChildSpec* child) {
  child->seccomp = &h->prog;
  child->cgroup_tasks_files = h->tasks_files;
  child->num_cgroup_tasks_files = ForkHandoff::kMaxTasksFiles;
  child->in_process_init = true;
  ArgsAndEnvRegions(&child->scrub[0], &child->scrub[1]);
}

pid_t StartChild(uint64_t flags, int* pidfd, pid_t* tid, int cgroup_fd, int* move_into_cgroup,
                 const ChildSpec& child, const std::function<void()>& before_copy, bool fork_style) {
#if defined(__x86_64__)
  static thread_local ChildStack stack;
  char* top = fork_style ? nullptr : stack.top();
  if (top != nullptr) {
    clone_args args = JailCloneArgs(flags | CLONE_VM | CLONE_VFORK, pidfd, tid, cgroup_fd);
    args.stack = reinterpret_cast<uint64_t>(top - kChildStackBytes);
    args.stack_size = kChildStackBytes;
    // No signal handler of the agent may run on the child's stack before it resets them: block all.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    long pid = Clone3OnStack(&args, ChildEntry, const_cast<ChildSpec*>(&child));
    const int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    errno = err;
    if (pid >= 0 || errno != ENOSYS) return static_cast<pid_t>(pid);
  }
#endif
  if (!fork_style) before_copy();  // a fork_style child reads the helper's late work from its ForkHandoff
  const pid_t pid = CloneWithPidfd(flags, pidfd, tid, cgroup_fd, move_into_cgroup);
  if (pid == 0) RunJailChild(child);  // never returns
  return pid;
}

}  // namespace sbx::sandbox::internal
