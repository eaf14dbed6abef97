#include "base/status.h"

#include <cerrno>
#include <cstring>

namespace sbx {

absl::Status ErrnoToStatus(int errno_value, std::string_view what) {
  std::string message(what);
  message += ": ";
  message += std::strerror(errno_value);
  absl::StatusCode code;
  switch (errno_value) {
    case ENOENT:
    case ESRCH:
      code = absl::StatusCode::kNotFound;
      break;
    case EACCES:
    case EPERM:
    case EROFS:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EINVAL:
    case ENOTDIR:
    case EISDIR:
    case ENAMETOOLONG:
    case ELOOP:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case EEXIST:
      code = absl::StatusCode::kAlreadyExists;
      break;
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EAGAIN:
    case EDQUOT:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case ENOSYS:
    case EOPNOTSUPP:
      code = absl::StatusCode::kUnimplemented;
      break;
    case EBUSY:
      code = absl::StatusCode::kFailedPrecondition;
      break;
    default:
      code = absl::StatusCode::kInternal;
  }
  return absl::Status(code, message);
}

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  std::string message(context);
  message += ": ";
  message.append(status.message().data(), status.message().size());
  return absl::Status(status.code(), message);
}

}  // namespace sbx
