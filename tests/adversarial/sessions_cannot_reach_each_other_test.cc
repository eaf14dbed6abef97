// Two sessions of one agent share a kernel and nothing else: a process, an abstract unix socket, files in
// /tmp and /dev/shm, and a SysV segment that one session leaves are invisible to the other. The same spy in
// the holder's own session sees every one of them, so the probe can tell (the test can fail).
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/adversarial.h"
#include "tests/common/spawn.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;

std::string CreateFileSession(pb::Sandboxes::StubInterface* stub, const Daemon& daemon) {
  pb::Session session;
  grpc::Status status = CreateSession(stub, pb::FILE, &session);
  EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << daemon.Log();
  return session.id();
}

TEST(SessionsCannotReachEachOther, TracesOfOneSessionAreInvisibleToAnother) {
  const std::string policy_dir = "/tmp/sbx-adv-neighbours-" + std::to_string(getpid());
  Daemon daemon(AdvDaemonOptions("file", policy_dir));
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  auto stub = daemon.NewStub();
  const std::string holder = CreateFileSession(stub.get(), daemon);
  const std::string other = CreateFileSession(stub.get(), daemon);
  const std::string marker = "sbx-neighbour-" + std::to_string(getpid());

  // The holder leaves its traces from a background process and says so in a file.
  CallResult hold = RunExec(stub.get(), holder,
                            {"/bin/sh", "-c", "/adv/neighbour hold " + marker + " >/workspace/held 2>&1 &"});
  ASSERT_TRUE(hold.has_finished) << hold.status.error_message();
  bool held = false;
  for (int i = 0; i < 200 && !held; ++i) {
    held = RunExec(stub.get(), holder, {"/bin/cat", "/workspace/held"}).out.find("held=1") != std::string::npos;
    if (!held) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  ASSERT_TRUE(held) << RunExec(stub.get(), holder, {"/bin/cat", "/workspace/held"}).out;

  // Control: the holder's own session sees all of it.
  const std::string own = RunExec(stub.get(), holder, {"/adv/neighbour", "spy", marker}).out;
  EXPECT_EQ(AdvField(own, "marker_procs"), "1") << own;
  EXPECT_EQ(AdvField(own, "abstract"), "OK") << own;
  EXPECT_EQ(AdvField(own, "tmp"), "OK") << own;
  EXPECT_EQ(AdvField(own, "shm"), "OK") << own;
  EXPECT_EQ(AdvField(own, "sysv"), "OK") << own;

  // The neighbour sees none of it.
  const std::string seen = RunExec(stub.get(), other, {"/adv/neighbour", "spy", marker}).out;
  EXPECT_EQ(AdvField(seen, "marker_procs"), "0") << seen;
  EXPECT_EQ(AdvField(seen, "abstract"), "ECONNREFUSED") << seen;
  EXPECT_EQ(AdvField(seen, "tmp"), "ENOENT") << seen;
  EXPECT_EQ(AdvField(seen, "shm"), "ENOENT") << seen;
  EXPECT_EQ(AdvField(seen, "sysv"), "ENOENT") << seen;

  // Nor does the host's own abstract namespace have it: the jail's sockets live in the jail's netns.
  const std::string host = RunCapture({AdvProbe("neighbour"), "spy", marker}).out;
  EXPECT_EQ(AdvField(host, "abstract"), "ECONNREFUSED") << host;
  EXPECT_EQ(AdvField(host, "tmp"), "ENOENT") << host;

  std::error_code ec;
  std::filesystem::remove_all(policy_dir, ec);
}

}  // namespace
}  // namespace sbx::testing
