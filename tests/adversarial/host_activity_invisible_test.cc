// Guarantee: what the host does under a directory or file bound read-only into the jail does not reach the
// jail's inotify watches (inotify marks live on inodes; read-only binds are overlays with inodes of their
// own), while watches on the jail's own tmpfs keep working.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/spawn.h"
#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

// Runs /usr/bin/tac on the host with stdin and stdout on /dev/null: its exec opens /usr/bin/tac and
// /etc/ld.so.cache.
void RunTacOnHost() {
  SpawnOptions options;
  options.args = {"/usr/bin/tac"};
  options.stderr_inherit = true;
  const pid_t pid = Spawn(options).pid;
  ASSERT_GT(pid, 0);
  int status;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
}

TEST(HostActivityInvisibleTest, HostExecUnderUsrBinIsNotSeenButWorkspaceWatchesWork) {
  char dir_template[] = "/tmp/sbx-inotify-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(chmod(dir.c_str(), 0777), 0);  // the jail's uid creates "ready" there

  AgentInvocation inv;
  inv.flags = {"--rw-bind", dir + ":/sync", "--ro-bind",
               std::string(SBX_ADV_PROBE_DIR) + "/inotify_host_spy:/adv/inotify_host_spy"};
  inv.command = {"/adv/inotify_host_spy"};
  int out_fd;
  std::string outcome;
  const pid_t pid = StartAgent(inv, &out_fd, &outcome);

  // Wait for the probe's watches (it creates "ready" after adding them).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  struct stat st;
  while (stat((dir + "/ready").c_str(), &st) != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const bool ready = stat((dir + "/ready").c_str(), &st) == 0;

  if (ready) {
    for (int i = 0; i < 3; ++i) RunTacOnHost();
    // Read a file under /usr/bin too (IN_OPEN, IN_ACCESS).
    const int fd = open("/usr/bin/tac", O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    char buf[64];
    EXPECT_GT(read(fd, buf, sizeof(buf)), 0);
    close(fd);
  }
  // "done" ends the probe's wait either way (it was created after everything above).
  const int done = open((dir + "/done").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(done, 0);
  close(done);

  const AgentRun run = WaitAgent(pid, out_fd, outcome);
  unlink((dir + "/ready").c_str());
  unlink((dir + "/done").c_str());
  rmdir(dir.c_str());
  ASSERT_TRUE(ready) << "the probe never got ready: " << run.out << run.err;
  ASSERT_EQ(run.exit_code, 0) << run.out << run.err;

  int usr = -1, etc = -1, ws = -1;
  char first[256] = "";
  ASSERT_EQ(sscanf(run.out.c_str(), "usr_bin_events=%d etc_events=%d workspace_events=%d first_usr_bin=%255s",
                   &usr, &etc, &ws, first),
            4)
      << run.out;
  EXPECT_EQ(usr, 0) << "the jail saw the host open /usr/bin/" << first << ": " << run.out;
  EXPECT_EQ(etc, 0) << "the jail saw the host open /etc/ld.so.cache: " << run.out;
  EXPECT_GT(ws, 0) << "a watch on the jail's own workspace saw nothing: " << run.out;
}

}  // namespace
}  // namespace sbx::testing
