// Parsing a textproto file or text into a message, with the first error as "<origin>:<line>:<col>: <what>"
// (1-based). Unknown fields and extensions are errors: a misspelt field must not be silently ignored.
// Shared by the policy loader and the agent's config loader.
#ifndef SBX_SANDBOX_POLICY_TEXTPROTO_H_
#define SBX_SANDBOX_POLICY_TEXTPROTO_H_

#include <string_view>

#include "absl/status/status.h"

namespace google::protobuf {
class Message;
}

namespace sbx {

// InvalidArgument naming origin, line, column and the problem when `text` does not parse into `message`.
absl::Status ParseTextProto(std::string_view text, std::string_view origin, google::protobuf::Message* message);

}  // namespace sbx

#endif  // SBX_SANDBOX_POLICY_TEXTPROTO_H_
