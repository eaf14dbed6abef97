// Guarantee (issue 11 item 9): every string the API carries out of a jail is valid UTF-8, so a file the
// workload names with bytes that are not UTF-8 cannot make a listing unreadable or stop a resuming client at
// its seq; the name's raw bytes stay recoverable (FileInfo.name_bytes).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

// A daemon whose file policy also binds the probes' directory read-only at /probe.
class NamesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon builds jails as root (CI runs as root); uid " << geteuid();
    policy_dir_ = std::filesystem::temp_directory_path() / ("sbx-adv-names-" + std::to_string(getpid()));
    std::filesystem::create_directories(policy_dir_);
    std::ifstream in(std::string(SBX_POLICY_DIR) + "/file.textproto");
    std::stringstream policy;
    policy << in.rdbuf() << "\nmounts { bind { src: \"" << SBX_ADV_PROBE_DIR << "\" dst: \"/probe\" } }\n";
    std::ofstream(policy_dir_ + "/file.textproto") << policy.str();
    daemon_ = std::make_unique<Daemon>(Daemon::Options{{"policy_dir: \"" + policy_dir_ + "\""}, {}});
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    daemon_.reset();
    std::error_code ec;
    std::filesystem::remove_all(policy_dir_, ec);
  }

  std::string Create(const pb::Limits& limits = {}) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::FILE);
    *req.mutable_policy()->mutable_limits() = limits;
    pb::Session session;
    grpc::Status status = stub_->Create(&ctx, req, &session);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return session.id();
  }

  // The daemon's resident memory, from /proc/<pid>/status.
  uint64_t RssBytes() const {
    std::ifstream in("/proc/" + std::to_string(daemon_->pid()) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }

  std::string policy_dir_;
  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

TEST_F(NamesTest, ANameThatIsNotUtf8IsListedResumedPastAndRecoverable) {
  const std::string id = Create();
  CallResult made = RunExec(stub_.get(), id, {"/probe/hostile_names", "utf8"});
  ASSERT_TRUE(made.has_finished && made.finished.has_result()) << made.status.error_message() << made.err;

  pb::ToolCall call;
  call.mutable_list_files()->set_path(".");
  CallResult ls = RunCall(stub_.get(), id, call);
  ASSERT_TRUE(ls.status.ok()) << "the listing must parse: " << ls.status.error_message();
  ASSERT_TRUE(ls.has_finished && ls.finished.has_result()) << ls.finished.DebugString();
  bool found = false;
  for (const pb::FileInfo& e : ls.finished.result().listing().entries()) {
    if (e.name_bytes() == "bad\xff\xfename") {
      found = true;
      EXPECT_EQ(e.name(), "bad\xEF\xBF\xBD\xEF\xBF\xBDname");
    }
  }
  EXPECT_TRUE(found) << ls.finished.DebugString();

  // A client resuming from 0 reads every event, past the listing's seq, to the newest one.
  pb::Session s;
  {
    grpc::ClientContext ctx;
    pb::GetRequest req;
    req.set_session_id(id);
    ASSERT_TRUE(stub_->Get(&ctx, req, &s).ok());
  }
  grpc::ClientContext ctx;
  pb::EventsRequest req;
  req.set_session_id(id);
  auto reader = stub_->Events(&ctx, req);
  pb::Event e;
  uint64_t last = 0;
  while (reader->Read(&e)) last = e.seq();
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(last, s.last_seq()) << "a resuming client got stuck before the newest event";

  int rc = -1;
  const std::string out = RunCtl(*daemon_, {"ls", id}, &rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("bad\\xff\\xfename")) << "sandboxctl shows the raw bytes, escaped";
}

}  // namespace
}  // namespace sbx::testing
