// AgentConfig.egress_deny_cidrs: parsed into networks for the egress proxy; a bad entry names its index.
#include "agent/fleet/agent_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

using ::sbx::testing::StatusIs;

std::string WriteConfig(const std::string& text) {
  const std::string path = "/tmp/sbx-agent-config-test-" + std::to_string(getpid()) + ".textproto";
  std::ofstream(path) << text;
  return path;
}

TEST(AgentConfigTest, EgressDenyCidrsAreParsed) {
  const std::string path = WriteConfig("egress_deny_cidrs: \"10.0.0.0/8\"\negress_deny_cidrs: \"fd00::/8\"\n"
                                       "egress_deny_cidrs: \"192.0.2.1\"\n");
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(path);
  unlink(path.c_str());
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->egress_deny.size(), 3u);
  EXPECT_EQ(c->egress_deny[0].ToString(), "10.0.0.0/8");
  EXPECT_EQ(c->egress_deny[1].ToString(), "fd00::/8");
  EXPECT_EQ(c->egress_deny[2].ToString(), "192.0.2.1/32");
}

// fleet.outbox_damage: SALVAGE unless set to REFUSE (issue 17).
TEST(AgentConfigTest, OutboxDamageDefaultsToSalvageAndTakesRefuse) {
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(WriteConfig("fleet { control_plane: \"127.0.0.1:1\" }\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->fleet.outbox_salvage);
  c = LoadAgentConfig(WriteConfig("fleet { control_plane: \"127.0.0.1:1\" outbox_damage: REFUSE }\n"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->fleet.outbox_salvage);
  const std::string path = WriteConfig("fleet { control_plane: \"127.0.0.1:1\" outbox_damage: SALVAGE }\n");
  c = LoadAgentConfig(path);
  unlink(path.c_str());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->fleet.outbox_salvage);
}

TEST(AgentConfigTest, ABadEgressDenyCidrIsRefusedNamingIt) {
  const std::string path = WriteConfig("egress_deny_cidrs: \"10.0.0.0/8\"\negress_deny_cidrs: \"10.0.0.0/8:443\"\n");
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(path);
  unlink(path.c_str());
  EXPECT_TRUE(StatusIs(c, absl::StatusCode::kInvalidArgument, "egress_deny_cidrs[1]")) << c.status();
}

// fleet.stream_op_timeout_ms (issue 17 item 2): 20 s by default, 100 ms..10 min, refused outside naming it.
TEST(AgentConfigTest, FleetStreamOpTimeoutHasADefaultAndARange) {
  EXPECT_EQ(DefaultAgentConfig().fleet.stream_op_timeout, std::chrono::milliseconds(20000));
  std::string path = WriteConfig("fleet { control_plane: \"127.0.0.1:1\" stream_op_timeout_ms: 100 }\n");
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(path);
  unlink(path.c_str());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->fleet.stream_op_timeout, std::chrono::milliseconds(100));
  path = WriteConfig("fleet { control_plane: \"127.0.0.1:1\" stream_op_timeout_ms: 99 }\n");
  c = LoadAgentConfig(path);
  unlink(path.c_str());
  EXPECT_TRUE(StatusIs(c, absl::StatusCode::kInvalidArgument, "fleet.stream_op_timeout_ms")) << c.status();
}

// warm_files, warm_desktops, warm_browsers (issue 15): each kind's pool; each, and the three together, at most
// max_sessions, refused naming the key.
TEST(AgentConfigTest, WarmPoolsPerKindAreLoadedAndMayNotExceedCapacity) {
  std::string path = WriteConfig("max_sessions: 6\nwarm_files: 2\nwarm_desktops: 1\nwarm_browsers: 3\n");
  absl::StatusOr<AgentConfig> c = LoadAgentConfig(path);
  unlink(path.c_str());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->warm_files, 2u);
  EXPECT_EQ(c->warm_desktops, 1u);
  EXPECT_EQ(c->warm_browsers, 3u);
  path = WriteConfig("max_sessions: 4\nwarm_files: 2\nwarm_browsers: 3\n");
  c = LoadAgentConfig(path);
  unlink(path.c_str());
  EXPECT_TRUE(StatusIs(c, absl::StatusCode::kInvalidArgument, "warm_files + warm_desktops + warm_browsers: 2 + 0 + 3"))
      << c.status();
  path = WriteConfig("max_sessions: 4\nwarm_desktops: 4000000000\n");
  c = LoadAgentConfig(path);
  unlink(path.c_str());
  EXPECT_TRUE(StatusIs(c, absl::StatusCode::kInvalidArgument, "warm_desktops: 4000000000 is more than max_sessions"))
      << c.status();
}

}  // namespace
}  // namespace sbx::agent
