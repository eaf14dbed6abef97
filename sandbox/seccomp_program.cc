#include "sandbox/seccomp_program.h"

#include <seccomp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::sandbox {
namespace {

struct SeccompCtxDeleter {
  void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};
using SeccompCtx = std::unique_ptr<void, SeccompCtxDeleter>;

// Keeps one rule's BPF well under BPF_MAXINSNS (4096).
constexpr size_t kMaxAlternativesPerRule = 512;

uint32_t ToScmpAction(SeccompAction action, int errno_value) {
  switch (action) {
    case SeccompAction::kAllow:
      return SCMP_ACT_ALLOW;
    case SeccompAction::kErrno:
      return SCMP_ACT_ERRNO(static_cast<uint16_t>(errno_value));
    case SeccompAction::kKill:
      return SCMP_ACT_KILL_PROCESS;
    case SeccompAction::kLog:
      return SCMP_ACT_LOG;
  }
  return SCMP_ACT_KILL_PROCESS;
}

// The comparisons, one of which holds exactly when the argument is none of `values` (the NE conditions of
// one argument, ANDed). libseccomp allows one comparison per argument in a rule, so the complement is
// written as a union: LT the smallest value, GT the largest, and each gap between two values as aligned
// power-of-two blocks (MASKED_EQ with the block's high bits), at most ~128 per gap.
std::vector<scmp_arg_cmp> NoneOf(uint32_t index, std::vector<uint64_t> values) {
  std::sort(values.begin(), values.end());
  values.erase(std::unique(values.begin(), values.end()), values.end());
  std::vector<scmp_arg_cmp> out;
  if (values.front() > 0) out.push_back(SCMP_CMP(index, SCMP_CMP_LT, values.front()));
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    // The gap [lo, hi], both inside (values[i], values[i+1]), so hi < UINT64_MAX and lo > 0.
    uint64_t lo = values[i] + 1;
    const uint64_t hi = values[i + 1] - 1;
    while (lo <= hi && lo != 0) {
      // The largest block that starts at lo (aligned) and ends at or before hi.
      uint64_t size = lo & (~lo + 1);  // lowest set bit of lo: the alignment of lo
      while (size > hi - lo + 1) size >>= 1;
      out.push_back(SCMP_CMP(index, SCMP_CMP_MASKED_EQ, ~(size - 1), lo));
      lo += size;
      if (lo == 0) break;  // wrapped: only when hi was UINT64_MAX, which a gap never reaches
    }
  }
  if (values.back() < UINT64_MAX) out.push_back(SCMP_CMP(index, SCMP_CMP_GT, values.back()));
  return out;
}

// The comparisons, one of which must hold, for one group of conditions (one argument's NE list, or one
// other condition): a kAnyBitsSet condition becomes one masked-equal comparison per set bit.
std::vector<scmp_arg_cmp> Alternatives(const std::vector<SyscallArgCondition>& group) {
  const SyscallArgCondition& c = group.front();
  if (c.op == SyscallArgCondition::Op::kNe && group.size() > 1) {
    std::vector<uint64_t> values;
    for (const SyscallArgCondition& ne : group) values.push_back(ne.value);
    return NoneOf(c.index, std::move(values));
  }
  switch (c.op) {
    case SyscallArgCondition::Op::kEq:
      return {SCMP_CMP(c.index, SCMP_CMP_EQ, c.value)};
    case SyscallArgCondition::Op::kNe:
      return {SCMP_CMP(c.index, SCMP_CMP_NE, c.value)};
    case SyscallArgCondition::Op::kMaskedEq:
      return {SCMP_CMP(c.index, SCMP_CMP_MASKED_EQ, c.mask, c.value)};
    case SyscallArgCondition::Op::kAnyBitsSet: {
      std::vector<scmp_arg_cmp> out;
      for (int bit = 0; bit < 64; ++bit) {
        const uint64_t b = uint64_t{1} << bit;
        if (c.value & b) out.push_back(SCMP_CMP(c.index, SCMP_CMP_MASKED_EQ, b, b));
      }
      return out;
    }
  }
  return {};
}

// Expands the rule's conditions into alternatives, each with at most one comparison per argument, and the
// rule is added once per alternative (libseccomp ORs rules of one syscall): the product of the groups'
// alternatives.
void Expand(const std::vector<std::vector<scmp_arg_cmp>>& groups, size_t i, std::vector<scmp_arg_cmp>& current,
            std::vector<std::vector<scmp_arg_cmp>>& out) {
  if (i == groups.size()) {
    out.push_back(current);
    return;
  }
  for (const scmp_arg_cmp& cmp : groups[i]) {
    current.push_back(cmp);
    Expand(groups, i + 1, current, out);
    current.pop_back();
  }
}

// The rule's conditions grouped by argument, in the order the arguments first appear.
std::vector<std::vector<scmp_arg_cmp>> Groups(const std::vector<SyscallArgCondition>& conds) {
  std::vector<std::vector<SyscallArgCondition>> by_arg;
  for (const SyscallArgCondition& c : conds) {
    auto it = std::find_if(by_arg.begin(), by_arg.end(), [&](const auto& g) { return g[0].index == c.index; });
    if (it == by_arg.end()) {
      by_arg.push_back({c});
    } else {
      it->push_back(c);
    }
  }
  std::vector<std::vector<scmp_arg_cmp>> groups;
  for (const auto& g : by_arg) groups.push_back(Alternatives(g));
  return groups;
}

bool IsDenial(SeccompAction action) { return action == SeccompAction::kErrno || action == SeccompAction::kKill; }

}  // namespace

// The in-process PID 1 of a one-shot jail (ChildSpec::in_process_init) makes the same calls after the filter
// (sendmsg, close) and then closes its error pipe, after which the agent starts the supervisor: PID 1's later
// calls (fork, wait, signals) and the workload's are answered like sandbox-init's, so they need no entry here.
bool IsJailChildSyscall(int nr) {
  return nr == __NR_sendmsg || nr == __NR_close || nr == __NR_execve || nr == __NR_write ||
         nr == __NR_exit_group;
}

bool ArgsMatch(const std::vector<SyscallArgCondition>& conds, const uint64_t args[6]) {
  for (const SyscallArgCondition& c : conds) {
    if (c.index > 5) return false;
    const uint64_t a = args[c.index];
    switch (c.op) {
      case SyscallArgCondition::Op::kEq:
        if (a != c.value) return false;
        break;
      case SyscallArgCondition::Op::kNe:  // several on one argument: none of them, i.e. each NE holds
        if (a == c.value) return false;
        break;
      case SyscallArgCondition::Op::kMaskedEq:
        if ((a & c.mask) != c.value) return false;
        break;
      case SyscallArgCondition::Op::kAnyBitsSet:
        if ((a & c.value) == 0) return false;
        break;
    }
  }
  return true;
}

absl::StatusOr<SeccompDenyTable> SeccompDenyTable::Build(const SeccompPolicy& policy) {
  SeccompDenyTable table;
  table.policy_ = policy;
  for (size_t i = 0; i < policy.rules.size(); ++i) {
    const SeccompRule& rule = policy.rules[i];
    if (!IsDenial(rule.action)) continue;
    const int nr = seccomp_syscall_resolve_name(rule.syscall.c_str());
    if (nr == __NR_SCMP_ERROR) {
      return absl::InvalidArgumentError(
          absl::StrCat("seccomp.rules[", i, "]: unknown syscall '", rule.syscall, "'"));
    }
    table.rules_by_nr_[nr].push_back(static_cast<int>(i));
  }
  return table;
}

SeccompDecision SeccompDenyTable::Decide(int nr, const uint64_t args[6]) const {
  if (auto it = rules_by_nr_.find(nr); it != rules_by_nr_.end()) {
    for (int i : it->second) {
      const SeccompRule& rule = policy_.rules[i];
      if (ArgsMatch(rule.args, args)) return {rule.action, rule.errno_value, i};
    }
  }
  if (IsDenial(policy_.default_action)) return {policy_.default_action, policy_.default_errno, -1};
  // The filter notified a call no deny rule matches under an allow default: cannot happen for a table
  // built from the filter's own policy; refuse it rather than let it run.
  return {SeccompAction::kErrno, EPERM, -1};
}

bool SeccompUsesUserNotif(const SeccompPolicy& policy) {
  return policy.audit_denials &&
         (IsDenial(policy.default_action) || std::any_of(policy.rules.begin(), policy.rules.end(),
                                                         [](const SeccompRule& r) { return IsDenial(r.action); }));
}

namespace {

// The filter's action for a policy action: a denial goes to the supervisor when audited (`notify`).
// ERRNO ENOSYS is a compatibility answer, not a refusal worth a record: "this kernel has no such call"
// (clone3, whose flags sit in a struct the filter cannot read, so glibc falls back to clone, which the
// filter checks). Every thread a workload starts asks it once; sending those through the supervisor
// would fill each session's audit budget with noise before a real denial came.
uint32_t FilterAction(bool notify, SeccompAction action, int errno_value, int nr) {
  const bool compat = action == SeccompAction::kErrno && errno_value == ENOSYS;
  if (notify && IsDenial(action) && !compat && !IsJailChildSyscall(nr)) return uint32_t{SCMP_ACT_NOTIFY};
  return ToScmpAction(action, errno_value);
}

absl::Status SetFilterAttributes(scmp_filter_ctx ctx) {
  // Only the native ABI is in the filter; anything else (i386, x32) hits the bad-arch action.
  if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_attr_set(ACT_BADARCH)");
  }
  // The jail sets no_new_privs itself, before loading the program.
  if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_attr_set(CTL_NNP)");
  }
  return absl::OkStatus();
}

// Adds policy.rules[i] to the filter, one rule per alternative of its argument conditions.
absl::Status AddRule(scmp_filter_ctx ctx, const SeccompPolicy& policy, size_t i, uint32_t default_action) {
  const bool notify = policy.audit_denials;
  const SeccompRule& rule = policy.rules[i];
  const std::string where = absl::StrCat("seccomp.rules[", i, "] (", rule.syscall, ")");
  const int nr = seccomp_syscall_resolve_name(rule.syscall.c_str());
  if (nr == __NR_SCMP_ERROR) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": unknown syscall '", rule.syscall, "'"));
  }
  const uint32_t action = FilterAction(notify, rule.action, rule.errno_value, nr);
  // Two denials with other errnos (or ERRNO under a KILL default) are both "notify": the default covers
  // the rule in the filter, and the supervisor tells them apart (SeccompDenyTable).
  if (notify && action == default_action && action == SCMP_ACT_NOTIFY) return absl::OkStatus();
  if (action == default_action) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": the action equals the default action, so the rule would do nothing"));
  }
  const std::vector<std::vector<scmp_arg_cmp>> groups = Groups(rule.args);
  size_t product = 1;
  for (const auto& g : groups) product *= g.size();  // at most 128 * 8 per group, 6 groups: no overflow
  if (product > kMaxAlternativesPerRule) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the conditions expand to ", product,
                                                   " seccomp comparisons (at most ", kMaxAlternativesPerRule,
                                                   ")"));
  }
  std::vector<std::vector<scmp_arg_cmp>> alternatives;
  std::vector<scmp_arg_cmp> current;
  Expand(groups, 0, current, alternatives);
  for (const auto& cmps : alternatives) {
    int rc = seccomp_rule_add_array(ctx, action, nr, cmps.size(), cmps.data());
    if (rc < 0) return Annotate(ErrnoToStatus(-rc, "seccomp_rule_add"), where);
  }
  return absl::OkStatus();
}

// The jail child's own last syscalls get the plain default denial, not a notification (see
// IsJailChildSyscall), unless the policy has rules for them (whose denials are plain already).
absl::Status AddJailChildDefaults(scmp_filter_ctx ctx, const SeccompPolicy& policy) {
  for (int nr : {__NR_sendmsg, __NR_close, __NR_execve, __NR_write, __NR_exit_group}) {
    const bool has_rule = std::any_of(policy.rules.begin(), policy.rules.end(), [nr](const SeccompRule& r) {
      return seccomp_syscall_resolve_name(r.syscall.c_str()) == nr;
    });
    if (has_rule) continue;
    if (int rc = seccomp_rule_add(ctx, ToScmpAction(policy.default_action, policy.default_errno), nr, 0); rc < 0) {
      return ErrnoToStatus(-rc, "seccomp_rule_add (the jail child's syscalls)");
    }
  }
  return absl::OkStatus();
}

// The filter as BPF instructions (libseccomp 2.5 can only export to an fd).
absl::Status ExportBpf(scmp_filter_ctx ctx, std::vector<sock_filter>* instructions) {
  UniqueFd mem(memfd_create("sbx-seccomp", MFD_CLOEXEC));
  if (!mem) return ErrnoToStatus(errno, "memfd_create");
  if (int rc = seccomp_export_bpf(ctx, mem.get()); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_export_bpf");
  }
  struct stat st;
  if (fstat(mem.get(), &st) < 0) return ErrnoToStatus(errno, "fstat(seccomp memfd)");
  if (st.st_size <= 0 || st.st_size % sizeof(sock_filter) != 0 ||
      st.st_size / sizeof(sock_filter) > BPF_MAXINSNS) {
    return absl::InternalError(absl::StrCat("seccomp program has an invalid size: ", st.st_size, " bytes"));
  }
  instructions->resize(st.st_size / sizeof(sock_filter));
  if (pread(mem.get(), instructions->data(), st.st_size, 0) != st.st_size) {
    return ErrnoToStatus(errno, "pread(seccomp memfd)");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SeccompProgram> CompileSeccomp(const SeccompPolicy& policy) {
  const bool notify = policy.audit_denials;
  const uint32_t default_action = FilterAction(notify, policy.default_action, policy.default_errno, -1);
  SeccompCtx ctx(seccomp_init(default_action));
  if (!ctx) return absl::InternalError("seccomp_init failed");
  RETURN_IF_ERROR(SetFilterAttributes(ctx.get()));
  for (size_t i = 0; i < policy.rules.size(); ++i) RETURN_IF_ERROR(AddRule(ctx.get(), policy, i, default_action));
  if (notify && default_action == SCMP_ACT_NOTIFY) RETURN_IF_ERROR(AddJailChildDefaults(ctx.get(), policy));
  SeccompProgram program;
  program.user_notif = SeccompUsesUserNotif(policy);
  RETURN_IF_ERROR(ExportBpf(ctx.get(), &program.instructions));
  return program;
}

namespace {

// Every field of the policy, length-prefixed where variable: equal keys mean equal policies.
std::string CacheKey(const SeccompPolicy& policy) {
  std::string key;
  const auto put = [&key](uint64_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(static_cast<uint64_t>(policy.default_action));
  put(static_cast<uint64_t>(policy.default_errno));
  put(policy.audit_denials ? 1 : 0);
  put(policy.rules.size());
  for (const SeccompRule& rule : policy.rules) {
    put(rule.syscall.size());
    key += rule.syscall;
    put(static_cast<uint64_t>(rule.action));
    put(static_cast<uint64_t>(rule.errno_value));
    put(rule.args.size());
    for (const SyscallArgCondition& c : rule.args) {
      put(c.index);
      put(static_cast<uint64_t>(c.op));
      put(c.value);
      put(c.mask);
    }
  }
  return key;
}

constexpr size_t kMaxCachedPrograms = 32;

}  // namespace

absl::StatusOr<std::shared_ptr<const SeccompProgram>> CompileSeccompCached(const SeccompPolicy& policy) {
  static std::mutex mu;
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<const SeccompProgram>>();
  std::string key = CacheKey(policy);
  {
    std::lock_guard lock(mu);
    if (auto it = cache->find(key); it != cache->end()) return it->second;
  }
  // Compiled outside the lock: two first sessions of one policy may both compile; one result stays.
  ASSIGN_OR_RETURN(SeccompProgram program, CompileSeccomp(policy));
  auto shared = std::make_shared<const SeccompProgram>(std::move(program));
  std::lock_guard lock(mu);
  // Policies a client writes could each add one: past the bound, start over rather than grow.
  if (cache->size() >= kMaxCachedPrograms) cache->clear();
  return cache->try_emplace(std::move(key), std::move(shared)).first->second;
}

}  // namespace sbx::sandbox
