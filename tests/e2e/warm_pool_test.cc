// Warm pools of file sessions (issue 15; AgentConfig.warm_files) through the real daemon: a qualifying Create
// takes a pooled session (started before it, with the request's labels, out of the CPU background) and the
// pool refills; a request that does not keep the defaults starts cold; pooled sessions count against capacity
// but give their slots up; and the daemon's end leaves no process, cgroup or mount of any of them.
// (The browser pool's tests are browser_test's BrowserPoolTest; the fleet's, fleet_test's.)
#include <sys/types.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using std::chrono::seconds;

const char kWarmFiles[] = "sandbox_agent_warm_sessions{kind=\"file\"}";

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The ids of the sessions whose cgroups hold a child of `agent` (a jail's init), pooled ones included; other
// agents may be running tests too.
std::set<std::string> AgentSessionIds(pid_t agent) {
  std::set<std::string> out;
  for (const std::string& dir : SessionCgroups("")) {
    std::ifstream procs(dir + "/cgroup.procs");
    pid_t pid = 0;
    while (procs >> pid) {
      std::ifstream status("/proc/" + std::to_string(pid) + "/status");
      std::string line;
      pid_t parent = 0;
      while (std::getline(status, line)) {
        if (line.rfind("PPid:", 0) == 0) parent = static_cast<pid_t>(std::stol(line.substr(5)));
      }
      if (parent == agent) {
        const std::string name = std::filesystem::path(dir).filename().string();
        out.insert(name.substr(std::string("session-").size()));
        break;
      }
    }
  }
  return out;
}

// Whether session `id`'s cgroups put it in the CPU background (cpu.idle 1, or the least cpu.shares or
// cpu.weight); nullopt when it has no cgroup with a cpu controller.
std::optional<bool> CpuBackground(const std::string& id) {
  for (const std::string& dir : SessionCgroups(id)) {
    std::string value;
    if (std::ifstream idle(dir + "/cpu.idle"); idle >> value) return value == "1";
    if (std::ifstream shares(dir + "/cpu.shares"); shares >> value) return value == "2";
    if (std::ifstream weight(dir + "/cpu.weight"); weight >> value) return value == "1";
  }
  return std::nullopt;
}

// What session `id` left on the host: cgroups, processes in them, and mounts naming it.
std::string Leftovers(const std::string& id) {
  std::string out;
  for (const std::string& dir : SessionCgroups(id)) out += "cgroup " + dir + "\n";
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name[0] < '0' || name[0] > '9') continue;
    std::stringstream cgroup;
    cgroup << std::ifstream(e.path() / "cgroup").rdbuf();
    if (cgroup.str().find(id) != std::string::npos) out += "process " + name + "\n";
  }
  std::stringstream mounts;
  mounts << std::ifstream("/proc/self/mountinfo").rdbuf();
  if (mounts.str().find(id) != std::string::npos) out += "mount naming it\n";
  return out;
}

class FilePoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon tests build jails as root (CI runs as root); uid " << geteuid();
  }
  void Start(std::vector<std::string> config_lines) {
    daemon_ = std::make_unique<Daemon>(Daemon::Options{std::move(config_lines), {}});
    ASSERT_TRUE(daemon_->ok()) << "the daemon did not start:\n" << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    if (daemon_ && daemon_->ok()) {
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    }
  }
  grpc::Status Create(const pb::CreateRequest& req, pb::Session* session) {
    grpc::ClientContext ctx;
    return stub_->Create(&ctx, req, session);
  }
  pb::Session MustCreate(const pb::CreateRequest& req) {
    pb::Session session;
    const grpc::Status status = Create(req, &session);
    EXPECT_TRUE(status.ok()) << status.error_message() << "\n" << daemon_->Log();
    return session;
  }
  bool WaitForWarm(double n) const { return daemon_->WaitForMetric(kWarmFiles, n, seconds(30)); }

  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

TEST_F(FilePoolTest, ACreateTakesAPooledFileSessionAndThePoolRefills) {
  Start({"warm_files: 1", "max_sessions: 4"});
  ASSERT_TRUE(WaitForWarm(1)) << daemon_->Log();
  const std::set<std::string> pooled = AgentSessionIds(daemon_->pid());
  ASSERT_EQ(pooled.size(), 1u);
  if (std::optional<bool> background = CpuBackground(*pooled.begin())) {
    EXPECT_TRUE(*background);
  }
  pb::CreateRequest req;
  req.set_kind(pb::FILE);
  (*req.mutable_labels())["who"] = "test";
  const int64_t before_first = NowUnixMs();
  const pb::Session first = MustCreate(req);
  // It was started before this Create: the pooled one, with the request's labels, out of the CPU background.
  EXPECT_EQ(first.id(), *pooled.begin());
  EXPECT_LT(first.created_unix_ms(), before_first);
  EXPECT_EQ(first.labels().at("who"), "test");
  EXPECT_EQ(first.state(), pb::RUNNING);
  if (std::optional<bool> background = CpuBackground(first.id())) {
    EXPECT_FALSE(*background);
  }
  const CallResult echoed = RunExec(stub_.get(), first.id(), {"sh", "-c", "echo used > /workspace/mark; echo ok"});
  ASSERT_TRUE(echoed.has_finished);
  EXPECT_EQ(echoed.finished.result().exec().exit_code(), 0);
  EXPECT_EQ(echoed.out, "ok\n");
  // The pool refills with a fresh session, which a second Create takes; it never saw the first's files.
  ASSERT_TRUE(WaitForWarm(1)) << daemon_->Log();
  const int64_t before_second = NowUnixMs();
  const pb::Session second = MustCreate(req);
  EXPECT_NE(second.id(), first.id());
  EXPECT_LT(second.created_unix_ms(), before_second);
  EXPECT_GT(second.created_unix_ms(), before_first);
  const CallResult clean = RunExec(stub_.get(), second.id(), {"sh", "-c", "test -e /workspace/mark; echo $?"});
  EXPECT_EQ(clean.out, "1\n");
  // Taken sessions are the daemon's like any: listed, and ended by Delete.
  grpc::ClientContext lctx;
  pb::ListRequest list;
  (*list.mutable_label_selector())["who"] = "test";
  pb::ListResponse listed;
  ASSERT_TRUE(stub_->List(&lctx, list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 2);
}

TEST_F(FilePoolTest, ARequestThatDoesNotKeepTheDefaultsStartsCold) {
  Start({"warm_files: 1", "max_sessions: 4"});
  ASSERT_TRUE(WaitForWarm(1)) << daemon_->Log();
  const std::set<std::string> pooled = AgentSessionIds(daemon_->pid());
  ASSERT_EQ(pooled.size(), 1u);
  std::vector<pb::CreateRequest> requests(3);
  requests[0].mutable_policy()->mutable_limits()->set_pids_max(200);
  requests[1].set_ttl_ms(600000);
  requests[2].set_idle_timeout_ms(600000);
  for (const pb::CreateRequest& req : requests) {
    const int64_t before = NowUnixMs();
    const pb::Session cold = MustCreate(req);
    EXPECT_GE(cold.created_unix_ms(), before) << req.DebugString();
    EXPECT_EQ(pooled.count(cold.id()), 0u) << req.DebugString();
  }
  // The pooled session is still there, untaken.
  EXPECT_EQ(daemon_->Metric(kWarmFiles), 1);
  EXPECT_EQ(AgentSessionIds(daemon_->pid()).count(*pooled.begin()), 1u);
}

// Pooled sessions hold slots nobody asked for yet: at capacity, a cold session takes one's slot, and the
// pool does not refill past capacity.
TEST_F(FilePoolTest, PooledSessionsCountAgainstCapacityAndGiveUpTheirSlots) {
  Start({"warm_files: 2", "max_sessions: 2"});
  ASSERT_TRUE(WaitForWarm(2)) << daemon_->Log();
  pb::CreateRequest narrow;
  narrow.mutable_policy()->mutable_limits()->set_pids_max(200);
  const pb::Session cold = MustCreate(narrow);  // a pooled session gave up its slot
  EXPECT_EQ(daemon_->Metric(kWarmFiles), 1);
  const pb::Session warm = MustCreate(pb::CreateRequest());  // takes the other
  EXPECT_NE(warm.id(), cold.id());
  EXPECT_EQ(daemon_->Metric(kWarmFiles), 0);
  pb::Session refused;
  EXPECT_EQ(Create(pb::CreateRequest(), &refused).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(AgentSessionIds(daemon_->pid()).size(), 2u) << "only the two sessions hold the two slots";
  // A slot freed by Delete goes back to the pool.
  grpc::ClientContext dctx;
  pb::DeleteRequest del;
  del.set_session_id(cold.id());
  pb::DeleteResponse deleted;
  ASSERT_TRUE(stub_->Delete(&dctx, del, &deleted).ok());
  EXPECT_TRUE(WaitForWarm(1)) << daemon_->Log();
}

// The daemon's end (SIGTERM) ends pooled sessions as it ends taken ones: nothing of either is left.
TEST_F(FilePoolTest, TheDaemonsEndLeavesNothingOfThePoolBehind) {
  Start({"warm_files: 3", "max_sessions: 4"});
  ASSERT_TRUE(WaitForWarm(3)) << daemon_->Log();
  const pb::Session taken = MustCreate(pb::CreateRequest());
  ASSERT_TRUE(WaitForWarm(3)) << daemon_->Log();
  const std::set<std::string> ids = AgentSessionIds(daemon_->pid());
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids.count(taken.id()), 1u);
  const std::string ledger = daemon_->dir() + "/state/cgroups";
  EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
  for (const std::string& id : ids) EXPECT_EQ(Leftovers(id), "") << id;
  if (std::filesystem::exists(ledger)) {
    for (const auto& e : std::filesystem::directory_iterator(ledger)) {
      EXPECT_EQ(e.path().filename().string()[0], '.') << "the ledger still records " << e.path();
    }
  }
}

}  // namespace
}  // namespace sbx::testing
