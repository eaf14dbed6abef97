#include "agent/daemon/grpc_status.h"

#include <string>

#include "absl/status/status.h"
#include "agent/session/jail_text.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace sbx::agent {
namespace {

// "field.path: message" -> "field.path"; "" when the message does not start with a field.
std::string FieldOf(std::string_view message) {
  const size_t colon = message.find(": ");
  if (colon == std::string_view::npos || colon == 0) return "";
  std::string_view field = message.substr(0, colon);
  for (char c : field) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '[' || c == ']' || c == '-')) {
      return "";
    }
  }
  return std::string(field);
}

}  // namespace

grpc::Status ToGrpcStatus(const absl::Status& status, std::string_view request_id) {
  if (status.ok()) return grpc::Status::OK;
  // A message may quote jail-made text (a file name): the details' proto string must be UTF-8.
  std::string message = ToValidUtf8(std::string_view(status.message().data(), status.message().size()));
  if (message.size() > kMaxErrorMessageBytes) {
    message.resize(kMaxErrorMessageBytes - 3);
    message += "...";
  }
  google::rpc::Status details;
  details.set_code(static_cast<int>(status.code()));
  details.set_message(message);
  google::rpc::ErrorInfo info;
  info.set_reason(absl::StatusCodeToString(status.code()));
  info.set_domain(kErrorDomain);
  (*info.mutable_metadata())["request_id"] = std::string(request_id);
  details.add_details()->PackFrom(info);
  const std::string field = FieldOf(message);
  if (!field.empty() && (status.code() == absl::StatusCode::kInvalidArgument ||
                         status.code() == absl::StatusCode::kPermissionDenied ||
                         status.code() == absl::StatusCode::kOutOfRange)) {
    google::rpc::BadRequest bad;
    auto* violation = bad.add_field_violations();
    violation->set_field(field);
    violation->set_description(message);
    details.add_details()->PackFrom(bad);
  }
  if (status.code() == absl::StatusCode::kResourceExhausted || status.code() == absl::StatusCode::kUnavailable) {
    google::rpc::RetryInfo retry;
    retry.mutable_retry_delay()->set_seconds(1);
    details.add_details()->PackFrom(retry);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), message, details.SerializeAsString());
}

}  // namespace sbx::agent
