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

#include "tests/adversarial/adversarial.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

using NamesTest = AdvFileDaemonTest;

TEST_F(NamesTest, ANameThatIsNotUtf8IsListedResumedPastAndRecoverable) {
  const std::string id = Create();
  CallResult made = RunExec(stub_.get(), id, {"/adv/hostile_names", "utf8"});
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
