// Guarantee: every built-in policy refuses, with EPERM, the calls Docker's default seccomp profile refuses
// and a workload has no need for: personality() with values off Docker's list (ASLR off, READ_IMPLIES_EXEC,
// other personas), modify_ldt, fanotify_init and memfd_secret; personality's query (0xffffffff) and the
// default persona stay allowed.
#include <errno.h>

#include <map>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

struct Result {
  long rc = 0;
  int err = 0;
};

std::map<std::string, Result> ParseResults(const std::string& out) {
  std::map<std::string, Result> results;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    char name[64];
    Result r;
    if (sscanf(line.c_str(), "%63s rc=%ld errno=%d", name, &r.rc, &r.err) == 3) results[name] = r;
  }
  return results;
}

class DockerDefaultDenialsTest : public ::testing::TestWithParam<const char*> {};

TEST_P(DockerDefaultDenialsTest, RefusedWithEpermAndPersonalityQueryAllowed) {
  AgentInvocation inv;
  inv.flags = {"--policy", std::string(SBX_POLICY_DIR) + "/" + GetParam() + ".textproto", "--ro-bind",
               std::string(SBX_ADV_PROBE_DIR) + "/docker_denied_calls:/adv/docker_denied_calls"};
  inv.command = {"/adv/docker_denied_calls"};
  const AgentRun run = RunAgent(inv);
  ASSERT_EQ(run.exit_code, 0) << run.err << run.out;
  const std::map<std::string, Result> results = ParseResults(run.out);

  for (const char* denied : {"personality_addr_no_randomize", "personality_read_implies_exec", "personality_bsd",
                             "personality_high_bits", "modify_ldt", "fanotify_init", "memfd_secret"}) {
    SCOPED_TRACE(denied);
    auto it = results.find(denied);
    ASSERT_NE(it, results.end()) << run.out;
    EXPECT_EQ(it->second.rc, -1) << run.out;
    EXPECT_EQ(it->second.err, EPERM) << run.out;
  }
  for (const char* allowed :
       {"personality_query", "personality_linux", "personality_uname26", "personality_linux_again"}) {
    SCOPED_TRACE(allowed);
    auto it = results.find(allowed);
    ASSERT_NE(it, results.end()) << run.out;
    EXPECT_GE(it->second.rc, 0) << run.out;
  }
  // personality returns the previous persona: after UNAME26 was set, setting PER_LINUX returns 0x20000,
  // which proves the allowed calls really ran.
  EXPECT_EQ(results.at("personality_linux_again").rc, 0x20000) << run.out;
}

INSTANTIATE_TEST_SUITE_P(BuiltInPolicies, DockerDefaultDenialsTest, ::testing::Values("file", "browser", "desktop"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace sbx::testing
