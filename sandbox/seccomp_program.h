// Compiles a policy's seccomp section into a BPF program for the native ABI. Foreign ABIs (i386 via int 0x80,
// x32) are always refused: a syscall through them kills the process.
//
// With `audit_denials` (the default), every ERRNO or KILL decision compiles to SECCOMP_RET_USER_NOTIF: the
// jail child loads the program with a listener that the agent's supervisor answers (seccomp_notify.h), using
// SeccompDenyTable to find the rule's action and errno again. Allowed calls never leave the kernel.
#ifndef SBX_SANDBOX_SECCOMP_PROGRAM_H_
#define SBX_SANDBOX_SECCOMP_PROGRAM_H_

#include <linux/filter.h>

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "sandbox/policy/policy.h"

namespace sbx::sandbox {

// A compiled classic-BPF seccomp program, ready for seccomp(2) in a jail child (no allocation needed there:
// the child reads this memory as it was copied by clone).
struct SeccompProgram {
  std::vector<sock_filter> instructions;
  // Some decisions return SECCOMP_RET_USER_NOTIF: the program must be loaded with
  // SECCOMP_FILTER_FLAG_NEW_LISTENER and the listener supervised.
  bool user_notif = false;
};

// NOTE: the syscalls the jail child makes between loading the program and execve(sandbox-init) (sending the
// listener to the agent, closing it, exec, and the failure report) keep their denials as plain
// RET_ERRNO / RET_KILL_PROCESS even with audit_denials: the agent's thread that would answer is suspended in
// vfork until that exec, so a notification there could never be answered.
bool IsJailChildSyscall(int nr);

// Resolves syscall names, expands kAnyBitsSet conditions into one rule per bit and an argument's NE list into
// the ranges around its values, and exports BPF.
// InvalidArgument names the rule ("seccomp.rules[4]: unknown syscall 'mountt'").
absl::StatusOr<SeccompProgram> CompileSeccomp(const SeccompPolicy& policy);

// CompileSeccomp through an in-process cache keyed by the policy's whole content (not a hash of it, so two
// policies never share a program by collision): a daemon compiles each built-in policy once, not at every
// session start. Errors are not cached. Thread-safe; the cache holds at most a few dozen programs.
absl::StatusOr<std::shared_ptr<const SeccompProgram>> CompileSeccompCached(const SeccompPolicy& policy);

// Whether CompileSeccomp(policy) returns a program with user_notif, known without compiling: the jail needs
// the listener's socket before it clones, and compiles the program while the child builds its mounts.
bool SeccompUsesUserNotif(const SeccompPolicy& policy);

// What the policy decides for a call the filter handed to the supervisor.
struct SeccompDecision {
  SeccompAction action = SeccompAction::kErrno;  // kErrno or kKill
  int errno_value = 1;
  int rule = -1;  // index into SeccompPolicy::rules; -1: the default action
};

// The policy's deny decisions by syscall number, for the supervisor: the BPF says only "notify", so the
// rule (and with it the action and errno) is found again here, by re-evaluating the rules' argument
// conditions (EQ, NE, MASKED_EQ, ANY_BITS_SET) on the call's arguments, first matching deny rule wins.
class SeccompDenyTable {
 public:
  static absl::StatusOr<SeccompDenyTable> Build(const SeccompPolicy& policy);
  SeccompDecision Decide(int nr, const uint64_t args[6]) const;

 private:
  SeccompPolicy policy_;
  std::map<int, std::vector<int>> rules_by_nr_;  // deny rules only, in policy order
};

// Whether a rule's argument conditions all hold for `args` (NE conditions on one argument: none of them).
bool ArgsMatch(const std::vector<SyscallArgCondition>& conds, const uint64_t args[6]);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_SECCOMP_PROGRAM_H_
