// Status helpers that Debian's abseil (20220623) lacks: RETURN_IF_ERROR, ASSIGN_OR_RETURN, ErrnoToStatus.
// Public APIs take std::string_view; the conversion to absl::string_view lives here.
#ifndef SBX_BASE_STATUS_H_
#define SBX_BASE_STATUS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sbx {

// Converts std::string_view to the abseil type (not the same type in Debian's abseil).
inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Maps an errno value to a status whose message is "<what>: <strerror>" and whose code follows errno
// (ENOENT -> NotFound, EACCES/EPERM -> PermissionDenied, EINVAL -> InvalidArgument, ...).
absl::Status ErrnoToStatus(int errno_value, std::string_view what);

// The same status with more context in front: "<context>: <message>".
absl::Status Annotate(const absl::Status& status, std::string_view context);

}  // namespace sbx

#define SBX_STATUS_CONCAT_INNER_(a, b) a##b
#define SBX_STATUS_CONCAT_(a, b) SBX_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                                    \
  do {                                                           \
    if (::absl::Status sbx_status_ = (expr); !sbx_status_.ok()) { \
      return sbx_status_;                                        \
    }                                                            \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` declares x from F()'s value, or returns F()'s status.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  SBX_ASSIGN_OR_RETURN_IMPL_(SBX_STATUS_CONCAT_(sbx_statusor_, __LINE__), lhs, rexpr)
#define SBX_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) {                                  \
    return std::move(statusor).status();                 \
  }                                                      \
  lhs = std::move(statusor).value()

#endif  // SBX_BASE_STATUS_H_
