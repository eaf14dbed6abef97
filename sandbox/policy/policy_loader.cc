#include "sandbox/policy/policy_loader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "duvo/sandbox/v1/policy.pb.h"
#include "sandbox/policy/policy_builder.h"
#include "base/status.h"
#include "sandbox/policy/textproto.h"
#include "base/unique_fd.h"

namespace sbx::sandbox::internal {
// policies/file.textproto, embedded by sandbox/policy/embed_policies.cmake into the generated default_policies.cc.
extern const char kDefaultFilePolicy[];
// The same policy encoded by protoc at build time: parsing it needs no descriptor pool (~0.5 ms less).
extern const unsigned char kDefaultFilePolicyBinary[];
extern const unsigned long kDefaultFilePolicyBinarySize;
extern const char kDefaultDesktopPolicy[];
extern const char kDefaultBrowserPolicy[];
}  // namespace sbx::sandbox::internal

namespace sbx::sandbox {
namespace {

namespace pb = ::duvo::sandbox::v1;

// Policies are small; anything bigger is a mistake (or an attack on the parser).
constexpr size_t kMaxPolicyTextBytes = 4 << 20;
constexpr uint32_t kMaxErrno = 4095;
constexpr uint32_t kMaxArgIndex = 5;
constexpr int kEperm = 1;

template <typename... Args>
absl::Status FieldError(std::string_view field, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(ToAbsl(field), ": ", args...));
}

// A string as it appears in messages: quoted, with control bytes escaped.
std::string Quote(std::string_view s) { return absl::StrCat("\"", absl::CHexEscape(ToAbsl(s)), "\""); }

absl::Status CheckErrno(std::string_view field, uint32_t value) {
  if (value == 0) return FieldError(field, "0 is not allowed (must be between 1 and 4095)");
  if (value > kMaxErrno) {
    return FieldError(field, value, " is out of range (must be between 1 and 4095)");
  }
  return absl::OkStatus();
}

absl::Status ConvertAction(std::string_view field, pb::Seccomp::Action action, SeccompAction& out) {
  switch (action) {
    case pb::Seccomp::ALLOW:
      out = SeccompAction::kAllow;
      return absl::OkStatus();
    case pb::Seccomp::ERRNO:
      out = SeccompAction::kErrno;
      return absl::OkStatus();
    case pb::Seccomp::KILL:
      out = SeccompAction::kKill;
      return absl::OkStatus();
    case pb::Seccomp::LOG:
      out = SeccompAction::kLog;
      return absl::OkStatus();
    case pb::Seccomp::ACTION_UNSPECIFIED:
      return FieldError(field, "must be set (ALLOW, ERRNO, KILL or LOG)");
    default:
      return FieldError(field, "unknown action ", static_cast<int>(action));
  }
}

absl::Status ConvertArg(const pb::Seccomp::ArgCondition& in, std::string_view path,
                        SyscallArgCondition& out) {
  const std::string p(path);
  if (in.index() > kMaxArgIndex) {
    return FieldError(p + ".index", in.index(), " is out of range (must be between 0 and 5)");
  }
  out.index = in.index();
  out.value = in.value();
  out.mask = in.mask();
  switch (in.op()) {
    case pb::Seccomp::ArgCondition::EQ:
      out.op = SyscallArgCondition::Op::kEq;
      break;
    case pb::Seccomp::ArgCondition::NE:
      out.op = SyscallArgCondition::Op::kNe;
      break;
    case pb::Seccomp::ArgCondition::MASKED_EQ:
      out.op = SyscallArgCondition::Op::kMaskedEq;
      break;
    case pb::Seccomp::ArgCondition::ANY_BITS_SET:
      out.op = SyscallArgCondition::Op::kAnyBitsSet;
      break;
    case pb::Seccomp::ArgCondition::OP_UNSPECIFIED:
      return FieldError(p + ".op", "must be set (EQ, NE, MASKED_EQ or ANY_BITS_SET)");
    default:
      return FieldError(p + ".op", "unknown comparison ", static_cast<int>(in.op()));
  }
  if (out.op != SyscallArgCondition::Op::kMaskedEq && out.mask != 0) {
    return FieldError(p + ".mask", "is only meaningful with MASKED_EQ");
  }
  if (out.op == SyscallArgCondition::Op::kMaskedEq && out.mask == 0) {
    return FieldError(p + ".mask", "0 makes the condition match every value or none");
  }
  if (out.op == SyscallArgCondition::Op::kMaskedEq && (out.value & ~out.mask) != 0) {
    return FieldError(p + ".value", "has bits outside the mask, so the condition never holds");
  }
  if (out.op == SyscallArgCondition::Op::kAnyBitsSet && out.value == 0) {
    return FieldError(p + ".value", "0 has no bits to test, so the condition never holds");
  }
  return absl::OkStatus();
}

bool IsSyscallName(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// One proto rule becomes one domain rule per syscall. Checks what only the proto can get wrong (unset
// enums, an errno without ERRNO, an empty list) and the per-rule values, so that errors name the proto path;
// the builder checks the result again.
absl::Status ConvertSeccomp(const pb::Seccomp& in, SeccompPolicy& out) {
  if (in.default_action() != pb::Seccomp::ACTION_UNSPECIFIED) {
    RETURN_IF_ERROR(ConvertAction("seccomp.default_action", in.default_action(), out.default_action));
  }
  if (in.has_default_errno()) {
    if (out.default_action != SeccompAction::kErrno) {
      return FieldError("seccomp.default_errno", "is only meaningful with default_action ERRNO");
    }
    RETURN_IF_ERROR(CheckErrno("seccomp.default_errno", in.default_errno()));
    out.default_errno = static_cast<int>(in.default_errno());
  }
  if (in.has_audit_denials()) out.audit_denials = in.audit_denials();

  struct Seen {
    std::string path;
    bool conditional;
  };
  std::map<std::string, Seen> seen;  // syscall -> where it first appeared
  for (int i = 0; i < in.rules_size(); ++i) {
    const pb::Seccomp::Rule& rule = in.rules(i);
    const std::string path = absl::StrCat("seccomp.rules[", i, "]");
    if (rule.syscalls().empty()) return FieldError(path + ".syscalls", "must name at least one syscall");
    SeccompRule base;
    RETURN_IF_ERROR(ConvertAction(path + ".action", rule.action(), base.action));
    if (rule.has_errno_value()) {
      if (base.action != SeccompAction::kErrno) {
        return FieldError(path + ".errno_value", "is only meaningful with action ERRNO");
      }
      RETURN_IF_ERROR(CheckErrno(path + ".errno_value", rule.errno_value()));
      base.errno_value = static_cast<int>(rule.errno_value());
    } else {
      base.errno_value = kEperm;
    }
    if (base.action == out.default_action &&
        (base.action != SeccompAction::kErrno || base.errno_value == out.default_errno)) {
      return FieldError(path + ".action", pb::Seccomp::Action_Name(rule.action()), " under default_action ",
                        pb::Seccomp::Action_Name(in.default_action() == pb::Seccomp::ACTION_UNSPECIFIED
                                                     ? pb::Seccomp::ALLOW
                                                     : in.default_action()),
                        " is a contradiction (the rule would have no effect)");
    }
    for (int j = 0; j < rule.args_size(); ++j) {
      const std::string arg_path = absl::StrCat(path, ".args[", j, "]");
      SyscallArgCondition arg;
      RETURN_IF_ERROR(ConvertArg(rule.args(j), arg_path, arg));
      // Several conditions on one argument only as a list of NE values ("none of"); the builder checks the
      // counts again for rules built in code.
      for (int k = 0; k < j; ++k) {
        if (base.args[k].index != arg.index) continue;
        if (base.args[k].op != SyscallArgCondition::Op::kNe || arg.op != SyscallArgCondition::Op::kNe) {
          return FieldError(arg_path + ".index", "argument ", arg.index, " already has a condition (args[", k,
                            "]); only NE conditions may repeat an argument");
        }
      }
      base.args.push_back(arg);
    }
    for (int j = 0; j < rule.syscalls_size(); ++j) {
      const std::string& name = rule.syscalls(j);
      const std::string name_path = absl::StrCat(path, ".syscalls[", j, "]");
      if (!IsSyscallName(name)) {
        return FieldError(name_path, Quote(name), " is not a syscall name ([a-z0-9_]+)");
      }
      const bool conditional = !base.args.empty();
      auto [it, inserted] = seen.emplace(name, Seen{name_path, conditional});
      if (!inserted && (!conditional || !it->second.conditional)) {
        return FieldError(name_path, Quote(name), " already has a rule (", it->second.path,
                          "); a rule without argument conditions must be the only one for its syscall");
      }
      SeccompRule domain_rule = base;
      domain_rule.syscall = name;
      out.rules.push_back(std::move(domain_rule));
    }
  }
  return absl::OkStatus();
}

void AddMount(const pb::Mount& mount, PolicyBuilder& builder) {
  switch (mount.kind_case()) {
    case pb::Mount::kBind:
      builder.AddBind(mount.bind().src(), mount.bind().dst(), mount.bind().writable(),
                      mount.bind().optional());
      break;
    case pb::Mount::kTmpfs: {
      const TmpfsMount defaults;
      const auto& tmpfs = mount.tmpfs();
      builder.AddTmpfs(tmpfs.dst(), tmpfs.size_bytes(), tmpfs.has_mode() ? tmpfs.mode() : defaults.mode);
      break;
    }
    case pb::Mount::kFile: {
      const FileMount defaults;
      const auto& file = mount.file();
      builder.AddFile(file.dst(), file.contents(), file.has_mode() ? file.mode() : defaults.mode);
      break;
    }
    case pb::Mount::kSymlink:
      builder.AddSymlink(mount.symlink().dst(), mount.symlink().target());
      break;
    case pb::Mount::KIND_NOT_SET:
      break;  // refused by the caller
  }
}

Limits ConvertLimits(const pb::Limits& in) {
  Limits out;
  if (in.has_memory_max_bytes()) out.memory_max_bytes = in.memory_max_bytes();
  if (in.has_pids_max()) out.pids_max = in.pids_max();
  if (in.has_cpu_millicores()) out.cpu_millicores = in.cpu_millicores();
  if (in.has_wall_time_limit_ms()) out.wall_time_limit_ms = in.wall_time_limit_ms();
  if (in.has_open_files_max()) out.open_files_max = in.open_files_max();
  if (in.has_file_size_max_bytes()) out.file_size_max_bytes = in.file_size_max_bytes();
  if (in.has_output_max_bytes()) out.output_max_bytes = in.output_max_bytes();
  if (in.has_event_log_max_events()) out.event_log_max_events = in.event_log_max_events();
  if (in.has_event_log_max_bytes()) out.event_log_max_bytes = in.event_log_max_bytes();
  if (in.has_file_events_max_bytes()) out.file_events_max_bytes = in.file_events_max_bytes();
  if (in.has_display_max_width()) out.display_max_width = in.display_max_width();
  if (in.has_display_max_height()) out.display_max_height = in.display_max_height();
  if (in.has_kill_on_pids_limit()) out.kill_on_pids_limit = in.kill_on_pids_limit();
  return out;
}

// Refuses a name listed twice: the builder would merge the entries, and a policy file that says two things
// about one variable is a mistake.
absl::Status CheckEnvUnique(const pb::Environment& env) {
  std::map<std::string_view, int> passthrough;
  for (int i = 0; i < env.passthrough_size(); ++i) {
    auto [it, inserted] = passthrough.emplace(env.passthrough(i), i);
    if (!inserted) {
      return FieldError(absl::StrCat("env.passthrough[", i, "]"), Quote(env.passthrough(i)),
                        " is already listed at env.passthrough[", it->second, "]");
    }
  }
  std::map<std::string_view, int> set;
  for (int i = 0; i < env.set_size(); ++i) {
    auto [it, inserted] = set.emplace(env.set(i).name(), i);
    if (!inserted) {
      return FieldError(absl::StrCat("env.set[", i, "].name"), Quote(env.set(i).name()),
                        " is already set by env.set[", it->second, "]");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadSmallFile(std::string_view path) {
  const std::string p(path);
  UniqueFd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd) return ErrnoToStatus(errno, p);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoToStatus(errno, p);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(absl::StrCat(p, ": not a regular file"));
  if (static_cast<uint64_t>(st.st_size) > kMaxPolicyTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        p, ": ", st.st_size, " bytes is too large for a policy (at most ", kMaxPolicyTextBytes, ")"));
  }
  std::string contents;
  char buffer[16384];
  while (true) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, p);
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
    if (contents.size() > kMaxPolicyTextBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(p, ": too large for a policy (at most ", kMaxPolicyTextBytes, " bytes)"));
    }
  }
  return contents;
}

}  // namespace

ApprovalSpec ApprovalsFromProto(const pb::ApprovalPolicy& proto) {
  ApprovalSpec spec;
  spec.require_approval.assign(proto.require_approval().begin(), proto.require_approval().end());
  for (const pb::ApprovalPolicy::ExecRule& rule : proto.exec()) spec.exec_regex.push_back(rule.argv_regex());
  spec.secret_patterns.assign(proto.secret_patterns().begin(), proto.secret_patterns().end());
  if (proto.has_timeout_ms()) spec.timeout_ms = proto.timeout_ms();
  return spec;
}

absl::StatusOr<Policy> PolicyFromProto(const pb::SandboxPolicy& proto) {
  PolicyBuilder builder;
  // Errors found here are reported after any the builder already holds, so the first error in field order
  // wins whichever side found it.
  auto first_error = [&builder](absl::Status status) -> absl::Status {
    absl::StatusOr<Policy> so_far = builder.TryBuild();
    return so_far.ok() ? status : so_far.status();
  };
  builder.SetName(proto.name());

  if (proto.has_namespaces()) {
    const PolicySpec defaults;
    const pb::Namespaces& ns = proto.namespaces();
    builder.SetNamespaces(ns.has_ipc() ? ns.ipc() : defaults.new_ipc_ns,
                          ns.has_uts() ? ns.uts() : defaults.new_uts_ns,
                          ns.has_cgroup() ? ns.cgroup() : defaults.new_cgroup_ns);
  }
  if (proto.has_ids()) {
    const PolicySpec defaults;
    builder.SetIds(proto.ids().has_uid() ? proto.ids().uid() : defaults.uid,
                   proto.ids().has_gid() ? proto.ids().gid() : defaults.gid);
  }
  // NOTE: the builder starts with no mounts, so its "mounts[i]" in messages is the proto's index too.
  for (int i = 0; i < proto.mounts_size(); ++i) {
    if (proto.mounts(i).kind_case() == pb::Mount::KIND_NOT_SET) {
      return first_error(
          FieldError(absl::StrCat("mounts[", i, "]"), "one of bind, tmpfs, file or symlink must be set"));
    }
    AddMount(proto.mounts(i), builder);
  }
  if (proto.has_limits()) builder.SetLimits(ConvertLimits(proto.limits()));
  if (proto.has_seccomp()) {
    SeccompPolicy seccomp;
    RETURN_IF_ERROR(first_error(ConvertSeccomp(proto.seccomp(), seccomp)));
    builder.SetSeccomp(std::move(seccomp));
  }
  if (proto.network().mode() != pb::Network::EGRESS &&
      (proto.network().allow_size() > 0 || proto.network().ask_size() > 0 || proto.network().has_proxy_port())) {
    return absl::InvalidArgumentError("network.allow, network.ask, network.proxy_port: only for mode EGRESS");
  }
  switch (proto.network().mode()) {
    case pb::Network::MODE_UNSPECIFIED:
      break;
    case pb::Network::NONE:
      builder.SetNetworkNone();
      break;
    case pb::Network::EGRESS: {
      const uint32_t port = proto.network().has_proxy_port() ? proto.network().proxy_port() : 3128;
      if (port == 0 || port > 65535) {
        return absl::InvalidArgumentError(absl::StrCat("network.proxy_port: ", port, " is not a port"));
      }
      builder.SetNetworkEgress({proto.network().allow().begin(), proto.network().allow().end()},
                               static_cast<uint16_t>(port),
                               {proto.network().ask().begin(), proto.network().ask().end()});
      break;
    }
    case pb::Network::HOST:
      // The policy says so in as many words; that is the review point the token stands for.
      builder.SetNetworkHost(UnrestrictedNetworking());
      break;
    default:
      return first_error(
          FieldError("network.mode", "unknown mode ", static_cast<int>(proto.network().mode())));
  }
  RETURN_IF_ERROR(first_error(CheckEnvUnique(proto.env())));
  for (const std::string& name : proto.env().passthrough()) builder.AddEnvPassthrough(name);
  for (const pb::Environment::EnvVar& var : proto.env().set()) builder.SetEnv(var.name(), var.value());
  if (proto.has_hostname()) builder.SetHostname(proto.hostname());
  if (proto.has_workdir()) builder.SetWorkdir(proto.workdir());
  if (proto.has_approvals()) builder.AddApprovals(ApprovalsFromProto(proto.approvals()));
  return builder.TryBuild();
}

absl::StatusOr<Policy> ParsePolicyText(std::string_view text, std::string_view origin) {
  if (text.size() > kMaxPolicyTextBytes) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(origin), ": ", text.size(),
                                                   " bytes is too large for a policy (at most ",
                                                   kMaxPolicyTextBytes, ")"));
  }
  if (text == internal::kDefaultFilePolicy) {
    // The installed copy of the default policy: take the build-time encoding.
    absl::StatusOr<Policy> policy = DefaultFilePolicy();
    if (!policy.ok()) return Annotate(policy.status(), origin);
    return policy;
  }
  pb::SandboxPolicy proto;
  // NOTE: unknown fields and extensions stay errors: a misspelt field must not silently widen or weaken a
  // policy.
  RETURN_IF_ERROR(ParseTextProto(text, origin, &proto));
  absl::StatusOr<Policy> policy = PolicyFromProto(proto);
  if (!policy.ok()) return Annotate(policy.status(), origin);
  return policy;
}

absl::StatusOr<Policy> LoadPolicyFile(std::string_view path) {
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  return ParsePolicyText(text, path);
}

absl::StatusOr<Policy> DefaultFilePolicy() {
  // Parsed once; NOTE: intentionally leaked, like every function-local static of non-trivial type here.
  static const auto* const kPolicy = [] {
    pb::SandboxPolicy proto;
    if (!proto.ParseFromArray(internal::kDefaultFilePolicyBinary,
                              static_cast<int>(internal::kDefaultFilePolicyBinarySize))) {
      return new absl::StatusOr<Policy>(
          absl::InternalError("policies/file.textproto (built in): the embedded encoding does not parse"));
    }
    absl::StatusOr<Policy> policy = PolicyFromProto(proto);
    if (!policy.ok()) policy = Annotate(policy.status(), "policies/file.textproto (built in)");
    return new absl::StatusOr<Policy>(std::move(policy));
  }();
  return *kPolicy;
}

absl::StatusOr<Policy> DefaultDesktopPolicy() {
  return ParsePolicyText(internal::kDefaultDesktopPolicy, "policies/desktop.textproto (built in)");
}

absl::StatusOr<Policy> DefaultBrowserPolicy() {
  return ParsePolicyText(internal::kDefaultBrowserPolicy, "policies/browser.textproto (built in)");
}

}  // namespace sbx::sandbox
