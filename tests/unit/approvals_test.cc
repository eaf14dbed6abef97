// Approvals: the per-session gate registry (agent/session/approvals.h) against a real EventLog: request ids, the
// deadline timer, Respond's errors and idempotency, session-scoped decisions, CloseAll, and a deadline racing
// a response deciding exactly once.
#include "agent/session/approvals.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "agent/session/event_log.h"
#include "gtest/gtest.h"
#include "tests/unit/status_matchers.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::sbx::testing::IsOk;
using ::sbx::testing::StatusIs;
using namespace std::chrono_literals;

// Records the decisions `done` got, and waits for them.
class Decisions {
 public:
  Approvals::Done Sink() {
    return [this](const pb::HumanDecision& d) {
      std::lock_guard lock(mu_);
      got_.push_back(d);
      cv_.notify_all();
    };
  }
  bool WaitFor(size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return got_.size() >= n; });
  }
  std::vector<pb::HumanDecision> got() {
    std::lock_guard lock(mu_);
    return got_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<pb::HumanDecision> got_;
};

std::vector<pb::Event> AllEvents(EventLog& log) {
  std::vector<EventLog::EventPtr> ptrs;
  log.Read(0, 100000, std::chrono::steady_clock::now(), [] { return false; }, &ptrs);
  std::vector<pb::Event> out;
  for (const auto& p : ptrs) out.push_back(*p);
  return out;
}

int CountDecisions(EventLog& log, const std::string& request_id) {
  int n = 0;
  for (const pb::Event& e : AllEvents(log)) {
    if (e.has_human_decision() && e.human_decision().request_id() == request_id) ++n;
  }
  return n;
}

Approvals::Options Opts(EventLog* log, std::chrono::milliseconds timeout, size_t max_open = 256) {
  Approvals::Options o;
  o.events = log;
  o.timeout = timeout;
  o.max_open = max_open;
  return o;
}

GateAsk ToolAsk(const std::string& call_id, const std::string& action) {
  GateAsk ask;
  ask.kind = pb::HumanRequest::TOOL_CALL;
  ask.call_id = call_id;
  ask.rule = "require_approval: " + action;
  ask.action = action;
  ask.question = "may it " + action + "?";
  return ask;
}

TEST(ApprovalsTest, RaisesRequestsWithSequentialIdsAndDeadlines) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const auto before = std::chrono::system_clock::now();
  EXPECT_EQ(approvals.Ask(ToolAsk("c1", "download"), decisions.Sink()), "hr-1");
  EXPECT_EQ(approvals.Ask(ToolAsk("c2", "upload"), decisions.Sink()), "hr-2");
  std::vector<pb::HumanRequest> open = approvals.Open();
  ASSERT_EQ(open.size(), 2u);
  EXPECT_EQ(open[0].request_id(), "hr-1");
  EXPECT_EQ(open[0].call_id(), "c1");
  EXPECT_EQ(open[0].action(), "download");
  EXPECT_EQ(open[0].kind(), pb::HumanRequest::TOOL_CALL);
  const int64_t before_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(before.time_since_epoch()).count();
  EXPECT_GE(open[0].deadline_unix_ms(), before_ms + 60000);
  EXPECT_LT(open[0].deadline_unix_ms(), before_ms + 70000);
  std::vector<pb::Event> events = AllEvents(log);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].human_request().request_id(), "hr-1");
  EXPECT_EQ(events[1].human_request().request_id(), "hr-2");
  EXPECT_TRUE(decisions.got().empty());
}

TEST(ApprovalsTest, ApproveDecidesOnceAndIsAnEvent) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  absl::StatusOr<pb::HumanDecision> d =
      approvals.Respond(id, pb::HumanDecision::APPROVE, pb::HumanDecision::SCOPE_UNSPECIFIED, "ok", "", "k1", "local");
  ASSERT_TRUE(IsOk(d));
  EXPECT_EQ(d->decision(), pb::HumanDecision::APPROVE);
  EXPECT_EQ(d->scope(), pb::HumanDecision::REQUEST);
  EXPECT_EQ(d->by(), "local");
  EXPECT_EQ(d->call_id(), "c1");
  ASSERT_TRUE(decisions.WaitFor(1));
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::APPROVE);
  EXPECT_TRUE(approvals.Open().empty());
  EXPECT_EQ(CountDecisions(log, id), 1);
}

TEST(ApprovalsTest, RespondErrors) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  EXPECT_TRUE(StatusIs(approvals.Respond("hr-99", pb::HumanDecision::APPROVE, {}, "", "", "", "local"),
                       absl::StatusCode::kNotFound, "hr-99"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::DECISION_UNSPECIFIED, {}, "", "", "", "local"),
                       absl::StatusCode::kInvalidArgument, "decision"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::EXPIRED, {}, "", "", "", "local"),
                       absl::StatusCode::kInvalidArgument, "decision"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::ANSWER, {}, "", "", "", "local"),
                       absl::StatusCode::kInvalidArgument, "text"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::ANSWER, {}, "", "yes", "", "local"),
                       absl::StatusCode::kInvalidArgument, "asks no question"));
  EXPECT_EQ(approvals.Open().size(), 1u);  // none of those decided it
  ASSERT_TRUE(IsOk(approvals.Respond(id, pb::HumanDecision::REJECT, {}, "no", "", "key-a", "local")));
  // Decided: another answer, the same answer without a key, or with another key, names the state.
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::APPROVE, {}, "", "", "key-b", "local"),
                       absl::StatusCode::kFailedPrecondition, "already decided: REJECT by local"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::REJECT, {}, "no", "", "", "local"),
                       absl::StatusCode::kFailedPrecondition, "REJECT"));
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::REJECT, {}, "no", "", "key-b", "local"),
                       absl::StatusCode::kFailedPrecondition, "REJECT"));
  EXPECT_EQ(CountDecisions(log, id), 1);
}

TEST(ApprovalsTest, TheSameAnswerWithTheSameKeyIsANoOp) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  absl::StatusOr<pb::HumanDecision> first =
      approvals.Respond(id, pb::HumanDecision::APPROVE, pb::HumanDecision::REQUEST, "fine", "", "cmd-7", "control_plane");
  ASSERT_TRUE(IsOk(first));
  absl::StatusOr<pb::HumanDecision> again =
      approvals.Respond(id, pb::HumanDecision::APPROVE, pb::HumanDecision::REQUEST, "fine", "", "cmd-7", "control_plane");
  ASSERT_TRUE(IsOk(again));
  EXPECT_EQ(again->SerializeAsString(), first->SerializeAsString());
  ASSERT_TRUE(decisions.WaitFor(1));
  std::this_thread::sleep_for(50ms);  // a second delivery would be synchronous; this only makes it visible
  EXPECT_EQ(decisions.got().size(), 1u);
  EXPECT_EQ(CountDecisions(log, id), 1);
  // The same key with a different answer is not a repeat.
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::REJECT, {}, "fine", "", "cmd-7", "control_plane"),
                       absl::StatusCode::kFailedPrecondition, "APPROVE"));
}

TEST(ApprovalsTest, AnswerCarriesText) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  GateAsk ask = ToolAsk("c1", "question");
  ask.wants_answer = true;
  const std::string id = approvals.Ask(ask, decisions.Sink());
  ASSERT_TRUE(IsOk(approvals.Respond(id, pb::HumanDecision::ANSWER, {}, "", "blue", "", "local")));
  ASSERT_TRUE(decisions.WaitFor(1));
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::ANSWER);
  EXPECT_EQ(decisions.got()[0].text(), "blue");
}

TEST(ApprovalsTest, TheDeadlineExpiresARequest) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 200ms));
  const auto start = std::chrono::steady_clock::now();
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  ASSERT_TRUE(decisions.WaitFor(1, 5s));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 200ms);
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::EXPIRED);
  EXPECT_EQ(decisions.got()[0].by(), "agent");
  EXPECT_TRUE(approvals.Open().empty());
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::APPROVE, {}, "", "", "", "local"),
                       absl::StatusCode::kFailedPrecondition, "expired"));
  EXPECT_EQ(CountDecisions(log, id), 1);
}

TEST(ApprovalsTest, TheTimerWakesForAnEarlierDeadlineAndKeepsLaterOnesOpen) {
  // The timer sleeps until the nearest deadline; requests asked later expire in their own time, and one
  // answered before its deadline is not expired afterwards.
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 1000ms));
  const std::string a = approvals.Ask(ToolAsk("c1", "x"), decisions.Sink());
  std::this_thread::sleep_for(500ms);
  const std::string b = approvals.Ask(ToolAsk("c2", "y"), decisions.Sink());
  ASSERT_TRUE(decisions.WaitFor(1, 5s));
  EXPECT_EQ(decisions.got()[0].request_id(), a);
  ASSERT_TRUE(IsOk(approvals.Respond(b, pb::HumanDecision::APPROVE, {}, "", "", "", "local")));
  ASSERT_TRUE(decisions.WaitFor(2));
  std::this_thread::sleep_for(700ms);  // past b's deadline: it stays approved
  ASSERT_EQ(decisions.got().size(), 2u);
  EXPECT_EQ(decisions.got()[1].decision(), pb::HumanDecision::APPROVE);
  EXPECT_EQ(CountDecisions(log, b), 1);
}

TEST(ApprovalsTest, SessionScopeDecidesLaterAsksOfTheSameAction) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string first = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  const std::string open_too = approvals.Ask(ToolAsk("c2", "download"), decisions.Sink());
  const std::string other = approvals.Ask(ToolAsk("c3", "upload"), decisions.Sink());
  ASSERT_TRUE(IsOk(approvals.Respond(first, pb::HumanDecision::APPROVE, pb::HumanDecision::SESSION, "", "", "",
                                     "local")));
  // The other open request of the same action is covered; the upload is not.
  ASSERT_TRUE(decisions.WaitFor(2));
  EXPECT_EQ(decisions.got()[1].request_id(), open_too);
  EXPECT_EQ(decisions.got()[1].decision(), pb::HumanDecision::APPROVE);
  ASSERT_EQ(approvals.Open().size(), 1u);
  EXPECT_EQ(approvals.Open()[0].request_id(), other);
  // A later ask is decided before Ask returns, with no new request, naming the request that decided it.
  const uint64_t last_before = log.last_seq();
  const std::string later = approvals.Ask(ToolAsk("c4", "download"), decisions.Sink());
  EXPECT_EQ(later, first);
  ASSERT_EQ(decisions.got().size(), 3u);
  EXPECT_EQ(decisions.got()[2].decision(), pb::HumanDecision::APPROVE);
  EXPECT_EQ(decisions.got()[2].scope(), pb::HumanDecision::SESSION);
  EXPECT_EQ(decisions.got()[2].call_id(), "c4");
  std::vector<pb::Event> events = AllEvents(log);
  ASSERT_EQ(events.size(), last_before + 1);
  EXPECT_TRUE(events.back().has_human_decision());
  EXPECT_EQ(events.back().human_decision().call_id(), "c4");
  // A session-scoped rejection rejects later asks the same way.
  ASSERT_TRUE(IsOk(approvals.Respond(other, pb::HumanDecision::REJECT, pb::HumanDecision::SESSION, "never", "", "",
                                     "local")));
  approvals.Ask(ToolAsk("c5", "upload"), decisions.Sink());
  ASSERT_EQ(decisions.got().size(), 5u);
  EXPECT_EQ(decisions.got()[4].decision(), pb::HumanDecision::REJECT);
  EXPECT_EQ(decisions.got()[4].note(), "never");
}

TEST(ApprovalsTest, CloseAllCancelsOpenRequestsAndLaterAsks) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  approvals.CloseAll("session ended: canceled");
  ASSERT_TRUE(decisions.WaitFor(1));
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::CANCELED);
  EXPECT_EQ(decisions.got()[0].note(), "session ended: canceled");
  EXPECT_TRUE(StatusIs(approvals.Respond(id, pb::HumanDecision::APPROVE, {}, "", "", "", "local"),
                       absl::StatusCode::kFailedPrecondition, "canceled"));
  approvals.Ask(ToolAsk("c2", "download"), decisions.Sink());
  ASSERT_EQ(decisions.got().size(), 2u);
  EXPECT_EQ(decisions.got()[1].decision(), pb::HumanDecision::CANCELED);
  EXPECT_TRUE(approvals.Open().empty());
  EXPECT_EQ(CountDecisions(log, id), 1);
}

TEST(ApprovalsTest, CancelClosesOneRequest) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  const std::string a = approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  approvals.Ask(ToolAsk("c2", "download"), decisions.Sink());
  approvals.Cancel(a, "the client went away");
  ASSERT_TRUE(decisions.WaitFor(1));
  EXPECT_EQ(decisions.got()[0].request_id(), a);
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::CANCELED);
  EXPECT_EQ(approvals.Open().size(), 1u);
}

TEST(ApprovalsTest, TheDestructorCancelsWhatIsOpen) {
  EventLog log("s1");
  Decisions decisions;
  {
    Approvals approvals(Opts(&log, 60s));
    approvals.Ask(ToolAsk("c1", "download"), decisions.Sink());
  }
  ASSERT_EQ(decisions.got().size(), 1u);
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::CANCELED);
}

TEST(ApprovalsTest, TooManyOpenRequestsAreRejectedAtOnce) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s, 2));
  approvals.Ask(ToolAsk("c1", "a"), decisions.Sink());
  approvals.Ask(ToolAsk("c2", "b"), decisions.Sink());
  approvals.Ask(ToolAsk("c3", "c"), decisions.Sink());
  ASSERT_EQ(decisions.got().size(), 1u);
  EXPECT_EQ(decisions.got()[0].decision(), pb::HumanDecision::REJECT);
  EXPECT_NE(decisions.got()[0].note().find("too many"), std::string::npos);
  EXPECT_EQ(approvals.Open().size(), 2u);
}

TEST(ApprovalsTest, AskAndWaitReturnsTheDecision) {
  EventLog log("s1");
  Approvals approvals(Opts(&log, 60s));
  std::thread answerer([&] {
    while (approvals.Open().empty()) std::this_thread::sleep_for(1ms);
    (void)approvals.Respond(approvals.Open()[0].request_id(), pb::HumanDecision::REJECT, {}, "nope", "", "", "local");
  });
  pb::HumanDecision d = approvals.AskAndWait(ToolAsk("c1", "download"));
  answerer.join();
  EXPECT_EQ(d.decision(), pb::HumanDecision::REJECT);
  EXPECT_EQ(d.note(), "nope");
}

TEST(ApprovalsTest, ADeadlineRacingAResponseDecidesExactlyOnce) {
  // Responses land around the deadline: whichever wins, `done` runs once and the log holds one decision.
  for (int round = 0; round < 40; ++round) {
    EventLog log("s1");
    Approvals approvals(Opts(&log, 20ms));
    std::atomic<int> calls{0};
    std::atomic<int> outcome{0};
    const std::string id = approvals.Ask(ToolAsk("c1", "download"), [&](const pb::HumanDecision& d) {
      calls++;
      outcome = d.decision();
    });
    std::this_thread::sleep_for(std::chrono::microseconds(19000 + 100 * round));
    absl::StatusOr<pb::HumanDecision> r =
        approvals.Respond(id, pb::HumanDecision::APPROVE, {}, "", "", "k", "local");
    for (int i = 0; i < 1000 && calls == 0; ++i) std::this_thread::sleep_for(1ms);
    EXPECT_EQ(calls.load(), 1) << "round " << round;
    EXPECT_EQ(CountDecisions(log, id), 1) << "round " << round;
    if (r.ok()) {
      EXPECT_EQ(outcome.load(), pb::HumanDecision::APPROVE);
    } else {
      EXPECT_TRUE(StatusIs(r, absl::StatusCode::kFailedPrecondition, "expired"));
      EXPECT_EQ(outcome.load(), pb::HumanDecision::EXPIRED);
    }
  }
}

TEST(ApprovalsTest, TheObserverSeesEachEventWithItsSeqBeforeDone) {
  EventLog log("s1");
  Decisions decisions;
  Approvals approvals(Opts(&log, 60s));
  std::vector<pb::Event> seen;
  approvals.SetObserver([&](const pb::Event& e) { seen.push_back(e); });
  const std::string id = approvals.Ask(ToolAsk("c1", "download"), [&](const pb::HumanDecision&) {
    EXPECT_EQ(seen.size(), 2u) << "done ran before the decision was observed";
  });
  ASSERT_TRUE(IsOk(approvals.Respond(id, pb::HumanDecision::APPROVE, {}, "", "", "", "local")));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].seq(), 1u);
  EXPECT_TRUE(seen[0].has_human_request());
  EXPECT_EQ(seen[1].seq(), 2u);
  EXPECT_EQ(seen[1].human_decision().decision(), pb::HumanDecision::APPROVE);
}

// --- ApprovalGates: which calls ask, and what the question shows ----------------------------------------

sandbox::ApprovalSpec Spec(std::vector<std::string> kinds, std::vector<std::string> exec = {},
                           std::vector<std::string> secrets = {}) {
  sandbox::ApprovalSpec spec;
  spec.require_approval = std::move(kinds);
  spec.exec_regex = std::move(exec);
  spec.secret_patterns = std::move(secrets);
  return spec;
}

pb::ToolCall ExecCall(std::vector<std::string> argv) {
  pb::ToolCall call;
  for (const std::string& a : argv) call.mutable_exec()->add_argv(a);
  return call;
}

TEST(ApprovalGatesTest, OriginOf) {
  EXPECT_EQ(OriginOf("https://Example.COM/path?q#f"), "https://example.com:443");
  EXPECT_EQ(OriginOf("http://example.com:8080/"), "http://example.com:8080");
  EXPECT_EQ(OriginOf("HTTP://user:pw@example.com"), "http://example.com:80");
  EXPECT_EQ(OriginOf("http://[::1]:3000/x"), "http://[::1]:3000");
  EXPECT_EQ(OriginOf("about:blank"), "about:");
  EXPECT_EQ(OriginOf("nonsense"), "");
}

TEST(ApprovalGatesTest, ExecRulesComeBeforeEveryExecAndNameTheirRule) {
  ApprovalGates gates(Spec({"exec"}, {"^rm -rf "}));
  std::optional<GateAsk> rule = gates.ForCall("c1", ExecCall({"rm", "-rf", "/workspace"}), nullptr);
  ASSERT_TRUE(rule.has_value());
  EXPECT_EQ(rule->kind, pb::HumanRequest::EXEC);
  EXPECT_EQ(rule->rule, "exec.argv_regex: ^rm -rf ");
  EXPECT_EQ(rule->action, "exec:^rm -rf ");
  EXPECT_EQ(rule->call_id, "c1");
  std::optional<GateAsk> any = gates.ForCall("c2", ExecCall({"ls"}), nullptr);
  ASSERT_TRUE(any.has_value());
  EXPECT_EQ(any->kind, pb::HumanRequest::TOOL_CALL);
  EXPECT_EQ(any->action, "exec");
  ApprovalGates rules_only(Spec({}, {"^sudo "}));
  EXPECT_FALSE(rules_only.ForCall("c3", ExecCall({"ls"}), nullptr).has_value());
}

TEST(ApprovalGatesTest, QuestionsAreRedactedAndNeverShowFileContents) {
  ApprovalGates gates(Spec({"write_file", "exec"}, {}, {"sk-[A-Za-z0-9]+", "hunter2"}));
  std::optional<GateAsk> exec =
      gates.ForCall("c1", ExecCall({"curl", "-H", "Authorization: sk-abc123", "--pass", "hunter2"}), nullptr);
  ASSERT_TRUE(exec.has_value());
  EXPECT_EQ(exec->question, "exec: curl -H Authorization: [redacted] --pass [redacted]");
  pb::ToolCall write;
  write.mutable_write_file()->set_path("/workspace/key-sk-zzz");
  write.mutable_write_file()->set_data("the file's contents");
  std::optional<GateAsk> w = gates.ForCall("c2", write, nullptr);
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->question, "write_file: /workspace/key-[redacted] (19 bytes)");
  // A long question is cut after redaction.
  std::optional<GateAsk> longer = gates.ForCall("c3", ExecCall({"echo", std::string(10000, 'x')}), nullptr);
  ASSERT_TRUE(longer.has_value());
  EXPECT_LE(longer->question.size(), ApprovalGates::kMaxQuestionBytes + 3);
}

TEST(ApprovalGatesTest, DesktopTypeOfASecretAsks) {
  ApprovalGates gates(Spec({"desktop_type_secret"}, {}, {"[0-9]{4}-[0-9]{4}"}));
  pb::ToolCall secret;
  secret.mutable_desktop()->mutable_type()->set_text("card 1234-5678 please");
  std::optional<GateAsk> ask = gates.ForCall("c1", secret, nullptr);
  ASSERT_TRUE(ask.has_value());
  EXPECT_EQ(ask->action, "desktop_type_secret");
  EXPECT_EQ(ask->question, "desktop type: card [redacted] please");
  pb::ToolCall plain;
  plain.mutable_desktop()->mutable_type()->set_text("hello");
  EXPECT_FALSE(gates.ForCall("c2", plain, nullptr).has_value());
  // Without the kind, a secret is only redacted, not gated.
  ApprovalGates redact_only(Spec({}, {}, {"[0-9]{4}-[0-9]{4}"}));
  EXPECT_FALSE(redact_only.ForCall("c3", secret, nullptr).has_value());
}

TEST(ApprovalGatesTest, BrowserSubmitAndNewOrigins) {
  ApprovalGates gates(Spec({"browser_submit", "browser_navigate_new_origin"}));
  auto browser = [](auto fill) {
    pb::ToolCall call;
    fill(call.mutable_browser());
    return call;
  };
  EXPECT_TRUE(gates.ForCall("c", browser([](pb::BrowserAction* b) { b->mutable_press()->set_key("Enter"); }), nullptr));
  EXPECT_FALSE(gates.ForCall("c", browser([](pb::BrowserAction* b) { b->mutable_press()->set_key("Tab"); }), nullptr));
  EXPECT_TRUE(gates.ForCall(
      "c", browser([](pb::BrowserAction* b) { b->mutable_click()->set_selector("button[type=Submit]"); }), nullptr));
  EXPECT_FALSE(gates.ForCall("c", browser([](pb::BrowserAction* b) { b->mutable_click()->set_selector("#next"); }),
                             nullptr));
  EXPECT_TRUE(gates.ForCall("c", browser([](pb::BrowserAction* b) { b->mutable_type()->set_text("query\n"); }), nullptr));
  EXPECT_FALSE(gates.ForCall("c", browser([](pb::BrowserAction* b) { b->mutable_type()->set_text("query"); }), nullptr));
  pb::ToolCall nav = browser([](pb::BrowserAction* b) { b->mutable_navigate()->set_url("https://a.example/x"); });
  std::string asked_about;
  std::optional<GateAsk> fresh = gates.ForCall("c", nav, [&](const std::string& origin) {
    asked_about = origin;
    return true;
  });
  ASSERT_TRUE(fresh.has_value());
  EXPECT_EQ(asked_about, "https://a.example:443");
  EXPECT_EQ(fresh->action, "browser_navigate_new_origin");
  EXPECT_FALSE(gates.ForCall("c", nav, [](const std::string&) { return false; }).has_value());
}

TEST(ApprovalGatesTest, Transfers) {
  ApprovalGates gates(Spec({"download"}));
  std::optional<GateAsk> d = gates.ForTransfer("download", "/workspace/out.csv", "12 bytes");
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->question, "download: /workspace/out.csv (12 bytes)");
  EXPECT_EQ(d->action, "download");
  EXPECT_TRUE(d->call_id.empty());
  EXPECT_FALSE(gates.ForTransfer("upload", "/workspace/in", "").has_value());
}

}  // namespace
}  // namespace sbx::agent
