// PolicyBuilder: the only way to make a Policy. Fluent; the first error sticks and TryBuild() returns it.
// Validation rejects contradictions with a message that names the field (a rw bind of /, a limit of 0,
// relative paths, a tmpfs without a size, uid 0, ...).
#ifndef SBX_SANDBOX_POLICY_POLICY_BUILDER_H_
#define SBX_SANDBOX_POLICY_POLICY_BUILDER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "sandbox/policy/policy.h"

namespace sbx::sandbox {

// Token that makes sharing the host's network stand out in review (sandbox2's UnrestrictedNetworking).
struct UnrestrictedNetworking {
  explicit UnrestrictedNetworking() = default;
};

class PolicyBuilder {
 public:
  PolicyBuilder() = default;
  // Starts from an existing policy (e.g. to add binds from the command line).
  explicit PolicyBuilder(const Policy& base) : spec_(base.spec()) {}

  PolicyBuilder& SetName(std::string_view name);
  PolicyBuilder& SetNamespaces(bool ipc, bool uts, bool cgroup);
  PolicyBuilder& SetIds(uint32_t uid, uint32_t gid);
  PolicyBuilder& AddBind(std::string_view src, std::string_view dst, bool writable, bool optional = false);
  PolicyBuilder& AddTmpfs(std::string_view dst, uint64_t size_bytes, uint32_t mode = 01777);
  PolicyBuilder& AddFile(std::string_view dst, std::string_view contents, uint32_t mode = 0644);
  PolicyBuilder& AddSymlink(std::string_view dst, std::string_view target);
  PolicyBuilder& SetLimits(const Limits& limits);
  PolicyBuilder& SetSeccomp(SeccompPolicy seccomp);
  PolicyBuilder& SetNetworkNone();
  PolicyBuilder& SetNetworkEgress(std::vector<std::string> allow = {}, uint16_t proxy_port = 3128,
                                  std::vector<std::string> ask = {});
  PolicyBuilder& SetNetworkHost(UnrestrictedNetworking);
  PolicyBuilder& AddEnvPassthrough(std::string_view name);
  PolicyBuilder& SetEnv(std::string_view name, std::string_view value);  // replaces an earlier value
  PolicyBuilder& SetHostname(std::string_view hostname);
  PolicyBuilder& SetWorkdir(std::string_view workdir);
  // Adds human approval gates (the host policy's, then a request's): kinds, exec rules and secret patterns are
  // added to those already there, never taking one away. `more` is validated on its own first, so errors name
  // its own indexes ("approvals.exec[0].argv_regex: ..."). A timeout_ms may shorten the deadline, not lengthen
  // it past the one already set (PermissionDenied).
  PolicyBuilder& AddApprovals(const ApprovalSpec& more);

  // Validates everything and returns the policy, or the first error (InvalidArgument, naming the field).
  absl::StatusOr<Policy> TryBuild() const;

 private:
  PolicyBuilder& Fail(absl::Status status);
  PolicySpec spec_;
  absl::Status status_;
};

// What a request (a CLI flag, an API call) asks to narrow. Unset fields keep the base policy's value.
struct PolicyNarrowing {
  std::optional<uint64_t> memory_max_bytes;
  std::optional<uint32_t> pids_max;
  std::optional<uint32_t> cpu_millicores;
  std::optional<uint64_t> wall_time_limit_ms;
  std::optional<uint64_t> open_files_max;
  std::optional<uint64_t> file_size_max_bytes;
  std::optional<uint64_t> output_max_bytes;
  std::optional<uint64_t> event_log_max_events;
  std::optional<uint64_t> event_log_max_bytes;
  std::optional<uint64_t> file_events_max_bytes;
  std::optional<uint32_t> display_max_width;
  std::optional<uint32_t> display_max_height;
};

// Applies `narrowing` to `ceiling`. A value above the ceiling is refused with PermissionDenied naming the
// field and both values ("limits.memory_max_bytes: 1073741824 exceeds the policy ceiling 536870912");
// a zero or absurd value is InvalidArgument.
absl::StatusOr<Policy> NarrowPolicy(const Policy& ceiling, const PolicyNarrowing& narrowing);

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_POLICY_POLICY_BUILDER_H_
