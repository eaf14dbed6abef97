#include "sandbox/init/errors.h"

#include <cerrno>
#include <cstring>
#include <utility>

namespace sbx::sandbox::serve {

std::string Quote(std::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = "\"";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "\"";
  return out;
}

pb::Code CodeForErrno(int err) {
  switch (err) {
    case ENOENT:
      return pb::CODE_NOT_FOUND;
    case EACCES:
    case EPERM:
    case EROFS:
    case EXDEV:  // RESOLVE_BENEATH: the path leads out of the workspace
      return pb::CODE_PERMISSION_DENIED;
    case EEXIST:
      return pb::CODE_ALREADY_EXISTS;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EAGAIN:
      return pb::CODE_RESOURCE_EXHAUSTED;
    case EINVAL:
    case ENAMETOOLONG:
      return pb::CODE_INVALID_ARGUMENT;
    case ELOOP:
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY:
    case EBUSY:
    case ETXTBSY:
    case ENXIO:
      return pb::CODE_FAILED_PRECONDITION;
    default:
      return pb::CODE_INTERNAL;
  }
}

void SetError(pb::Response* r, pb::Code code, std::string message) {
  pb::Error* e = r->mutable_error();
  e->set_code(code);
  e->set_message(std::move(message));
}


void SetErrnoError(pb::Response* r, std::string_view op, std::string_view path, int err) {
  std::string message(op);
  message += " " + Quote(path) + ": ";
  message += strerror(err);
  if (err == ELOOP) message += " (not followed here: a final symlink on write/remove, or a /proc magic link)";
  if (err == EXDEV) message = std::string(op) + " " + Quote(path) + ": the path leads outside the workspace (through a symlink)";
  SetError(r, CodeForErrno(err), std::move(message));
}

}  // namespace sbx::sandbox::serve
