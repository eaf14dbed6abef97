// Test helpers for absl::Status / absl::StatusOr that Debian's abseil (20220623) lacks. They return
// ::testing::AssertionResult (no gmock needed), so a failure prints the status:
//   EXPECT_TRUE(IsOk(status));
//   EXPECT_TRUE(StatusIs(result, absl::StatusCode::kInvalidArgument, "limits.pids_max"));
//   ASSERT_OK_AND_ASSIGN(Policy policy, builder.TryBuild());
#ifndef SBX_TESTS_UNIT_STATUS_MATCHERS_H_
#define SBX_TESTS_UNIT_STATUS_MATCHERS_H_

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace sbx::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// Succeeds when the status (or StatusOr) is OK.
template <typename S>
::testing::AssertionResult IsOk(const S& status_or) {
  const absl::Status& status = GetStatus(status_or);
  if (status.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "expected OK, got " << status.ToString();
}

// Succeeds when the status has `code` and its message contains `substring`.
template <typename S>
::testing::AssertionResult StatusIs(const S& status_or, absl::StatusCode code,
                                    std::string_view substring = {}) {
  const absl::Status& status = GetStatus(status_or);
  const std::string_view message(status.message().data(), status.message().size());
  if (status.code() == code && message.find(substring) != std::string_view::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "expected " << absl::StatusCodeToString(code) << " containing \""
                                       << substring << "\", got " << status.ToString();
}

}  // namespace sbx::testing

#define SBX_TESTING_CONCAT_INNER_(a, b) a##b
#define SBX_TESTING_CONCAT_(a, b) SBX_TESTING_CONCAT_INNER_(a, b)

// `ASSERT_OK_AND_ASSIGN(auto x, F());` declares x from F()'s value, or fails the test with F()'s status.
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  SBX_ASSERT_OK_AND_ASSIGN_IMPL_(SBX_TESTING_CONCAT_(sbx_statusor_, __LINE__), lhs, rexpr)
#define SBX_ASSERT_OK_AND_ASSIGN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  ASSERT_TRUE(::sbx::testing::IsOk(statusor));               \
  lhs = std::move(statusor).value()

#endif  // SBX_TESTS_UNIT_STATUS_MATCHERS_H_
