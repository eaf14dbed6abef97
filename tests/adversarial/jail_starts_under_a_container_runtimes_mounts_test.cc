// Guarantee: a jail starts where the agent's /etc has mounts below it, as in every container (the runtime
// bind-mounts /etc/hosts, /etc/resolv.conf and /etc/hostname). In the jail's user namespace those mounts are
// locked, and the kernel refuses a read-only overlay whose lower directory has locked mounts below it
// ("overlayfs: failed to clone lowerpath", EINVAL): the policies' read-only /etc files (ld.so.cache, ...) then
// come in as plain read-only binds instead of failing every session (tests/container/run.sh found it).
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <string>

#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

TEST(JailUnderContainerMountsTest, ReadOnlyEtcFilesBindWhenEtcHasMountsBelowIt) {
  char file_template[] = "/tmp/sbx-etc-mount-XXXXXX";
  const int fd = mkstemp(file_template);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "container-host\n", 15), 15);
  close(fd);
  const std::string file = file_template;
  // /etc/hostname as a container runtime has it: a bind mount from elsewhere, in the agent's own mount
  // namespace (unshare, so the host's /etc is left alone).
  const char* target = access("/etc/hostname", F_OK) == 0 ? "/etc/hostname" : "/etc/hosts";

  AgentInvocation inv;
  inv.bind_probe = false;
  inv.prefix = {"unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec",
                std::string("mount --bind ") + file + " " + target + "; exec \"$0\" \"$@\""};
  inv.command = {"/bin/sh", "-c", "test -r /etc/ld.so.cache && echo ok"};
  const AgentRun run = RunAgent(inv);
  unlink(file.c_str());

  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "ok\n") << run.err;
}

}  // namespace
}  // namespace sbx::testing
