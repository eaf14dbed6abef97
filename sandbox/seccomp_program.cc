#include "sandbox/seccomp_program.h"

#include <seccomp.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "sandbox/status.h"
#include "sandbox/unique_fd.h"

namespace sbx::sandbox {
namespace {

struct SeccompCtxDeleter {
  void operator()(scmp_filter_ctx ctx) const { seccomp_release(ctx); }
};
using SeccompCtx = std::unique_ptr<void, SeccompCtxDeleter>;

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

// Expands conditions into alternatives: each kAnyBitsSet condition becomes one masked-equal comparison per
// set bit, and the rule is added once per combination (libseccomp ORs rules of one syscall).
void Expand(const std::vector<SyscallArgCondition>& conds, size_t i, std::vector<scmp_arg_cmp>& current,
            std::vector<std::vector<scmp_arg_cmp>>& out) {
  if (i == conds.size()) {
    out.push_back(current);
    return;
  }
  const SyscallArgCondition& c = conds[i];
  auto with = [&](scmp_arg_cmp cmp) {
    current.push_back(cmp);
    Expand(conds, i + 1, current, out);
    current.pop_back();
  };
  switch (c.op) {
    case SyscallArgCondition::Op::kEq:
      with(SCMP_CMP(c.index, SCMP_CMP_EQ, c.value));
      break;
    case SyscallArgCondition::Op::kNe:
      with(SCMP_CMP(c.index, SCMP_CMP_NE, c.value));
      break;
    case SyscallArgCondition::Op::kMaskedEq:
      with(SCMP_CMP(c.index, SCMP_CMP_MASKED_EQ, c.mask, c.value));
      break;
    case SyscallArgCondition::Op::kAnyBitsSet:
      for (int bit = 0; bit < 64; ++bit) {
        const uint64_t b = uint64_t{1} << bit;
        if (c.value & b) with(SCMP_CMP(c.index, SCMP_CMP_MASKED_EQ, b, b));
      }
      break;
  }
}

}  // namespace

absl::StatusOr<SeccompProgram> CompileSeccomp(const SeccompPolicy& policy) {
  const uint32_t default_action = ToScmpAction(policy.default_action, policy.default_errno);
  SeccompCtx ctx(seccomp_init(default_action));
  if (!ctx) return absl::InternalError("seccomp_init failed");
  // Only the native ABI is in the filter; anything else (i386, x32) hits the bad-arch action.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_attr_set(ACT_BADARCH)");
  }
  // The jail sets no_new_privs itself, before loading the program.
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_CTL_NNP, 0); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_attr_set(CTL_NNP)");
  }

  for (size_t i = 0; i < policy.rules.size(); ++i) {
    const SeccompRule& rule = policy.rules[i];
    const std::string where = absl::StrCat("seccomp.rules[", i, "] (", rule.syscall, ")");
    const int nr = seccomp_syscall_resolve_name(rule.syscall.c_str());
    if (nr == __NR_SCMP_ERROR) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": unknown syscall '", rule.syscall, "'"));
    }
    const uint32_t action = ToScmpAction(rule.action, rule.errno_value);
    if (action == default_action) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the action equals the default action, so the rule would do nothing"));
    }
    std::vector<std::vector<scmp_arg_cmp>> alternatives;
    std::vector<scmp_arg_cmp> current;
    Expand(rule.args, 0, current, alternatives);
    for (const auto& cmps : alternatives) {
      int rc = seccomp_rule_add_array(ctx.get(), action, nr, cmps.size(), cmps.data());
      if (rc < 0) return Annotate(ErrnoToStatus(-rc, "seccomp_rule_add"), where);
    }
  }

  // libseccomp 2.5 can only export to an fd.
  UniqueFd mem(memfd_create("sbx-seccomp", MFD_CLOEXEC));
  if (!mem) return ErrnoToStatus(errno, "memfd_create");
  if (int rc = seccomp_export_bpf(ctx.get(), mem.get()); rc < 0) {
    return ErrnoToStatus(-rc, "seccomp_export_bpf");
  }
  struct stat st;
  if (fstat(mem.get(), &st) < 0) return ErrnoToStatus(errno, "fstat(seccomp memfd)");
  if (st.st_size <= 0 || st.st_size % sizeof(sock_filter) != 0 ||
      st.st_size / sizeof(sock_filter) > BPF_MAXINSNS) {
    return absl::InternalError(absl::StrCat("seccomp program has an invalid size: ", st.st_size, " bytes"));
  }
  SeccompProgram program;
  program.instructions.resize(st.st_size / sizeof(sock_filter));
  if (pread(mem.get(), program.instructions.data(), st.st_size, 0) != st.st_size) {
    return ErrnoToStatus(errno, "pread(seccomp memfd)");
  }
  return program;
}

}  // namespace sbx::sandbox
