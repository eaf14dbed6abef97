// Human approval gates against the real daemon: a gated Download, exec and write_file wait for
// RespondHumanRequest (or sandboxctl approve/reject) without holding up the session's other calls; a
// rejection, the deadline and the session's end each finish the action with their own reason; a repeated
// answer is one decision; a session-scoped approval lets the next one through unasked.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

class HumanApprovalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the daemon tests build jails as root (CI runs as root); uid " << geteuid();
    daemon_ = std::make_unique<Daemon>(Daemon::Options{{"max_sessions: 4"}, {}});
    ASSERT_TRUE(daemon_->ok()) << "the daemon did not start:\n" << daemon_->Log();
    stub_ = daemon_->NewStub();
  }
  void TearDown() override {
    if (daemon_ && daemon_->ok()) {
      EXPECT_TRUE(daemon_->Alive()) << "the daemon died during the test:\n" << daemon_->Log();
      EXPECT_EQ(daemon_->Stop(), 0) << daemon_->Log();
    }
  }

  grpc::Status TryCreate(const pb::ApprovalPolicy& approvals, pb::Session* session) {
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    *req.mutable_approvals() = approvals;
    return stub_->Create(&ctx, req, session);
  }
  std::string Create(const pb::ApprovalPolicy& approvals) {
    pb::Session session;
    grpc::Status status = TryCreate(approvals, &session);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return session.id();
  }

  pb::Session Get(const std::string& id) {
    grpc::ClientContext ctx;
    pb::GetRequest req;
    req.set_session_id(id);
    pb::Session session;
    EXPECT_TRUE(stub_->Get(&ctx, req, &session).ok());
    return session;
  }

  // Waits for the session's oldest open request (from Get's open_requests).
  pb::HumanRequest WaitOpen(const std::string& id, std::chrono::milliseconds limit = 20s) {
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      pb::Session s = Get(id);
      if (s.open_requests_size() > 0) return s.open_requests(0);
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "no open human request in session " << id;
    return {};
  }

  grpc::Status Respond(const std::string& session, const std::string& request, pb::HumanDecision::Decision decision,
                       pb::HumanDecision* out, pb::HumanDecision::Scope scope = pb::HumanDecision::REQUEST,
                       const std::string& note = "", const std::string& key = "") {
    grpc::ClientContext ctx;
    pb::RespondHumanRequestRequest req;
    req.set_session_id(session);
    req.set_request_id(request);
    req.set_decision(decision);
    req.set_scope(scope);
    req.set_note(note);
    req.set_idempotency_key(key);
    return stub_->RespondHumanRequest(&ctx, req, out);
  }

  // Every event of the session so far.
  std::vector<pb::Event> Events(const std::string& id) {
    grpc::ClientContext ctx;
    pb::EventsRequest req;
    req.set_session_id(id);
    auto reader = stub_->Events(&ctx, req);
    std::vector<pb::Event> out;
    pb::Event e;
    while (reader->Read(&e)) out.push_back(e);
    EXPECT_TRUE(reader->Finish().ok());
    return out;
  }
  int CountDecisions(const std::string& session, const std::string& request) {
    int n = 0;
    for (const pb::Event& e : Events(session)) {
      if (e.has_human_decision() && e.human_decision().request_id() == request) ++n;
    }
    return n;
  }
  int CountRequests(const std::string& session) {
    int n = 0;
    for (const pb::Event& e : Events(session)) n += e.has_human_request() ? 1 : 0;
    return n;
  }

  void WriteFile(const std::string& session, const std::string& path, const std::string& data) {
    pb::ToolCall call;
    call.mutable_write_file()->set_path(path);
    call.mutable_write_file()->set_data(data);
    CallResult r = RunCall(stub_.get(), session, call);
    ASSERT_TRUE(r.has_finished);
    ASSERT_FALSE(r.finished.has_error()) << r.finished.error().message();
  }

  // A Download on its own thread: its status, its bytes, and whether any chunk arrived yet.
  struct Download {
    std::atomic<bool> got_chunk{false};
    std::atomic<bool> done{false};
    grpc::Status status;
    std::string data;
    std::thread thread;
    ~Download() {
      if (thread.joinable()) thread.join();
    }
  };
  std::unique_ptr<Download> StartDownload(const std::string& session, const std::string& path) {
    auto d = std::make_unique<Download>();
    Download* raw = d.get();
    raw->thread = std::thread([this, raw, session, path] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 60s);
      pb::DownloadRequest req;
      req.set_session_id(session);
      req.set_path(path);
      auto reader = stub_->Download(&ctx, req);
      pb::DownloadChunk c;
      while (reader->Read(&c)) {
        raw->got_chunk = true;
        raw->data += c.data();
      }
      raw->status = reader->Finish();
      raw->done = true;
    });
    return d;
  }

  std::unique_ptr<Daemon> daemon_;
  std::unique_ptr<pb::Sandboxes::StubInterface> stub_;
};

pb::ApprovalPolicy Gates(std::vector<std::string> kinds, uint64_t timeout_ms = 60000) {
  pb::ApprovalPolicy a;
  for (const std::string& k : kinds) a.add_require_approval(k);
  a.set_timeout_ms(timeout_ms);
  return a;
}

TEST_F(HumanApprovalTest, DownloadWaitsUntilApproved) {
  const std::string s = Create(Gates({"download"}));
  WriteFile(s, "/workspace/report.txt", "quarterly numbers\n");
  auto download = StartDownload(s, "/workspace/report.txt");
  pb::HumanRequest r = WaitOpen(s);
  EXPECT_EQ(r.kind(), pb::HumanRequest::TOOL_CALL);
  EXPECT_EQ(r.action(), "download");
  EXPECT_EQ(r.rule(), "require_approval: download");
  EXPECT_THAT(r.question(), HasSubstr("/workspace/report.txt"));
  EXPECT_THAT(r.question(), ::testing::Not(HasSubstr("quarterly")));  // never the file's contents
  EXPECT_GT(r.deadline_unix_ms(), 0);
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(download->got_chunk) << "a chunk arrived before the download was approved";
  EXPECT_FALSE(download->done);

  pb::HumanDecision d;
  grpc::Status st = Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &d);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(d.decision(), pb::HumanDecision::APPROVE);
  EXPECT_EQ(d.by(), "local");
  download->thread.join();
  ASSERT_TRUE(download->status.ok()) << download->status.error_message();
  EXPECT_EQ(download->data, "quarterly numbers\n");
  EXPECT_EQ(Get(s).open_requests_size(), 0);
  EXPECT_EQ(CountDecisions(s, r.request_id()), 1);
}

TEST_F(HumanApprovalTest, RejectedDownloadIsPermissionDenied) {
  const std::string s = Create(Gates({"download"}));
  WriteFile(s, "/workspace/f", "x");
  auto download = StartDownload(s, "/workspace/f");
  pb::HumanRequest r = WaitOpen(s);
  pb::HumanDecision d;
  ASSERT_TRUE(Respond(s, r.request_id(), pb::HumanDecision::REJECT, &d, pb::HumanDecision::REQUEST, "not today").ok());
  download->thread.join();
  EXPECT_EQ(download->status.error_code(), grpc::PERMISSION_DENIED);
  EXPECT_THAT(download->status.error_message(), HasSubstr("rejected by local: not today"));
  EXPECT_FALSE(download->got_chunk);
}

TEST_F(HumanApprovalTest, TheDeadlineRejectsAndALateApprovalIsRefused) {
  const std::string s = Create(Gates({"download"}, 1000));
  WriteFile(s, "/workspace/f", "x");
  const auto start = Clock::now();
  auto download = StartDownload(s, "/workspace/f");
  download->thread.join();
  EXPECT_GE(Clock::now() - start, 900ms);
  // The request, from the log (it may open and expire between two looks at Get's open_requests).
  pb::HumanRequest r;
  for (const pb::Event& e : Events(s)) {
    if (e.has_human_request()) r = e.human_request();
  }
  ASSERT_FALSE(r.request_id().empty());
  EXPECT_EQ(download->status.error_code(), grpc::PERMISSION_DENIED);
  EXPECT_THAT(download->status.error_message(), HasSubstr("approval expired"));
  pb::HumanDecision d;
  grpc::Status late = Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &d);
  EXPECT_EQ(late.error_code(), grpc::FAILED_PRECONDITION);
  EXPECT_THAT(late.error_message(), HasSubstr("expired"));
  EXPECT_EQ(CountDecisions(s, r.request_id()), 1);
}

TEST_F(HumanApprovalTest, TheSameAnswerTwiceIsOneDecisionAndErrorsNameTheProblem) {
  const std::string s = Create(Gates({"download"}));
  WriteFile(s, "/workspace/f", "x");
  auto download = StartDownload(s, "/workspace/f");
  pb::HumanRequest r = WaitOpen(s);
  pb::HumanDecision d;
  grpc::Status unknown = Respond(s, "hr-999", pb::HumanDecision::APPROVE, &d);
  EXPECT_EQ(unknown.error_code(), grpc::NOT_FOUND);
  grpc::Status no_session = Respond("s-nope", r.request_id(), pb::HumanDecision::APPROVE, &d);
  EXPECT_EQ(no_session.error_code(), grpc::NOT_FOUND);
  grpc::Status no_decision = Respond(s, r.request_id(), pb::HumanDecision::DECISION_UNSPECIFIED, &d);
  EXPECT_EQ(no_decision.error_code(), grpc::INVALID_ARGUMENT);
  grpc::Status answer = Respond(s, r.request_id(), pb::HumanDecision::ANSWER, &d);
  EXPECT_EQ(answer.error_code(), grpc::INVALID_ARGUMENT);

  pb::HumanDecision first, again;
  ASSERT_TRUE(Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &first, pb::HumanDecision::REQUEST, "ok", "k-1").ok());
  grpc::Status repeat = Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &again, pb::HumanDecision::REQUEST, "ok", "k-1");
  ASSERT_TRUE(repeat.ok()) << repeat.error_message();
  EXPECT_EQ(again.SerializeAsString(), first.SerializeAsString());
  grpc::Status other = Respond(s, r.request_id(), pb::HumanDecision::REJECT, &d, pb::HumanDecision::REQUEST, "", "k-2");
  EXPECT_EQ(other.error_code(), grpc::FAILED_PRECONDITION);
  EXPECT_THAT(other.error_message(), HasSubstr("already decided: APPROVE by local"));
  download->thread.join();
  EXPECT_TRUE(download->status.ok());
  EXPECT_EQ(CountDecisions(s, r.request_id()), 1);
}

TEST_F(HumanApprovalTest, ASessionScopedApprovalLetsTheNextOneThroughUnasked) {
  const std::string s = Create(Gates({"download"}));
  WriteFile(s, "/workspace/f", "x");
  auto first = StartDownload(s, "/workspace/f");
  pb::HumanRequest r = WaitOpen(s);
  pb::HumanDecision d;
  ASSERT_TRUE(Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &d, pb::HumanDecision::SESSION).ok());
  first->thread.join();
  ASSERT_TRUE(first->status.ok());
  auto second = StartDownload(s, "/workspace/f");
  second->thread.join();
  ASSERT_TRUE(second->status.ok()) << second->status.error_message();
  EXPECT_EQ(CountRequests(s), 1) << "the second download was asked again";
  // Its decision is still in the log, naming the request that decided it.
  EXPECT_EQ(CountDecisions(s, r.request_id()), 2);
}

TEST_F(HumanApprovalTest, AnExecRuleGatesAMatchingExecWhileAnotherExecRuns) {
  pb::ApprovalPolicy gates;
  gates.add_exec()->set_argv_regex("^sh -c echo gated");
  gates.add_secret_patterns("hunter[0-9]+");
  const std::string s = Create(gates);
  // An ungated exec that outlives the moment the gated one starts asking.
  CallResult other;
  std::thread other_thread([&] { other = RunExec(stub_.get(), s, {"sh", "-c", "sleep 1; echo other done"}); });
  CallResult gated;
  std::thread gated_thread([&] { gated = RunExec(stub_.get(), s, {"sh", "-c", "echo gated hunter2"}); });
  pb::HumanRequest r = WaitOpen(s);
  EXPECT_EQ(r.kind(), pb::HumanRequest::EXEC);
  EXPECT_EQ(r.rule(), "exec.argv_regex: ^sh -c echo gated");
  EXPECT_EQ(r.question(), "exec: sh -c echo gated [redacted]");
  EXPECT_FALSE(r.call_id().empty());
  // The other exec runs and finishes while the gated one waits.
  other_thread.join();
  ASSERT_TRUE(other.has_finished);
  EXPECT_EQ(other.out, "other done\n");
  EXPECT_EQ(Get(s).open_requests_size(), 1);
  pb::HumanDecision d;
  ASSERT_TRUE(Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &d).ok());
  gated_thread.join();
  ASSERT_TRUE(gated.has_finished);
  EXPECT_FALSE(gated.finished.has_error()) << gated.finished.error().message();
  EXPECT_EQ(gated.out, "gated hunter2\n");
  // The call's own stream showed the request and its decision, between started and finished.
  std::vector<pb::Event::KindCase> kinds;
  for (const pb::Event& e : gated.events) {
    if (!e.has_output()) kinds.push_back(e.kind_case());
  }
  EXPECT_THAT(kinds, ::testing::ElementsAre(pb::Event::kToolCallStarted, pb::Event::kHumanRequest,
                                            pb::Event::kHumanDecision, pb::Event::kToolCallFinished));
  // An exec the rule does not match is not asked.
  CallResult plain = RunExec(stub_.get(), s, {"sh", "-c", "echo plain"});
  EXPECT_EQ(plain.out, "plain\n");
  EXPECT_EQ(CountRequests(s), 1);
}

TEST_F(HumanApprovalTest, ARejectedWriteFileIsPermissionDeniedAndWritesNothing) {
  const std::string s = Create(Gates({"write_file"}));
  CallResult write;
  std::thread t([&] {
    pb::ToolCall call;
    call.mutable_write_file()->set_path("/workspace/secret.txt");
    call.mutable_write_file()->set_data("the data");
    write = RunCall(stub_.get(), s, call);
  });
  pb::HumanRequest r = WaitOpen(s);
  EXPECT_EQ(r.question(), "write_file: /workspace/secret.txt (8 bytes)");
  int rc = -1;
  RunCtl(*daemon_, {"reject", s, r.request_id(), "--note", "no writes"}, &rc);
  EXPECT_EQ(rc, 0);
  t.join();
  ASSERT_TRUE(write.has_finished);
  EXPECT_EQ(write.finished.error().code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(write.finished.error().message(), "rejected by local: no writes");
  CallResult cat = RunExec(stub_.get(), s, {"sh", "-c", "test -e /workspace/secret.txt && echo exists || echo absent"});
  EXPECT_EQ(cat.out, "absent\n");
}

TEST_F(HumanApprovalTest, SandboxctlApprovesForTheSession) {
  const std::string s = Create(Gates({"exec"}));
  CallResult first;
  std::thread t([&] { first = RunExec(stub_.get(), s, {"echo", "one"}); });
  pb::HumanRequest r = WaitOpen(s);
  int rc = -1;
  const std::string out = RunCtl(*daemon_, {"approve", s, r.request_id(), "--for-session"}, &rc);
  EXPECT_EQ(rc, 0) << out;
  t.join();
  EXPECT_EQ(first.out, "one\n");
  CallResult second = RunExec(stub_.get(), s, {"echo", "two"});
  EXPECT_EQ(second.out, "two\n");
  EXPECT_EQ(CountRequests(s), 1);
  // An unknown request: sandboxctl fails, naming it.
  RunCtl(*daemon_, {"approve", s, "hr-77"}, &rc);
  EXPECT_NE(rc, 0);
}

TEST_F(HumanApprovalTest, CancelingTheSessionClosesTheOpenRequest) {
  const std::string s = Create(Gates({"exec"}));
  CallResult gated;
  std::thread t([&] { gated = RunExec(stub_.get(), s, {"echo", "never"}); });
  pb::HumanRequest r = WaitOpen(s);
  {
    grpc::ClientContext ctx;
    pb::CancelRequest req;
    req.set_session_id(s);
    pb::Session out;
    ASSERT_TRUE(stub_->Cancel(&ctx, req, &out).ok());
  }
  t.join();
  ASSERT_TRUE(gated.has_finished);
  EXPECT_EQ(gated.finished.error().code(), grpc::CANCELLED);
  EXPECT_THAT(gated.finished.error().message(), HasSubstr("session ended"));
  EXPECT_EQ(gated.out, "");
  bool canceled = false;
  for (const pb::Event& e : Events(s)) {
    if (e.has_human_decision() && e.human_decision().request_id() == r.request_id()) {
      canceled = e.human_decision().decision() == pb::HumanDecision::CANCELED;
    }
  }
  EXPECT_TRUE(canceled);
  pb::HumanDecision d;
  EXPECT_EQ(Respond(s, r.request_id(), pb::HumanDecision::APPROVE, &d).error_code(), grpc::FAILED_PRECONDITION);
}

TEST_F(HumanApprovalTest, BadGatesAreRefusedNamingTheField) {
  pb::Session out;
  grpc::Status unknown = TryCreate(Gates({"download", "teleport"}), &out);
  EXPECT_EQ(unknown.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(unknown.error_message(), HasSubstr("approvals.require_approval[1]"));
  pb::ApprovalPolicy bad_regex;
  bad_regex.add_exec()->set_argv_regex("(unclosed");
  grpc::Status regex = TryCreate(bad_regex, &out);
  EXPECT_EQ(regex.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(regex.error_message(), HasSubstr("approvals.exec[0].argv_regex"));
  grpc::Status timeout = TryCreate(Gates({"download"}, 5), &out);
  EXPECT_EQ(timeout.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_THAT(timeout.error_message(), HasSubstr("approvals.timeout_ms"));
}

}  // namespace
}  // namespace sbx::testing
