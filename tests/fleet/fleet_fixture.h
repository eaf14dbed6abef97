// What the fleet tests (fleet_test, approvals_fleet_test) start each test with: a control-plane double and
// the options of an agent pointed at it; and the upload both send. Header-only (gtest: the chaos library, which fleet_bench links, has
// none).
#ifndef SBX_TESTS_FLEET_FLEET_FIXTURE_H_
#define SBX_TESTS_FLEET_FLEET_FIXTURE_H_

#include <memory>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "tests/fleet/agent_process.h"
#include "tests/fleet/double/control_plane_double.h"

namespace sbx::testing {

// A started double, or nullptr (and a test failure) when it could not start.
inline std::unique_ptr<ControlPlaneDouble> StartDouble(DoubleOptions options = {}) {
  absl::StatusOr<std::unique_ptr<ControlPlaneDouble>> cp = ControlPlaneDouble::Start(std::move(options));
  EXPECT_TRUE(cp.ok()) << cp.status();
  return cp.ok() ? std::move(*cp) : nullptr;
}

// An agent `id` of `capacity` sessions pointed at `cp`.
inline AgentProcess::Options AgentFor(const ControlPlaneDouble& cp, std::string id = "agent-1",
                                      uint32_t capacity = 8) {
  AgentProcess::Options o;
  o.control_plane = cp.target();
  o.agent_id = std::move(id);
  o.max_sessions = capacity;
  return o;
}

// An upload of "hello, fleet\n" to /workspace/greeting.txt in two parts ("up-1" both), the last with the
// whole file's sha256.
inline std::pair<duvo::sandbox::v1::SessionCommand, duvo::sandbox::v1::SessionCommand> GreetingUploadParts() {
  duvo::sandbox::v1::SessionCommand part1;
  part1.set_command_id("up-1");
  part1.mutable_upload()->set_path("/workspace/greeting.txt");
  part1.mutable_upload()->set_data("hello, ");
  duvo::sandbox::v1::SessionCommand part2 = part1;
  part2.mutable_upload()->set_offset(7);
  part2.mutable_upload()->set_data("fleet\n");
  part2.mutable_upload()->set_last(true);
  part2.mutable_upload()->set_sha256("a963e87ae48c91da3ea9c3399321d0354d3289ecc12c9ef18bd1df2354b114a2");
  return {part1, part2};
}

}  // namespace sbx::testing

#endif  // SBX_TESTS_FLEET_FLEET_FIXTURE_H_
