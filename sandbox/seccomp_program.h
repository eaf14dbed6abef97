// Compiles a policy's seccomp section into a BPF program for the native ABI. Foreign ABIs (i386 via int 0x80,
// x32) are always refused: a syscall through them kills the process.
#ifndef SBX_SANDBOX_SECCOMP_PROGRAM_H_
#define SBX_SANDBOX_SECCOMP_PROGRAM_H_

#include <linux/filter.h>

#include <vector>

#include "absl/status/statusor.h"
#include "sandbox/policy.h"

namespace sbx::sandbox {

// A compiled classic-BPF seccomp program, ready for prctl(PR_SET_SECCOMP) in a jail child (no allocation
// needed there: the child reads this memory as it was copied by clone).
struct SeccompProgram {
  std::vector<sock_filter> instructions;
};

// Resolves syscall names, expands kAnyBitsSet conditions into one rule per bit and an argument's NE list into
// the ranges around its values, and exports BPF.
// InvalidArgument names the rule ("seccomp.rules[4]: unknown syscall 'mountt'").
absl::StatusOr<SeccompProgram> CompileSeccomp(const SeccompPolicy& policy);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_SECCOMP_PROGRAM_H_
