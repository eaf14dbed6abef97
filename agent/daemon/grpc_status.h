// The one place an absl::Status becomes a grpc::Status (TF Serving's ToGRPCStatus): the code maps 1:1, the
// message is truncated, and google.rpc details ride in grpc-status-details-bin: ErrorInfo (reason = the
// code's name, domain, the request id), BadRequest naming the field when the message starts with one
// ("policy.limits.pids_max: ..."), RetryInfo for RESOURCE_EXHAUSTED and UNAVAILABLE.
#ifndef SBX_AGENT_DAEMON_GRPC_STATUS_H_
#define SBX_AGENT_DAEMON_GRPC_STATUS_H_

#include <string_view>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sbx::agent {

inline constexpr size_t kMaxErrorMessageBytes = 1024;
inline constexpr char kErrorDomain[] = "sandbox-agent.duvo.dev";

grpc::Status ToGrpcStatus(const absl::Status& status, std::string_view request_id);

}  // namespace sbx::agent

#endif  // SBX_AGENT_DAEMON_GRPC_STATUS_H_
