#include "sandbox/seccomp_notify.h"

#include <fcntl.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::sandbox {
namespace {

struct Name {
  uint64_t value;
  const char* name;
};

// Flags as "A|B|0x..." (the bits no name covers last); "0" when none.
std::string FlagNames(uint64_t value, std::initializer_list<Name> names) {
  std::string out;
  for (const Name& n : names) {
    if ((value & n.value) == n.value && n.value != 0) {
      absl::StrAppend(&out, out.empty() ? "" : "|", n.name);
      value &= ~n.value;
    }
  }
  if (value != 0 || out.empty()) absl::StrAppend(&out, out.empty() ? "" : "|", "0x", absl::Hex(value));
  return out;
}

// One value's name, or its number.
std::string ValueName(uint64_t value, std::initializer_list<Name> names) {
  for (const Name& n : names) {
    if (n.value == value) return n.name;
  }
  return absl::StrCat(value);
}

#define SBX_NAME(x) Name{x, #x}

const std::initializer_list<Name> kCloneFlags = {
    Name{0x00000080, "CLONE_NEWTIME"},   Name{0x00000100, "CLONE_VM"},
    Name{0x00000200, "CLONE_FS"},        Name{0x00000400, "CLONE_FILES"},
    Name{0x00000800, "CLONE_SIGHAND"},   Name{0x00001000, "CLONE_PIDFD"},
    Name{0x00002000, "CLONE_PTRACE"},    Name{0x00004000, "CLONE_VFORK"},
    Name{0x00008000, "CLONE_PARENT"},    Name{0x00010000, "CLONE_THREAD"},
    Name{0x00020000, "CLONE_NEWNS"},     Name{0x00040000, "CLONE_SYSVSEM"},
    Name{0x00080000, "CLONE_SETTLS"},    Name{0x00100000, "CLONE_PARENT_SETTID"},
    Name{0x00200000, "CLONE_CHILD_CLEARTID"}, Name{0x00400000, "CLONE_DETACHED"},
    Name{0x00800000, "CLONE_UNTRACED"},  Name{0x01000000, "CLONE_CHILD_SETTID"},
    Name{0x02000000, "CLONE_NEWCGROUP"}, Name{0x04000000, "CLONE_NEWUTS"},
    Name{0x08000000, "CLONE_NEWIPC"},    Name{0x10000000, "CLONE_NEWUSER"},
    Name{0x20000000, "CLONE_NEWPID"},    Name{0x40000000, "CLONE_NEWNET"},
    Name{0x80000000, "CLONE_IO"},
};

const std::initializer_list<Name> kFamilies = {
    SBX_NAME(AF_UNSPEC),  SBX_NAME(AF_UNIX),   SBX_NAME(AF_INET),      SBX_NAME(AF_AX25),
    SBX_NAME(AF_IPX),     SBX_NAME(AF_APPLETALK), SBX_NAME(AF_NETROM), SBX_NAME(AF_BRIDGE),
    SBX_NAME(AF_X25),     SBX_NAME(AF_INET6),  SBX_NAME(AF_KEY),       SBX_NAME(AF_NETLINK),
    SBX_NAME(AF_PACKET),  SBX_NAME(AF_RDS),    SBX_NAME(AF_CAN),       SBX_NAME(AF_TIPC),
    SBX_NAME(AF_BLUETOOTH), SBX_NAME(AF_ALG),  SBX_NAME(AF_VSOCK),     SBX_NAME(AF_XDP),
};

const std::initializer_list<Name> kBpfCmds = {
    Name{0, "BPF_MAP_CREATE"},       Name{1, "BPF_MAP_LOOKUP_ELEM"},     Name{2, "BPF_MAP_UPDATE_ELEM"},
    Name{3, "BPF_MAP_DELETE_ELEM"},  Name{4, "BPF_MAP_GET_NEXT_KEY"},    Name{5, "BPF_PROG_LOAD"},
    Name{6, "BPF_OBJ_PIN"},          Name{7, "BPF_OBJ_GET"},             Name{8, "BPF_PROG_ATTACH"},
    Name{9, "BPF_PROG_DETACH"},      Name{10, "BPF_PROG_TEST_RUN"},      Name{11, "BPF_PROG_GET_NEXT_ID"},
    Name{12, "BPF_MAP_GET_NEXT_ID"}, Name{13, "BPF_PROG_GET_FD_BY_ID"},  Name{14, "BPF_MAP_GET_FD_BY_ID"},
    Name{15, "BPF_OBJ_GET_INFO_BY_FD"}, Name{16, "BPF_PROG_QUERY"},     Name{17, "BPF_RAW_TRACEPOINT_OPEN"},
    Name{18, "BPF_BTF_LOAD"},        Name{19, "BPF_BTF_GET_FD_BY_ID"},   Name{20, "BPF_TASK_FD_QUERY"},
    Name{21, "BPF_MAP_LOOKUP_AND_DELETE_ELEM"}, Name{22, "BPF_MAP_FREEZE"}, Name{23, "BPF_BTF_GET_NEXT_ID"},
    Name{28, "BPF_LINK_CREATE"},     Name{34, "BPF_ENABLE_STATS"},       Name{36, "BPF_PROG_BIND_MAP"},
};

const std::initializer_list<Name> kKeyctlOps = {
    Name{0, "KEYCTL_GET_KEYRING_ID"}, Name{1, "KEYCTL_JOIN_SESSION_KEYRING"}, Name{2, "KEYCTL_UPDATE"},
    Name{3, "KEYCTL_REVOKE"},         Name{4, "KEYCTL_CHOWN"},          Name{5, "KEYCTL_SETPERM"},
    Name{6, "KEYCTL_DESCRIBE"},       Name{7, "KEYCTL_CLEAR"},          Name{8, "KEYCTL_LINK"},
    Name{9, "KEYCTL_UNLINK"},         Name{10, "KEYCTL_SEARCH"},        Name{11, "KEYCTL_READ"},
    Name{12, "KEYCTL_INSTANTIATE"},   Name{13, "KEYCTL_NEGATE"},        Name{14, "KEYCTL_SET_REQKEY_KEYRING"},
    Name{15, "KEYCTL_SET_TIMEOUT"},   Name{16, "KEYCTL_ASSUME_AUTHORITY"}, Name{17, "KEYCTL_GET_SECURITY"},
    Name{18, "KEYCTL_SESSION_TO_PARENT"}, Name{19, "KEYCTL_REJECT"},    Name{20, "KEYCTL_INSTANTIATE_IOV"},
    Name{21, "KEYCTL_INVALIDATE"},    Name{22, "KEYCTL_GET_PERSISTENT"}, Name{23, "KEYCTL_DH_COMPUTE"},
    Name{29, "KEYCTL_RESTRICT_KEYRING"}, Name{30, "KEYCTL_MOVE"},       Name{31, "KEYCTL_CAPABILITIES"},
    Name{32, "KEYCTL_WATCH_KEY"},
};

const std::initializer_list<Name> kPtraceRequests = {
    Name{0, "PTRACE_TRACEME"},    Name{1, "PTRACE_PEEKTEXT"},   Name{2, "PTRACE_PEEKDATA"},
    Name{3, "PTRACE_PEEKUSER"},   Name{4, "PTRACE_POKETEXT"},   Name{5, "PTRACE_POKEDATA"},
    Name{6, "PTRACE_POKEUSER"},   Name{7, "PTRACE_CONT"},       Name{8, "PTRACE_KILL"},
    Name{9, "PTRACE_SINGLESTEP"}, Name{12, "PTRACE_GETREGS"},   Name{13, "PTRACE_SETREGS"},
    Name{16, "PTRACE_ATTACH"},    Name{17, "PTRACE_DETACH"},    Name{24, "PTRACE_SYSCALL"},
    Name{0x4200, "PTRACE_SETOPTIONS"}, Name{0x4201, "PTRACE_GETEVENTMSG"}, Name{0x4202, "PTRACE_GETSIGINFO"},
    Name{0x4203, "PTRACE_SETSIGINFO"}, Name{0x4206, "PTRACE_SEIZE"}, Name{0x4207, "PTRACE_INTERRUPT"},
    Name{0x4208, "PTRACE_LISTEN"},
};

#undef SBX_NAME

int PidfdSendSignal(int pidfd, int sig) {
  return static_cast<int>(syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// What /proc says about a caller. Read only while the caller waits in its notification (checked after).
struct CallerInfo {
  pid_t tgid = 0;
  int32_t ns_pid = 0;
  std::string comm;
};

// Reads up to `max` bytes of a small /proc file; "" when it cannot.
std::string ReadSmall(const std::string& path, size_t max) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return "";
  std::string out(max, '\0');
  ssize_t n;
  do {
    n = read(fd.get(), out.data(), max);
  } while (n < 0 && errno == EINTR);
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// The last whitespace-separated number on the line of /proc/<pid>/status that starts with `key`, or 0.
int32_t StatusField(const std::string& status, const char* key) {
  size_t at = 0;
  const size_t key_len = strlen(key);
  while (at < status.size()) {
    size_t end = status.find('\n', at);
    if (end == std::string::npos) end = status.size();
    if (status.compare(at, key_len, key) == 0) {
      // NSpid has one field per pid namespace, the innermost (the jail's) last.
      size_t last = end;
      while (last > at && (status[last - 1] == ' ' || status[last - 1] == '\t')) --last;
      size_t first = last;
      while (first > at + key_len && status[first - 1] >= '0' && status[first - 1] <= '9') --first;
      int32_t value = 0;
      for (size_t i = first; i < last && value < 100000000; ++i) value = value * 10 + (status[i] - '0');
      return value;
    }
    at = end + 1;
  }
  return 0;
}

CallerInfo ReadCaller(pid_t tid) {
  CallerInfo info;
  const std::string status = ReadSmall(absl::StrCat("/proc/", tid, "/status"), 4096);
  info.tgid = StatusField(status, "Tgid:");
  info.ns_pid = StatusField(status, "NSpid:");
  std::string comm = ReadSmall(absl::StrCat("/proc/", tid, "/comm"), 64);
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  info.comm = EscapeComm(comm);
  return info;
}

std::string SyscallName(int nr) {
  char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  if (name == nullptr) return absl::StrCat("#", nr);
  std::string out(name);
  free(name);
  return out;
}

}  // namespace

std::string DecodeSyscallArgs(int nr, const uint64_t args[6]) {
  switch (nr) {
    case __NR_clone:
      // The low byte is the exit signal, not a flag.
      return absl::StrCat("flags=", FlagNames(args[0] & ~uint64_t{0xff}, kCloneFlags),
                          (args[0] & 0xff) != 0 ? absl::StrCat(" signal=", args[0] & 0xff) : "");
    case __NR_unshare:
      return absl::StrCat("flags=", FlagNames(args[0], kCloneFlags));
    case __NR_setns:
      return absl::StrCat("fd=", static_cast<int>(args[0]), " nstype=", FlagNames(args[1], kCloneFlags));
    case __NR_ioctl:
      return absl::StrCat("fd=", static_cast<int>(args[0]), " request=0x", absl::Hex(args[1] & 0xffffffff));
    case __NR_socket:
      return absl::StrCat("family=", ValueName(args[0], kFamilies), " type=", static_cast<int>(args[1]),
                          " protocol=", static_cast<int>(args[2]));
    case __NR_bpf:
      return absl::StrCat("cmd=", ValueName(args[0], kBpfCmds));
    case __NR_keyctl:
      return absl::StrCat("op=", ValueName(args[0], kKeyctlOps));
    case __NR_ptrace:
      return absl::StrCat("request=", ValueName(args[0], kPtraceRequests), " pid=", static_cast<int>(args[1]));
    default:
      return absl::StrCat("0x", absl::Hex(args[0]), " 0x", absl::Hex(args[1]), " 0x", absl::Hex(args[2]));
  }
}

std::string EscapeComm(std::string_view comm) {
  std::string out;
  for (unsigned char c : comm.substr(0, 64)) {
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

AuditRateLimiter::AuditRateLimiter(double burst, double per_second, Clock::time_point now)
    : burst_(burst), per_second_(per_second), tokens_(burst), last_(now) {}

void AuditRateLimiter::Refill(Clock::time_point now) {
  if (now <= last_) return;
  tokens_ = std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_).count() * per_second_);
  last_ = now;
}

AuditRateLimiter::Admission AuditRateLimiter::Admit(Clock::time_point now) {
  Admission out;
  out.flush = Flush(now);
  if (tokens_ >= 1) {
    tokens_ -= 1;
    out.record = true;
  } else {
    ++suppressed_;
  }
  return out;
}

uint64_t AuditRateLimiter::Flush(Clock::time_point now) {
  Refill(now);
  if (suppressed_ == 0 || tokens_ < 1) return 0;
  tokens_ -= 1;  // the summary is a record too
  return std::exchange(suppressed_, 0);
}

uint64_t AuditRateLimiter::TakeSuppressed() { return std::exchange(suppressed_, 0); }

absl::StatusOr<std::unique_ptr<SeccompSupervisor>> SeccompSupervisor::Start(UniqueFd listener,
                                                                           SeccompDenyTable table,
                                                                           SeccompAuditSink sink,
                                                                           Options options) {
  if (!listener) return absl::InvalidArgumentError("seccomp supervisor: no listener");
  std::unique_ptr<SeccompSupervisor> s(
      new SeccompSupervisor(std::move(listener), std::move(table), std::move(sink), options));
  if (!s->wake_) return ErrnoToStatus(errno, "eventfd (seccomp supervisor)");
  s->thread_ = std::jthread([raw = s.get()](std::stop_token stop) { raw->Run(stop); });
  return s;
}

SeccompSupervisor::SeccompSupervisor(UniqueFd listener, SeccompDenyTable table, SeccompAuditSink sink,
                                     Options options)
    : listener_(std::move(listener)),
      wake_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      table_(std::move(table)),
      sink_(std::move(sink)),
      limiter_(options.audit_burst, options.audits_per_second, AuditRateLimiter::Clock::now()) {}

SeccompSupervisor::~SeccompSupervisor() {
  thread_.request_stop();
  const uint64_t one = 1;
  if (write(wake_.get(), &one, sizeof(one)) != sizeof(one)) {
    // Cannot fail below the eventfd's maximum; the thread then ends at its next wake-up.
  }
  if (thread_.joinable()) thread_.join();
  // The thread closed the listener on its way out: the kernel answers ENOSYS from here on (the header's NOTE).
}

std::string SeccompSupervisor::last_killed_syscall() const {
  absl::MutexLock lock(&mu_);
  return last_killed_;
}

void SeccompSupervisor::Run(std::stop_token stop) {
  seccomp_notif* req = nullptr;
  seccomp_notif_resp* resp = nullptr;
  // Sized for the running kernel (its structs may be larger than our headers').
  if (seccomp_notify_alloc(&req, &resp) != 0) {
    listener_.Reset();  // nothing will answer: the kernel answers ENOSYS from now on, nothing blocks
    return;
  }
  seccomp_notif_sizes sizes{};
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) sizes.seccomp_notif = sizeof(*req);
  const auto emit_suppressed = [this](uint64_t count) {
    SeccompAudit a;
    a.kind = SeccompAudit::Kind::kSuppressed;
    a.suppressed = count;
    if (sink_) sink_(a);
  };
  bool listening = true;
  while (!stop.stop_requested()) {
    pollfd fds[2] = {{listening ? listener_.get() : -1, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    // While denials are being counted, wake up to report them once the bucket has a token again.
    const int timeout_ms = limiter_.suppressed() > 0 ? 50 : -1;
    const int n = poll(fds, 2, timeout_ms);
    if (n < 0 && errno != EINTR) break;
    if (limiter_.suppressed() > 0) {
      if (uint64_t count = limiter_.Flush(AuditRateLimiter::Clock::now()); count > 0) emit_suppressed(count);
    }
    if (n <= 0) continue;
    if ((fds[1].revents & POLLIN) != 0) break;
    if ((fds[0].revents & POLLIN) != 0) {
      memset(req, 0, sizes.seccomp_notif);
      if (ioctl(listener_.get(), SECCOMP_IOCTL_NOTIF_RECV, req) == 0) {
        Handle(req, resp);
      }
      // ENOENT: the caller was killed between poll and recv; EINTR: poll again.
    } else if ((fds[0].revents & (POLLHUP | POLLERR | POLLNVAL)) != 0) {
      listening = false;  // no task uses the filter any more
    }
  }
  if (uint64_t count = limiter_.TakeSuppressed(); count > 0) emit_suppressed(count);
  seccomp_notify_free(req, resp);
  // However the loop ended (a stop, or poll failing), no call may wait for an answer that never comes.
  listener_.Reset();
}

void SeccompSupervisor::Handle(seccomp_notif* req, seccomp_notif_resp* resp) {
  denials_.fetch_add(1, std::memory_order_relaxed);
  uint64_t args[6];  // __u64 is unsigned long long, uint64_t unsigned long
  for (int i = 0; i < 6; ++i) args[i] = req->data.args[i];
  const SeccompDecision decision = table_.Decide(req->data.nr, args);
  const bool kill = decision.action == SeccompAction::kKill;
  const AuditRateLimiter::Admission admission = limiter_.Admit(AuditRateLimiter::Clock::now());
  if (admission.flush > 0 && sink_) {
    SeccompAudit a;
    a.kind = SeccompAudit::Kind::kSuppressed;
    a.suppressed = admission.flush;
    sink_(a);
  }
  const int fd = listener_.get();
  uint64_t id = req->id;
  CallerInfo caller;
  if (admission.record || kill) {
    caller = ReadCaller(static_cast<pid_t>(req->pid));
    // The pid in /proc is the caller's only while it still waits in this notification; otherwise it died
    // (and its pid may be another process's now): nothing to answer, nothing read is trusted.
    if (ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) != 0) return;
  }
  bool killed = false;
  if (kill) {
    // The whole thread group, as SECCOMP_RET_KILL_PROCESS would. The pidfd pins the process; checking the
    // notification again after opening it proves the pidfd's process is the caller's (a recycled pid
    // would have let the caller's notification go first), so nothing else is ever signalled.
    const pid_t tgid = caller.tgid > 0 ? caller.tgid : static_cast<pid_t>(req->pid);
    UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, tgid, 0)));
    if (pidfd && ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0) {
      // Recorded before the signal: whoever reaps the process (and then asks why it died) must find the
      // reason already there, not race this thread for it.
      std::string previous;
      {
        absl::MutexLock lock(&mu_);
        previous = std::exchange(last_killed_, SyscallName(req->data.nr));
      }
      kills_.fetch_add(1);
      if (PidfdSendSignal(pidfd.get(), SIGKILL) == 0) {
        killed = true;
      } else {
        kills_.fetch_sub(1);
        absl::MutexLock lock(&mu_);
        last_killed_ = std::move(previous);
      }
    }
  }
  // A kill that could not be carried out still denies the call.
  const int errno_value = kill ? EPERM : decision.errno_value;
  // The record goes out before the answer: the audit precedes whatever the caller does next (in the event
  // log, before its tool call's end).
  if (admission.record && sink_) {
    SeccompAudit a;
    a.kind = killed ? SeccompAudit::Kind::kKilled : SeccompAudit::Kind::kDenied;
    a.syscall = SyscallName(req->data.nr);
    a.args = DecodeSyscallArgs(req->data.nr, args);
    a.pid = caller.ns_pid;
    a.host_pid = caller.tgid;
    a.comm = caller.comm;
    a.errno_value = killed ? 0 : errno_value;
    a.rule = decision.rule;
    sink_(a);
  }
  memset(resp, 0, sizeof(*resp));
  resp->id = req->id;
  resp->error = -errno_value;
  if (ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, resp) != 0) {
    // ENOENT: the caller is gone (killed above, or by someone else). Nothing ran either way.
  }
}

}  // namespace sbx::sandbox
