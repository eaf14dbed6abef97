// The immutable domain policy a jail is built from. Built only by PolicyBuilder (policy_builder.h), which
// validates it; code that builds jails reads it and never includes the protobuf types.
#ifndef SBX_SANDBOX_POLICY_POLICY_H_
#define SBX_SANDBOX_POLICY_POLICY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace sbx::sandbox {

// A host path bound into the jail. Read-only unless `writable`. An `optional` bind whose source is missing
// is skipped (e.g. /lib64 on hosts that lack it); a required one is a setup error.
struct BindMount {
  std::string src;
  std::string dst;
  bool writable = false;
  bool optional = false;
};

// A size-capped tmpfs. `size_bytes` is always set (the builder rejects an uncapped tmpfs).
struct TmpfsMount {
  std::string dst;
  uint64_t size_bytes = 0;
  uint32_t mode = 01777;
};

// A small file written into the jail's root with fixed contents (e.g. /etc/passwd, /etc/hosts).
struct FileMount {
  std::string dst;
  std::string contents;
  uint32_t mode = 0644;
};

// A symlink in the jail's root (e.g. /bin -> usr/bin on merged-/usr hosts).
struct SymlinkMount {
  std::string dst;
  std::string target;
};

using MountSpec = std::variant<BindMount, TmpfsMount, FileMount, SymlinkMount>;

enum class SeccompAction { kAllow, kErrno, kKill, kLog };

// A condition on one syscall argument. kAnyBitsSet means (arg & value) != 0; the seccomp compiler expands
// it into one rule per bit.
struct SyscallArgCondition {
  enum class Op { kEq, kNe, kMaskedEq, kAnyBitsSet };
  uint32_t index = 0;  // 0..5
  Op op = Op::kEq;
  uint64_t value = 0;
  uint64_t mask = 0;  // only for kMaskedEq
};

struct SeccompRule {
  std::string syscall;  // by name, resolved for the native ABI
  SeccompAction action = SeccompAction::kErrno;
  int errno_value = 1;  // EPERM; only for kErrno
  std::vector<SyscallArgCondition> args;  // all must hold (AND)
};

// Foreign ABIs (i386, x32) are always refused by the compiled filter; there is no switch for that.
struct SeccompPolicy {
  SeccompAction default_action = SeccompAction::kAllow;
  int default_errno = 1;
  std::vector<SeccompRule> rules;
  // kErrno/kKill decisions go to the agent's supervisor (SECCOMP_RET_USER_NOTIF), which answers them and
  // records each as an audit (sandbox/seccomp_notify.h). false: plain RET_ERRNO / RET_KILL_PROCESS.
  bool audit_denials = true;
};

struct Limits {
  uint64_t memory_max_bytes = 512ull << 20;
  uint32_t pids_max = 256;
  uint32_t cpu_millicores = 1000;  // 1000 = one full CPU
  uint64_t wall_time_limit_ms = 10 * 60 * 1000;
  uint64_t open_files_max = 1024;
  uint64_t file_size_max_bytes = 1ull << 30;
  uint64_t output_max_bytes = 64ull << 20;
  // Per-session budgets of the agent's memory for what comes out of the jail (the event log, file payloads)
  // and the largest desktop display (a screenshot's size follows it).
  uint64_t event_log_max_events = 100000;
  uint64_t event_log_max_bytes = 256ull << 20;
  uint64_t file_events_max_bytes = 128ull << 20;
  uint32_t display_max_width = 3840;
  uint32_t display_max_height = 2160;
  // When the pids controller refuses a fork, end the run as failed/pids_limit instead of letting the
  // workload see EAGAIN and go on.
  bool kill_on_pids_limit = true;
};

enum class NetworkMode { kNone, kEgress, kHost };

struct EnvVar {
  std::string name;
  std::string value;
};

// Human approval gates (policy.proto ApprovalPolicy): what waits for a person's decision. The agent enforces
// them (agent/session/approvals.h); the jail never sees them. A request's gates are added to the host policy's
// (PolicyBuilder::AddApprovals), never taking one away.
struct ApprovalSpec {
  // Tool-call kinds (kApprovalKinds in policy_builder.cc: "download", "upload", "write_file", "remove", "exec",
  // "browser_navigate_new_origin", "browser_submit", "desktop_type_secret").
  std::vector<std::string> require_approval;
  std::vector<std::string> exec_regex;       // ExecRule.argv_regex (RE2, partial match on argv joined by ' ')
  std::vector<std::string> secret_patterns;  // RE2; redacted from questions, gate desktop_type_secret
  std::optional<uint64_t> timeout_ms;        // how long a request waits; unset: kDefaultTimeoutMs
  static constexpr uint64_t kDefaultTimeoutMs = 300000;
  uint64_t timeout() const { return timeout_ms.value_or(kDefaultTimeoutMs); }
  bool Requires(std::string_view kind) const {
    for (const std::string& k : require_approval) {
      if (k == kind) return true;
    }
    return false;
  }
};

// Everything a jail is built from. Plain data; Policy below is its immutable wrapper.
struct PolicySpec {
  std::string name;
  // Namespaces that may be turned off. User, pid, mount and net are always new (net is shared with the host
  // only through NetworkMode::kHost, which needs an explicit token in the builder).
  bool new_ipc_ns = true;
  bool new_uts_ns = true;
  bool new_cgroup_ns = true;
  // The uid/gid the workload runs as inside the jail. Never 0.
  uint32_t uid = 1000;
  uint32_t gid = 1000;
  std::vector<MountSpec> mounts;  // applied in order
  Limits limits;
  SeccompPolicy seccomp;
  NetworkMode network = NetworkMode::kNone;
  // EGRESS: the proxy's allow rules (checked by the agent's egress proxy) and its port in the jail.
  std::vector<std::string> egress_allow;
  // EGRESS: destinations held until a human approves them (same syntax; an allow rule wins).
  std::vector<std::string> egress_ask;
  uint16_t egress_proxy_port = 3128;
  // Host variables passed through when set on the host; nothing else is inherited.
  std::vector<std::string> env_passthrough;
  std::vector<EnvVar> env;  // set explicitly, after the passthrough ones
  std::string hostname = "sandbox";
  std::string workdir = "/workspace";
  ApprovalSpec approvals;
};

// An immutable, validated policy.
class Policy {
 public:
  const PolicySpec& spec() const { return spec_; }
  const std::string& name() const { return spec_.name; }
  const Limits& limits() const { return spec_.limits; }
  const std::vector<MountSpec>& mounts() const { return spec_.mounts; }
  const SeccompPolicy& seccomp() const { return spec_.seccomp; }

 private:
  friend class PolicyBuilder;
  explicit Policy(PolicySpec spec) : spec_(std::move(spec)) {}
  PolicySpec spec_;
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_POLICY_POLICY_H_
