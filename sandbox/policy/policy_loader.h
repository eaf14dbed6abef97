// Loads a SandboxPolicy textproto (policies/*.textproto, or a request's policy message) into a Policy.
// Errors name the file, the line and the field.
#ifndef SBX_SANDBOX_POLICY_POLICY_LOADER_H_
#define SBX_SANDBOX_POLICY_POLICY_LOADER_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "sandbox/policy/policy.h"

namespace duvo::sandbox::v1 {
class ApprovalPolicy;
class SandboxPolicy;
}

namespace sbx::sandbox {

// Parses textproto `text`; `origin` (a file name) prefixes every error: "file.textproto:12:3: ...".
absl::StatusOr<Policy> ParsePolicyText(std::string_view text, std::string_view origin);

// Reads and parses a policy file.
absl::StatusOr<Policy> LoadPolicyFile(std::string_view path);

// Converts the wire/disk message into a validated Policy; errors name the field path.
absl::StatusOr<Policy> PolicyFromProto(const duvo::sandbox::v1::SandboxPolicy& proto);

// The approval gates of a policy or a request (CreateRequest.approvals), not validated yet: they are, with
// field names, when added to a PolicyBuilder (AddApprovals).
ApprovalSpec ApprovalsFromProto(const duvo::sandbox::v1::ApprovalPolicy& proto);

// The built-in default policy for file sessions (policies/file.textproto, compiled in).
absl::StatusOr<Policy> DefaultFilePolicy();
// The built-in policies/desktop.textproto (parsed from its text on each call).
absl::StatusOr<Policy> DefaultDesktopPolicy();
// The built-in policies/browser.textproto (parsed from its text on each call).
absl::StatusOr<Policy> DefaultBrowserPolicy();

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_POLICY_POLICY_LOADER_H_
