// Guarantee: in a daemon session, only a signal from outside the jail (the agent) can make sandbox-init end
// the session. The workload runs as init's uid, so it may signal PID 1; it must not be able to make that
// signal look like the agent's (ssi_pid 0) and end the session or the other commands with it.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/adversarial/init_trust_util.h"
#include "tests/e2e/daemon_fixture.h"
#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;

class InitIgnoresForgedSignalsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root here (CI runs as root); this is uid " << geteuid();
    daemon_ = std::make_unique<Daemon>(Daemon::Options{});
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
    pb::Session session;
    const grpc::Status status = CreateSession(stub_.get(), pb::FILE, &session);
    ASSERT_TRUE(status.ok()) << status.error_message() << "\n" << daemon_->Log();
    id_ = session.id();
    const grpc::Status up = UploadProbe(stub_.get(), id_, "forge_init_signal", "/workspace/forge_init_signal");
    ASSERT_TRUE(up.ok()) << up.error_message();
  }

  // Runs the probe with `modes` while another command of the session is running, and checks that the
  // session, that command and later commands all survive it.
  void ForgeWhileACommandRuns(const std::vector<std::string>& modes) {
    // A concurrent command, started before the forgery and outliving it.
    auto concurrent = std::async(std::launch::async, [&] {
      return RunExec(stub_.get(), id_, {"sh", "-c", "touch /tmp/started; sleep 3; echo survived"});
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool started = false;
    while (!started && std::chrono::steady_clock::now() < deadline) {
      CallResult probe = RunExec(stub_.get(), id_, {"test", "-e", "/tmp/started"});
      started = probe.finished.has_result() && probe.finished.result().exec().exit_code() == 0;
      if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(started) << "the concurrent command never started";

    std::vector<std::string> argv = {"/workspace/forge_init_signal"};
    argv.insert(argv.end(), modes.begin(), modes.end());
    CallResult forged = RunExec(stub_.get(), id_, argv);
    for (const std::string& mode : modes) {
      // The attack was really made: the kernel delivered the forged signal to init.
      EXPECT_EQ(ProbeField(forged.out, mode), "sent") << forged.out << forged.err;
    }
    EXPECT_TRUE(forged.finished.has_result()) << forged.finished.DebugString();

    CallResult other = concurrent.get();
    ASSERT_TRUE(other.finished.has_result()) << other.finished.DebugString() << daemon_->Log();
    EXPECT_FALSE(other.finished.result().exec().has_signal())
        << "the concurrent command died of signal " << other.finished.result().exec().signal();
    EXPECT_EQ(other.finished.result().exec().exit_code(), 0);
    EXPECT_EQ(other.out, "survived\n");

    const pb::Session session = GetSession(stub_.get(), id_);
    EXPECT_EQ(session.state(), pb::RUNNING) << session.outcome().DebugString();
    CallResult after = RunExec(stub_.get(), id_, {"echo", "still here"});
    ASSERT_TRUE(after.finished.has_result()) << after.finished.DebugString();
    EXPECT_EQ(after.out, "still here\n");
  }

  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
  std::string id_;
};

// rt_sigqueueinfo(1, SIGTERM, {si_code = SI_QUEUE, si_pid = 0}): the sender picks si_pid.
TEST_F(InitIgnoresForgedSignalsTest, AQueuedSignalWithAForgedSenderDoesNotEndTheSession) {
  ForgeWhileACommandRuns({"queue"});
}

// F_SETOWN 1 + F_SETSIG SIGTERM: the kernel sends it, with si_code POLL_IN and no sender pid.
TEST_F(InitIgnoresForgedSignalsTest, ASigioSignalAimedAtInitDoesNotEndTheSession) {
  ForgeWhileACommandRuns({"sigio"});
}

// A real SIGTERM from outside the jail (kill(2) from the host, as the agent would send it) still ends the
// session: the check lets the real thing through.
TEST_F(InitIgnoresForgedSignalsTest, ASigtermFromOutsideTheJailStillEndsTheSession) {
  // init's host pid: the jail-uid process that is PID 1 of its namespace (NSpid "<host> 1").
  pid_t init = -1;
  for (pid_t pid : JailUidProcesses()) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line)) {
      if (line.rfind("NSpid:", 0) == 0 && line.size() > 2 && line.compare(line.size() - 2, 2, "\t1") == 0) init = pid;
    }
  }
  ASSERT_GT(init, 0) << "no sandbox-init among the jail's processes";
  ASSERT_EQ(kill(init, SIGTERM), 0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (GetSession(stub_.get(), id_).state() != pb::ENDED && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(GetSession(stub_.get(), id_).state(), pb::ENDED);
}

}  // namespace
}  // namespace sbx::testing
