// The errors sandbox-init's serving mode answers with: an init-protocol Code for an errno, and a quoted path
// in messages (paths come from the agent and may be anything).
#ifndef SBX_SANDBOX_INIT_ERRORS_H_
#define SBX_SANDBOX_INIT_ERRORS_H_

#include <string>
#include <string_view>

#include "wire/init_protocol.pb.h"

namespace sbx::sandbox::serve {

namespace pb = ::sbx::init;

// A path for a message: quoted, and cut short when long.
std::string Quote(std::string_view s);

pb::Code CodeForErrno(int err);

void SetError(pb::Response* r, pb::Code code, std::string message);

// "<op> "<path>": <strerror>", with the errno's code.
void SetErrnoError(pb::Response* r, std::string_view op, std::string_view path, int err);

}  // namespace sbx::sandbox::serve

#endif  // SBX_SANDBOX_INIT_ERRORS_H_
