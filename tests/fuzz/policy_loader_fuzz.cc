// Fuzzes the policy loader (sandbox/policy/policy_loader.h): textproto text -> SandboxPolicy -> PolicyBuilder's
// validation -> Policy. A policy reaches the agent from a request (a client) or a file. Beyond "no crash":
// every refusal is InvalidArgument-like with a message, never OK with nothing in it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "sandbox/policy/policy_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const absl::StatusOr<sbx::sandbox::Policy> policy = sbx::sandbox::ParsePolicyText(text, "fuzz.textproto");
  if (!policy.ok() && policy.status().message().empty()) std::abort();
  return 0;
}
