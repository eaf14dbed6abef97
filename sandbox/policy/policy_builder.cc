#include "sandbox/policy/policy_builder.h"

#include <algorithm>
#include <cstddef>
#include <map>
#include <type_traits>
#include <utility>
#include <variant>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "re2/re2.h"
#include "base/status.h"

namespace sbx::sandbox {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = kKiB << 10;
constexpr uint64_t kGiB = kMiB << 10;
constexpr uint64_t kTiB = kGiB << 10;

constexpr size_t kMaxPathLength = 4095;  // PATH_MAX minus the NUL
constexpr uint64_t kMaxTmpfsBytes = 64 * kGiB;
constexpr size_t kMaxFileContentsBytes = 1 * kMiB;
constexpr uint32_t kMaxMode = 07777;
constexpr uint32_t kMaxId = 65535;
constexpr size_t kMaxHostnameLength = 64;
constexpr int kMaxErrno = 4095;
constexpr uint32_t kMaxArgIndex = 5;
// A rule's conditions: at most one per argument, except NE, which may repeat up to kMaxNeValuesPerArg times
// on one argument (each NE value costs up to ~128 BPF comparisons, see seccomp_program.cc).
constexpr size_t kMaxNeValuesPerArg = 8;
constexpr size_t kMaxArgConditions = 16;

// The accepted range of one limit; `range` is the human form used in messages.
struct LimitBound {
  const char* field;
  uint64_t min;
  uint64_t max;
  const char* range;
};

constexpr LimitBound kMemoryBound{"limits.memory_max_bytes", kMiB, kTiB, "between 1 MiB and 1 TiB"};
constexpr LimitBound kPidsBound{"limits.pids_max", 1, 4194304, "between 1 and 4194304"};
constexpr LimitBound kCpuBound{"limits.cpu_millicores", 10, 1024000, "between 10 and 1024000"};
constexpr LimitBound kWallTimeBound{"limits.wall_time_limit_ms", 1, uint64_t{7} * 24 * 3600 * 1000,
                                    "between 1 ms and 7 days (604800000 ms)"};
constexpr LimitBound kOpenFilesBound{"limits.open_files_max", 3, 1048576, "between 3 and 1048576"};
constexpr LimitBound kFileSizeBound{"limits.file_size_max_bytes", 1, kTiB, "between 1 byte and 1 TiB"};
constexpr LimitBound kOutputBound{"limits.output_max_bytes", 1, kTiB, "between 1 byte and 1 TiB"};
constexpr LimitBound kEventLogEventsBound{"limits.event_log_max_events", 16, 16777216, "between 16 and 16777216"};
constexpr LimitBound kEventLogBytesBound{"limits.event_log_max_bytes", kMiB, 64 * kGiB, "between 1 MiB and 64 GiB"};
constexpr LimitBound kFileEventsBound{"limits.file_events_max_bytes", 1, 64 * kGiB, "between 1 byte and 64 GiB"};
constexpr LimitBound kDisplayWidthBound{"limits.display_max_width", 64, 7680, "between 64 and 7680 pixels"};
constexpr LimitBound kDisplayHeightBound{"limits.display_max_height", 64, 4320, "between 64 and 4320 pixels"};

// "<field>: <message...>" as InvalidArgument.
template <typename... Args>
absl::Status FieldError(std::string_view field, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(ToAbsl(field), ": ", args...));
}

// A string as it appears in messages: quoted, with control bytes escaped.
std::string Quote(std::string_view s) { return absl::StrCat("\"", absl::CHexEscape(ToAbsl(s)), "\""); }

std::string Octal(uint32_t mode) { return absl::StrFormat("%#o", mode); }
std::string Hex(uint64_t value) { return absl::StrFormat("%#x", value); }

absl::Status CheckLimit(const LimitBound& bound, uint64_t value) {
  if (value == 0) return FieldError(bound.field, "0 is not allowed (must be ", bound.range, ")");
  if (value < bound.min || value > bound.max) {
    return FieldError(bound.field, value, " is out of range (must be ", bound.range, ")");
  }
  return absl::OkStatus();
}

// Accepts only absolute, normalized paths: a leading '/', no empty, "." or ".." components, no trailing '/'
// (except for "/" itself), no NUL byte.
absl::Status CheckAbsolutePath(std::string_view field, std::string_view path) {
  if (path.empty()) return FieldError(field, "must be set to an absolute path");
  if (path.size() > kMaxPathLength) {
    return FieldError(field, "path is ", path.size(), " bytes long (at most ", kMaxPathLength, ")");
  }
  if (path.find('\0') != std::string_view::npos) {
    return FieldError(field, Quote(path), " contains a NUL byte");
  }
  if (path.front() != '/') return FieldError(field, Quote(path), " is not an absolute path");
  if (path == "/") return absl::OkStatus();
  if (path.back() == '/') return FieldError(field, Quote(path), " is not normalized (trailing '/')");
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view component = path.substr(start, end - start);
    if (component.empty()) return FieldError(field, Quote(path), " is not normalized (empty component)");
    if (component == "." || component == "..") {
      return FieldError(field, Quote(path), " is not normalized (it has a \"", ToAbsl(component),
                        "\" component)");
    }
    start = end + 1;
  }
  return absl::OkStatus();
}

bool IsUnder(std::string_view path, std::string_view dir) {
  return path == dir ||
         (path.size() > dir.size() && path.substr(0, dir.size()) == dir && path[dir.size()] == '/');
}

// A mount destination: an absolute path that the jail does not own itself.
absl::Status CheckDestination(std::string_view field, std::string_view dst) {
  RETURN_IF_ERROR(CheckAbsolutePath(field, dst));
  if (dst == "/") return FieldError(field, "/ is the jail's root and cannot be a mount destination");
  if (IsUnder(dst, "/proc")) {
    return FieldError(field, Quote(dst), " is under /proc, which the jail sets up itself");
  }
  if (dst == "/dev") return FieldError(field, "/dev is set up by the jail itself");
  return absl::OkStatus();
}

const char* MountKind(const MountSpec& mount) {
  return std::visit(
      [](const auto& m) -> const char* {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, BindMount>) return "bind";
        if constexpr (std::is_same_v<T, TmpfsMount>) return "tmpfs";
        if constexpr (std::is_same_v<T, FileMount>) return "file";
        return "symlink";
      },
      mount);
}

const std::string& MountDestination(const MountSpec& mount) {
  return std::visit([](const auto& m) -> const std::string& { return m.dst; }, mount);
}

// Validates mounts[index] given the mounts before it (whose destinations it must not repeat).
absl::Status ValidateMount(const MountSpec& mount, size_t index, absl::Span<const MountSpec> earlier) {
  const std::string prefix = absl::StrCat("mounts[", index, "].", MountKind(mount), ".");
  auto field = [&prefix](const char* name) { return absl::StrCat(prefix, name); };
  const std::string& dst = MountDestination(mount);
  RETURN_IF_ERROR(CheckDestination(field("dst"), dst));

  if (const auto* bind = std::get_if<BindMount>(&mount)) {
    RETURN_IF_ERROR(CheckAbsolutePath(field("src"), bind->src));
    if (bind->writable && bind->src == "/") {
      return FieldError(field("writable"), "a writable bind of the host's / is not allowed");
    }
  } else if (const auto* tmpfs = std::get_if<TmpfsMount>(&mount)) {
    if (tmpfs->size_bytes == 0) {
      return FieldError(field("size_bytes"),
                        "0 is not allowed (a tmpfs needs a size cap between 1 byte and 64 GiB)");
    }
    if (tmpfs->size_bytes > kMaxTmpfsBytes) {
      return FieldError(field("size_bytes"), tmpfs->size_bytes,
                        " is out of range (must be between 1 byte and 64 GiB)");
    }
    if (tmpfs->mode > kMaxMode) {
      return FieldError(field("mode"), Octal(tmpfs->mode), " is not a permission mode (at most 07777)");
    }
  } else if (const auto* file = std::get_if<FileMount>(&mount)) {
    if (file->contents.size() > kMaxFileContentsBytes) {
      return FieldError(field("contents"), file->contents.size(), " bytes is too large (at most 1 MiB)");
    }
    if (file->mode > kMaxMode) {
      return FieldError(field("mode"), Octal(file->mode), " is not a permission mode (at most 07777)");
    }
    if ((file->mode & 06000) != 0) {
      return FieldError(field("mode"), Octal(file->mode), " sets the setuid or setgid bit");
    }
  } else if (const auto* symlink = std::get_if<SymlinkMount>(&mount)) {
    if (symlink->target.empty()) return FieldError(field("target"), "must be set");
    if (symlink->target.size() > kMaxPathLength) {
      return FieldError(field("target"), "is ", symlink->target.size(), " bytes long (at most ",
                        kMaxPathLength, ")");
    }
    if (symlink->target.find('\0') != std::string::npos) {
      return FieldError(field("target"), Quote(symlink->target), " contains a NUL byte");
    }
  }

  for (size_t i = 0; i < earlier.size(); ++i) {
    if (MountDestination(earlier[i]) == dst) {
      return FieldError(field("dst"), Quote(dst), " is already the destination of mounts[", i, "]");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLimits(const Limits& limits) {
  RETURN_IF_ERROR(CheckLimit(kMemoryBound, limits.memory_max_bytes));
  RETURN_IF_ERROR(CheckLimit(kPidsBound, limits.pids_max));
  RETURN_IF_ERROR(CheckLimit(kCpuBound, limits.cpu_millicores));
  RETURN_IF_ERROR(CheckLimit(kWallTimeBound, limits.wall_time_limit_ms));
  RETURN_IF_ERROR(CheckLimit(kOpenFilesBound, limits.open_files_max));
  RETURN_IF_ERROR(CheckLimit(kFileSizeBound, limits.file_size_max_bytes));
  RETURN_IF_ERROR(CheckLimit(kOutputBound, limits.output_max_bytes));
  RETURN_IF_ERROR(CheckLimit(kEventLogEventsBound, limits.event_log_max_events));
  RETURN_IF_ERROR(CheckLimit(kEventLogBytesBound, limits.event_log_max_bytes));
  RETURN_IF_ERROR(CheckLimit(kFileEventsBound, limits.file_events_max_bytes));
  RETURN_IF_ERROR(CheckLimit(kDisplayWidthBound, limits.display_max_width));
  RETURN_IF_ERROR(CheckLimit(kDisplayHeightBound, limits.display_max_height));
  return absl::OkStatus();
}

absl::Status CheckId(std::string_view field, uint32_t id) {
  if (id == 0) {
    return FieldError(field, "0 is not allowed (must be between 1 and 65535; root never runs a workload)");
  }
  if (id > kMaxId) return FieldError(field, id, " is out of range (must be between 1 and 65535)");
  return absl::OkStatus();
}

absl::Status CheckHostname(std::string_view hostname) {
  if (hostname.empty() || hostname.size() > kMaxHostnameLength) {
    return FieldError("hostname", Quote(hostname), " must be 1 to 64 characters long");
  }
  for (char c : hostname) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
    if (!ok) return FieldError("hostname", Quote(hostname), " has a character outside [A-Za-z0-9-.]");
  }
  return absl::OkStatus();
}

absl::Status CheckEnvName(std::string_view field, std::string_view name) {
  bool ok = !name.empty() && !(name.front() >= '0' && name.front() <= '9');
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_');
  }
  if (!ok) return FieldError(field, Quote(name), " is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)");
  return absl::OkStatus();
}

absl::Status ValidateEnvVar(const EnvVar& var, size_t index) {
  RETURN_IF_ERROR(CheckEnvName(absl::StrCat("env.set[", index, "].name"), var.name));
  if (var.value.find('\0') != std::string::npos) {
    return FieldError(absl::StrCat("env.set[", index, "].value"), "contains a NUL byte");
  }
  return absl::OkStatus();
}

absl::Status ValidatePassthrough(std::string_view name, size_t index) {
  return CheckEnvName(absl::StrCat("env.passthrough[", index, "]"), name);
}

const char* ActionName(SeccompAction action) {
  switch (action) {
    case SeccompAction::kAllow:
      return "ALLOW";
    case SeccompAction::kErrno:
      return "ERRNO";
    case SeccompAction::kKill:
      return "KILL";
    case SeccompAction::kLog:
      return "LOG";
  }
  return nullptr;
}

absl::Status CheckAction(std::string_view field, SeccompAction action) {
  if (ActionName(action) == nullptr) return FieldError(field, "unknown action ", static_cast<int>(action));
  return absl::OkStatus();
}

absl::Status CheckErrno(std::string_view field, int value) {
  if (value == 0) return FieldError(field, "0 is not allowed (must be between 1 and 4095)");
  if (value < 1 || value > kMaxErrno) {
    return FieldError(field, value, " is out of range (must be between 1 and 4095)");
  }
  return absl::OkStatus();
}

absl::Status ValidateArgCondition(const SyscallArgCondition& arg, std::string_view path) {
  const std::string p(path);
  if (arg.index > kMaxArgIndex) {
    return FieldError(p + ".index", arg.index, " is out of range (must be between 0 and 5)");
  }
  switch (arg.op) {
    case SyscallArgCondition::Op::kEq:
    case SyscallArgCondition::Op::kNe:
      if (arg.mask != 0) return FieldError(p + ".mask", "is only meaningful with MASKED_EQ");
      break;
    case SyscallArgCondition::Op::kMaskedEq:
      if (arg.mask == 0) return FieldError(p + ".mask", "0 makes the condition match every value or none");
      if ((arg.value & ~arg.mask) != 0) {
        return FieldError(p + ".value", Hex(arg.value), " has bits outside the mask ", Hex(arg.mask),
                          ", so the condition never holds");
      }
      break;
    case SyscallArgCondition::Op::kAnyBitsSet:
      if (arg.value == 0) {
        return FieldError(p + ".value", "0 has no bits to test, so the condition never holds");
      }
      if (arg.mask != 0) return FieldError(p + ".mask", "is only meaningful with MASKED_EQ");
      break;
    default:
      return FieldError(p + ".op", "unknown comparison ", static_cast<int>(arg.op));
  }
  return absl::OkStatus();
}

bool IsSyscallName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

absl::Status ValidateSeccomp(const SeccompPolicy& seccomp) {
  RETURN_IF_ERROR(CheckAction("seccomp.default_action", seccomp.default_action));
  if (seccomp.default_action == SeccompAction::kErrno) {
    RETURN_IF_ERROR(CheckErrno("seccomp.default_errno", seccomp.default_errno));
  }
  // syscall -> index of its first rule, to refuse rules that shadow or contradict each other.
  std::map<std::string_view, size_t> first_rule;
  for (size_t i = 0; i < seccomp.rules.size(); ++i) {
    const SeccompRule& rule = seccomp.rules[i];
    const std::string path = absl::StrCat("seccomp.rules[", i, "]");
    if (rule.syscall.empty()) return FieldError(path + ".syscall", "must be set");
    if (!IsSyscallName(rule.syscall)) {
      return FieldError(path + ".syscall", Quote(rule.syscall), " is not a syscall name ([a-z0-9_]+)");
    }
    RETURN_IF_ERROR(CheckAction(path + ".action", rule.action));
    if (rule.action == SeccompAction::kErrno) {
      RETURN_IF_ERROR(CheckErrno(path + ".errno_value", rule.errno_value));
    }
    if (rule.action == seccomp.default_action &&
        (rule.action != SeccompAction::kErrno || rule.errno_value == seccomp.default_errno)) {
      return FieldError(path + ".action", ActionName(rule.action), " for ", Quote(rule.syscall),
                        " under default_action ", ActionName(seccomp.default_action),
                        " is a contradiction (the rule would have no effect)");
    }
    if (rule.args.size() > kMaxArgConditions) {
      return FieldError(path + ".args", rule.args.size(), " conditions (at most ", kMaxArgConditions, ")");
    }
    for (size_t j = 0; j < rule.args.size(); ++j) {
      const std::string arg_path = absl::StrCat(path, ".args[", j, "]");
      RETURN_IF_ERROR(ValidateArgCondition(rule.args[j], arg_path));
      // One argument may have several conditions only when all are NE: "the argument is none of these
      // values" (e.g. personality's allow-list). Other combinations are either empty or one condition.
      size_t same_arg = 0;
      for (size_t k = 0; k < j; ++k) {
        if (rule.args[k].index != rule.args[j].index) continue;
        ++same_arg;
        if (rule.args[k].op != SyscallArgCondition::Op::kNe || rule.args[j].op != SyscallArgCondition::Op::kNe) {
          return FieldError(arg_path + ".index", "argument ", rule.args[j].index,
                            " already has a condition (args[", k,
                            "]); only NE conditions may repeat an argument");
        }
        if (rule.args[k].value == rule.args[j].value) {
          return FieldError(arg_path + ".value", Hex(rule.args[j].value), " repeats args[", k, "]");
        }
      }
      if (same_arg + 1 > kMaxNeValuesPerArg) {
        return FieldError(arg_path, "more than ", kMaxNeValuesPerArg, " NE conditions on argument ",
                          rule.args[j].index);
      }
    }
    auto [it, inserted] = first_rule.emplace(rule.syscall, i);
    if (!inserted) {
      const SeccompRule& other = seccomp.rules[it->second];
      if (rule.args.empty() || other.args.empty()) {
        return FieldError(path + ".syscall", Quote(rule.syscall), " already has a rule (seccomp.rules[",
                          it->second,
                          "]); a rule without argument conditions must be the only one for its syscall");
      }
    }
  }
  return absl::OkStatus();
}

// Human approval gates (ApprovalSpec). Names as in policy.proto ApprovalPolicy.
constexpr const char* kApprovalKinds[] = {"download",       "upload",         "write_file",
                                          "remove",         "exec",           "browser_navigate_new_origin",
                                          "browser_submit", "desktop_type_secret"};
constexpr size_t kMaxApprovalRules = 64;         // per list
constexpr size_t kMaxApprovalPatternBytes = 1024;  // one regex's text
constexpr LimitBound kApprovalTimeoutBound{"approvals.timeout_ms", 1000, 86400000,
                                           "between 1000 ms and 1 day (86400000 ms)"};

absl::Status CheckRegex(const std::string& field, const std::string& pattern) {
  if (pattern.empty()) return FieldError(field, "must be set");
  if (pattern.size() > kMaxApprovalPatternBytes) {
    return FieldError(field, pattern.size(), " bytes (at most ", kMaxApprovalPatternBytes, ")");
  }
  RE2::Options options;
  options.set_log_errors(false);
  RE2 re(pattern, options);
  if (!re.ok()) return FieldError(field, Quote(pattern), " is not an RE2 regular expression: ", re.error());
  return absl::OkStatus();
}

absl::Status ValidateApprovals(const ApprovalSpec& a) {
  if (a.require_approval.size() > kMaxApprovalRules) {
    return FieldError("approvals.require_approval", "at most ", kMaxApprovalRules, " kinds");
  }
  for (size_t i = 0; i < a.require_approval.size(); ++i) {
    const std::string& kind = a.require_approval[i];
    if (std::find_if(std::begin(kApprovalKinds), std::end(kApprovalKinds),
                     [&](const char* k) { return kind == k; }) == std::end(kApprovalKinds)) {
      return FieldError(absl::StrCat("approvals.require_approval[", i, "]"), Quote(kind),
                        " is not a gate (known: download, upload, write_file, remove, exec, "
                        "browser_navigate_new_origin, browser_submit, desktop_type_secret)");
    }
  }
  if (a.exec_regex.size() > kMaxApprovalRules) {
    return FieldError("approvals.exec", "at most ", kMaxApprovalRules, " rules");
  }
  for (size_t i = 0; i < a.exec_regex.size(); ++i) {
    RETURN_IF_ERROR(CheckRegex(absl::StrCat("approvals.exec[", i, "].argv_regex"), a.exec_regex[i]));
  }
  if (a.secret_patterns.size() > kMaxApprovalRules) {
    return FieldError("approvals.secret_patterns", "at most ", kMaxApprovalRules, " patterns");
  }
  for (size_t i = 0; i < a.secret_patterns.size(); ++i) {
    RETURN_IF_ERROR(CheckRegex(absl::StrCat("approvals.secret_patterns[", i, "]"), a.secret_patterns[i]));
  }
  if (a.timeout_ms) RETURN_IF_ERROR(CheckLimit(kApprovalTimeoutBound, *a.timeout_ms));
  return absl::OkStatus();
}

absl::Status ValidateSpec(const PolicySpec& spec) {
  RETURN_IF_ERROR(CheckId("ids.uid", spec.uid));
  RETURN_IF_ERROR(CheckId("ids.gid", spec.gid));
  for (size_t i = 0; i < spec.mounts.size(); ++i) {
    RETURN_IF_ERROR(ValidateMount(spec.mounts[i], i, absl::MakeConstSpan(spec.mounts).subspan(0, i)));
  }
  RETURN_IF_ERROR(ValidateLimits(spec.limits));
  RETURN_IF_ERROR(ValidateSeccomp(spec.seccomp));
  switch (spec.network) {
    case NetworkMode::kNone:
    case NetworkMode::kEgress:
    case NetworkMode::kHost:
      break;
    default:
      return FieldError("network.mode", "unknown mode ", static_cast<int>(spec.network));
  }
  // The rules' syntax is the egress proxy's to check (the agent parses them at start); here only their shape.
  for (const auto& [name, rules] : {std::pair<const char*, const std::vector<std::string>*>{"network.allow", &spec.egress_allow},
                                    {"network.ask", &spec.egress_ask}}) {
    if (spec.network != NetworkMode::kEgress && !rules->empty()) return FieldError(name, "only for mode EGRESS");
    if (rules->size() > 1024) return FieldError(name, "at most 1024 rules");
    for (size_t i = 0; i < rules->size(); ++i) {
      const std::string& rule = (*rules)[i];
      if (rule.empty() || rule.size() > 300 || rule.find_first_of(" \t\r\n") != std::string::npos) {
        return FieldError(absl::StrCat(name, "[", i, "]"), "'", rule, "' is not a HOST[:PORT] rule");
      }
    }
  }
  if (spec.egress_proxy_port == 0) return FieldError("network.proxy_port", "must be 1..65535");
  for (size_t i = 0; i < spec.env_passthrough.size(); ++i) {
    RETURN_IF_ERROR(ValidatePassthrough(spec.env_passthrough[i], i));
  }
  for (size_t i = 0; i < spec.env.size(); ++i) RETURN_IF_ERROR(ValidateEnvVar(spec.env[i], i));
  RETURN_IF_ERROR(CheckHostname(spec.hostname));
  RETURN_IF_ERROR(CheckAbsolutePath("workdir", spec.workdir));
  RETURN_IF_ERROR(ValidateApprovals(spec.approvals));
  return absl::OkStatus();
}

// Narrows one limit: `requested` must be a sane value (InvalidArgument) no wider than `ceiling`
// (PermissionDenied).
template <typename T>
absl::Status NarrowLimit(const LimitBound& bound, const std::optional<T>& requested, T& value) {
  if (!requested.has_value()) return absl::OkStatus();
  RETURN_IF_ERROR(CheckLimit(bound, *requested));
  if (*requested > value) {
    return absl::PermissionDeniedError(
        absl::StrCat(bound.field, ": ", *requested, " exceeds the policy ceiling ", value));
  }
  value = *requested;
  return absl::OkStatus();
}

}  // namespace

PolicyBuilder& PolicyBuilder::Fail(absl::Status status) {
  if (status_.ok()) status_ = std::move(status);
  return *this;
}

PolicyBuilder& PolicyBuilder::SetName(std::string_view name) {
  if (!status_.ok()) return *this;
  spec_.name = std::string(name);
  return *this;
}

PolicyBuilder& PolicyBuilder::SetNamespaces(bool ipc, bool uts, bool cgroup) {
  if (!status_.ok()) return *this;
  spec_.new_ipc_ns = ipc;
  spec_.new_uts_ns = uts;
  spec_.new_cgroup_ns = cgroup;
  return *this;
}

PolicyBuilder& PolicyBuilder::SetIds(uint32_t uid, uint32_t gid) {
  if (!status_.ok()) return *this;
  if (absl::Status s = CheckId("ids.uid", uid); !s.ok()) return Fail(std::move(s));
  if (absl::Status s = CheckId("ids.gid", gid); !s.ok()) return Fail(std::move(s));
  spec_.uid = uid;
  spec_.gid = gid;
  return *this;
}

namespace {

// Appends `mount` to `mounts` when it is valid there.
absl::Status AppendMount(std::vector<MountSpec>& mounts, MountSpec mount) {
  RETURN_IF_ERROR(ValidateMount(mount, mounts.size(), mounts));
  mounts.push_back(std::move(mount));
  return absl::OkStatus();
}

}  // namespace

PolicyBuilder& PolicyBuilder::AddBind(std::string_view src, std::string_view dst, bool writable,
                                      bool optional) {
  if (!status_.ok()) return *this;
  return Fail(AppendMount(spec_.mounts, BindMount{std::string(src), std::string(dst), writable, optional}));
}

PolicyBuilder& PolicyBuilder::AddTmpfs(std::string_view dst, uint64_t size_bytes, uint32_t mode) {
  if (!status_.ok()) return *this;
  return Fail(AppendMount(spec_.mounts, TmpfsMount{std::string(dst), size_bytes, mode}));
}

PolicyBuilder& PolicyBuilder::AddFile(std::string_view dst, std::string_view contents, uint32_t mode) {
  if (!status_.ok()) return *this;
  return Fail(AppendMount(spec_.mounts, FileMount{std::string(dst), std::string(contents), mode}));
}

PolicyBuilder& PolicyBuilder::AddSymlink(std::string_view dst, std::string_view target) {
  if (!status_.ok()) return *this;
  return Fail(AppendMount(spec_.mounts, SymlinkMount{std::string(dst), std::string(target)}));
}

PolicyBuilder& PolicyBuilder::SetLimits(const Limits& limits) {
  if (!status_.ok()) return *this;
  if (absl::Status s = ValidateLimits(limits); !s.ok()) return Fail(std::move(s));
  spec_.limits = limits;
  return *this;
}

PolicyBuilder& PolicyBuilder::SetSeccomp(SeccompPolicy seccomp) {
  if (!status_.ok()) return *this;
  if (absl::Status s = ValidateSeccomp(seccomp); !s.ok()) return Fail(std::move(s));
  spec_.seccomp = std::move(seccomp);
  return *this;
}

PolicyBuilder& PolicyBuilder::SetNetworkNone() {
  if (status_.ok()) spec_.network = NetworkMode::kNone;
  return *this;
}

PolicyBuilder& PolicyBuilder::SetNetworkEgress(std::vector<std::string> allow, uint16_t proxy_port,
                                               std::vector<std::string> ask) {
  if (!status_.ok()) return *this;
  spec_.network = NetworkMode::kEgress;
  spec_.egress_allow = std::move(allow);
  spec_.egress_ask = std::move(ask);
  spec_.egress_proxy_port = proxy_port;
  return *this;
}

PolicyBuilder& PolicyBuilder::SetNetworkHost(UnrestrictedNetworking) {
  if (status_.ok()) spec_.network = NetworkMode::kHost;
  return *this;
}

PolicyBuilder& PolicyBuilder::AddEnvPassthrough(std::string_view name) {
  if (!status_.ok()) return *this;
  auto& names = spec_.env_passthrough;
  if (std::find(names.begin(), names.end(), name) != names.end()) return *this;  // already passed through
  if (absl::Status s = ValidatePassthrough(name, names.size()); !s.ok()) return Fail(std::move(s));
  names.emplace_back(name);
  return *this;
}

PolicyBuilder& PolicyBuilder::SetEnv(std::string_view name, std::string_view value) {
  if (!status_.ok()) return *this;
  auto& vars = spec_.env;
  auto it = std::find_if(vars.begin(), vars.end(), [name](const EnvVar& v) { return v.name == name; });
  EnvVar var{std::string(name), std::string(value)};
  if (absl::Status s = ValidateEnvVar(var, static_cast<size_t>(it - vars.begin())); !s.ok()) {
    return Fail(std::move(s));
  }
  if (it != vars.end()) {
    it->value = std::move(var.value);
  } else {
    vars.push_back(std::move(var));
  }
  return *this;
}

PolicyBuilder& PolicyBuilder::SetHostname(std::string_view hostname) {
  if (!status_.ok()) return *this;
  if (absl::Status s = CheckHostname(hostname); !s.ok()) return Fail(std::move(s));
  spec_.hostname = std::string(hostname);
  return *this;
}

PolicyBuilder& PolicyBuilder::SetWorkdir(std::string_view workdir) {
  if (!status_.ok()) return *this;
  if (absl::Status s = CheckAbsolutePath("workdir", workdir); !s.ok()) return Fail(std::move(s));
  spec_.workdir = std::string(workdir);
  return *this;
}

PolicyBuilder& PolicyBuilder::AddApprovals(const ApprovalSpec& more) {
  if (!status_.ok()) return *this;
  if (absl::Status s = ValidateApprovals(more); !s.ok()) return Fail(std::move(s));
  ApprovalSpec& a = spec_.approvals;
  auto add = [](std::vector<std::string>& to, const std::vector<std::string>& from) {
    for (const std::string& item : from) {
      if (std::find(to.begin(), to.end(), item) == to.end()) to.push_back(item);
    }
  };
  add(a.require_approval, more.require_approval);
  add(a.exec_regex, more.exec_regex);
  add(a.secret_patterns, more.secret_patterns);
  if (more.timeout_ms) {
    // A longer deadline would leave the host's gates open longer than the host said.
    if (*more.timeout_ms > a.timeout()) {
      return Fail(absl::PermissionDeniedError(absl::StrCat("approvals.timeout_ms: ", *more.timeout_ms,
                                                           " exceeds the policy's ", a.timeout())));
    }
    a.timeout_ms = more.timeout_ms;
  }
  // NOTE: the merged lists are validated again by TryBuild (their sizes).
  return *this;
}

absl::StatusOr<Policy> PolicyBuilder::TryBuild() const {
  if (!status_.ok()) return status_;
  // NOTE: the setters validate as they go; validating the whole spec again keeps "every Policy is valid"
  // true however the builder got its state (e.g. from a base Policy).
  RETURN_IF_ERROR(ValidateSpec(spec_));
  return Policy(spec_);
}

absl::StatusOr<Policy> NarrowPolicy(const Policy& ceiling, const PolicyNarrowing& narrowing) {
  Limits limits = ceiling.limits();
  RETURN_IF_ERROR(NarrowLimit(kMemoryBound, narrowing.memory_max_bytes, limits.memory_max_bytes));
  RETURN_IF_ERROR(NarrowLimit(kPidsBound, narrowing.pids_max, limits.pids_max));
  RETURN_IF_ERROR(NarrowLimit(kCpuBound, narrowing.cpu_millicores, limits.cpu_millicores));
  RETURN_IF_ERROR(NarrowLimit(kWallTimeBound, narrowing.wall_time_limit_ms, limits.wall_time_limit_ms));
  RETURN_IF_ERROR(NarrowLimit(kOpenFilesBound, narrowing.open_files_max, limits.open_files_max));
  RETURN_IF_ERROR(NarrowLimit(kFileSizeBound, narrowing.file_size_max_bytes, limits.file_size_max_bytes));
  RETURN_IF_ERROR(NarrowLimit(kOutputBound, narrowing.output_max_bytes, limits.output_max_bytes));
  RETURN_IF_ERROR(NarrowLimit(kEventLogEventsBound, narrowing.event_log_max_events, limits.event_log_max_events));
  RETURN_IF_ERROR(NarrowLimit(kEventLogBytesBound, narrowing.event_log_max_bytes, limits.event_log_max_bytes));
  RETURN_IF_ERROR(NarrowLimit(kFileEventsBound, narrowing.file_events_max_bytes, limits.file_events_max_bytes));
  RETURN_IF_ERROR(NarrowLimit(kDisplayWidthBound, narrowing.display_max_width, limits.display_max_width));
  RETURN_IF_ERROR(NarrowLimit(kDisplayHeightBound, narrowing.display_max_height, limits.display_max_height));
  return PolicyBuilder(ceiling).SetLimits(limits).TryBuild();
}

}  // namespace sbx::sandbox
