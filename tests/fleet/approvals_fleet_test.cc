// Human approval gates in fleet mode: a gated exec of a lease waits on its HumanRequest event until the control
// plane sends a HumanAnswer over Attach; a repeated command is a no-op, a second answer a CommandError naming
// the command and the request's state; an agent restart with a request open reports it CANCELED in the
// outcome's events and keeps the decisions made before.
#include <unistd.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/fleet/agent_process.h"
#include "tests/fleet/double/control_plane_double.h"
#include "tests/fleet/fleet_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using std::chrono::seconds;
using ::testing::HasSubstr;

std::string Stdout(const std::vector<pb::Event>& events) {
  std::string out;
  for (const pb::Event& e : events) {
    if (e.has_output() && e.output().stream() == pb::STDOUT) out += e.output().data();
  }
  return out;
}

// The lease's open requests as the control plane sees them: HumanRequest events with no HumanDecision yet.
std::vector<pb::HumanRequest> OpenRequests(const ControlPlaneDouble& cp, const std::string& lease_id) {
  std::optional<ControlPlaneDouble::LeaseView> l = cp.Lease(lease_id);
  std::vector<pb::HumanRequest> open;
  if (!l) return open;
  for (const pb::Event& e : l->events) {
    if (e.has_human_request()) open.push_back(e.human_request());
    if (e.has_human_decision()) {
      std::erase_if(open, [&](const pb::HumanRequest& r) { return r.request_id() == e.human_decision().request_id(); });
    }
  }
  return open;
}

pb::SessionCommand Answer(const std::string& command_id, const std::string& request_id,
                          pb::HumanDecision::Decision decision) {
  pb::SessionCommand c;
  c.set_command_id(command_id);
  c.mutable_answer()->set_request_id(request_id);
  c.mutable_answer()->set_decision(decision);
  c.mutable_answer()->set_note("from the control plane");
  return c;
}

pb::SessionCommand Exec(const std::string& command_id, std::vector<std::string> argv) {
  pb::SessionCommand c;
  c.set_command_id(command_id);
  for (const std::string& a : argv) c.mutable_call()->mutable_exec()->add_argv(a);
  return c;
}

int Decisions(const std::vector<pb::Event>& events, const std::string& request_id) {
  int n = 0;
  for (const pb::Event& e : events) n += e.has_human_decision() && e.human_decision().request_id() == request_id;
  return n;
}

TEST(ApprovalsFleetTest, AGatedExecWaitsForAHumanAnswerOverAttach) {
  if (geteuid() != 0) GTEST_SKIP() << "fleet tests build jails as root (CI runs as root)";
  auto cp = StartDouble();
  ASSERT_NE(cp, nullptr);
  AgentProcess agent(AgentFor(*cp, "agent-approvals", /*capacity=*/4));
  ASSERT_TRUE(agent.Start());
  pb::SandboxRequest request = ExecRequest({"/bin/sh", "-c", "echo approved"}, /*end_after_calls=*/false);
  request.mutable_approvals()->add_exec()->set_argv_regex("echo approved");
  const std::string lease = cp->Enqueue(request);
  ASSERT_TRUE(cp->WaitFor([&] { return !OpenRequests(*cp, lease).empty(); }, seconds(30))) << agent.Log();
  const pb::HumanRequest r = OpenRequests(*cp, lease)[0];
  EXPECT_EQ(r.kind(), pb::HumanRequest::EXEC);
  EXPECT_EQ(r.question(), "exec: /bin/sh -c echo approved");
  // It waits: nothing ran.
  std::this_thread::sleep_for(seconds(1));
  EXPECT_EQ(Stdout(cp->Lease(lease)->events), "");
  // The stream drops and reattaches (resuming after what the control plane holds): the request stays open,
  // and an answer on the new stream decides it.
  cp->DropStreams();
  ASSERT_TRUE(cp->WaitFor([&] { return cp->Lease(lease)->attaches >= 2; }, seconds(20))) << agent.Log();
  ASSERT_EQ(OpenRequests(*cp, lease).size(), 1u);

  // An answer to a request that does not exist is an error naming the command.
  cp->SendCommand(lease, Answer("ans-unknown", "hr-404", pb::HumanDecision::APPROVE));
  // The answer, sent twice (a redelivery), then a different answer under another command id.
  cp->SendCommand(lease, Answer("ans-1", r.request_id(), pb::HumanDecision::APPROVE));
  cp->SendCommand(lease, Answer("ans-1", r.request_id(), pb::HumanDecision::APPROVE));
  ASSERT_TRUE(cp->WaitFor([&] { return Stdout(cp->Lease(lease)->events) == "approved\n"; }, seconds(20)))
      << agent.Log();
  cp->SendCommand(lease, Answer("ans-2", r.request_id(), pb::HumanDecision::REJECT));
  ASSERT_TRUE(cp->WaitFor([&] { return cp->Lease(lease)->command_errors.size() >= 2; }, seconds(20)));
  std::vector<pb::CommandError> errors = cp->Lease(lease)->command_errors;
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0].command_id(), "ans-unknown");
  EXPECT_EQ(errors[0].code(), grpc::NOT_FOUND);
  EXPECT_THAT(errors[0].message(), HasSubstr("hr-404"));
  EXPECT_EQ(errors[1].command_id(), "ans-2");
  EXPECT_EQ(errors[1].code(), grpc::FAILED_PRECONDITION);
  EXPECT_THAT(errors[1].message(), HasSubstr("ans-2"));
  EXPECT_THAT(errors[1].message(), HasSubstr("already decided: APPROVE by control_plane"));

  pb::SessionCommand cancel;
  cancel.set_command_id("cmd-cancel");
  cancel.mutable_cancel()->set_reason("done");
  cp->SendCommand(lease, cancel);
  ASSERT_TRUE(cp->WaitForOutcomes(1, seconds(20)));
  std::optional<ControlPlaneDouble::LeaseView> l = cp->Lease(lease);
  EXPECT_EQ(Decisions(l->events, r.request_id()), 1);
  for (const pb::Event& e : l->events) {
    if (!e.has_human_decision()) continue;
    EXPECT_EQ(e.human_decision().decision(), pb::HumanDecision::APPROVE);
    EXPECT_EQ(e.human_decision().by(), "control_plane");
    EXPECT_EQ(e.human_decision().note(), "from the control plane");
  }
  EXPECT_EQ(agent.Terminate(seconds(30)), 0);
}

TEST(ApprovalsFleetTest, AnAgentRestartReportsTheOpenRequestCanceledAndKeepsEarlierDecisions) {
  if (geteuid() != 0) GTEST_SKIP() << "fleet tests build jails as root (CI runs as root)";
  auto cp = StartDouble();
  ASSERT_NE(cp, nullptr);
  AgentProcess agent(AgentFor(*cp, "agent-approvals", /*capacity=*/4));
  ASSERT_TRUE(agent.Start());
  pb::SandboxRequest request = ExecRequest({"/bin/echo", "first"}, /*end_after_calls=*/false);
  request.mutable_approvals()->add_require_approval("exec");
  const std::string lease = cp->Enqueue(request);
  ASSERT_TRUE(cp->WaitFor([&] { return !OpenRequests(*cp, lease).empty(); }, seconds(30))) << agent.Log();
  const std::string first = OpenRequests(*cp, lease)[0].request_id();
  cp->SendCommand(lease, Answer("ans-first", first, pb::HumanDecision::APPROVE));
  ASSERT_TRUE(cp->WaitFor([&] { return Stdout(cp->Lease(lease)->events) == "first\n"; }, seconds(20)));
  cp->SendCommand(lease, Exec("cmd-second", {"/bin/echo", "second"}));
  std::string second;
  ASSERT_TRUE(cp->WaitFor([&] {
    std::vector<pb::HumanRequest> open = OpenRequests(*cp, lease);
    if (open.empty()) return false;
    second = open[0].request_id();
    return true;
  }, seconds(20)));
  ASSERT_NE(second, first);

  agent.Kill9();
  ASSERT_TRUE(agent.Start()) << agent.Log();
  ASSERT_TRUE(cp->WaitForOutcomes(1, seconds(30))) << agent.Log();
  std::optional<ControlPlaneDouble::LeaseView> l = cp->Lease(lease);
  ASSERT_TRUE(l && l->outcome);
  EXPECT_EQ(l->outcome->outcome().reason(), "agent_restart");
  // The report alone holds both requests, the approval made before the restart, and the open one closed.
  const std::vector<pb::Event> reported(l->outcome->events().begin(), l->outcome->events().end());
  std::optional<pb::HumanDecision> first_decision, second_decision;
  int requests = 0;
  for (const pb::Event& e : reported) {
    requests += e.has_human_request();
    if (e.has_human_decision() && e.human_decision().request_id() == first) first_decision = e.human_decision();
    if (e.has_human_decision() && e.human_decision().request_id() == second) second_decision = e.human_decision();
  }
  EXPECT_EQ(requests, 2);
  ASSERT_TRUE(first_decision.has_value()) << "the decision made before the restart is not in the report";
  EXPECT_EQ(first_decision->decision(), pb::HumanDecision::APPROVE);
  EXPECT_EQ(first_decision->by(), "control_plane");
  ASSERT_TRUE(second_decision.has_value()) << "the open request is not closed in the report";
  EXPECT_EQ(second_decision->decision(), pb::HumanDecision::CANCELED);
  EXPECT_EQ(second_decision->note(), "session ended: agent_restart");
  EXPECT_EQ(Decisions(reported, second), 1);
  // The journal's approval records are acked with the report: a second restart reports nothing again.
  EXPECT_EQ(agent.Terminate(seconds(30)), 0);
  ASSERT_TRUE(agent.Start());
  std::this_thread::sleep_for(seconds(1));
  EXPECT_EQ(cp->Lease(lease)->outcome_reports, 1);
  EXPECT_EQ(agent.Terminate(seconds(30)), 0);
}

TEST(ApprovalsFleetTest, AGatedUploadIsHeldUntilApprovedAndARejectedOneLeavesNoFile) {
  if (geteuid() != 0) GTEST_SKIP() << "fleet tests build jails as root (CI runs as root)";
  auto cp = StartDouble();
  ASSERT_NE(cp, nullptr);
  AgentProcess agent(AgentFor(*cp, "agent-approvals", /*capacity=*/4));
  ASSERT_TRUE(agent.Start());
  pb::SandboxRequest request;
  request.set_kind(pb::FILE);
  request.mutable_approvals()->add_require_approval("upload");
  const std::string lease = cp->Enqueue(request);
  ASSERT_TRUE(cp->WaitFor([&] { auto l = cp->Lease(lease); return l && !l->events.empty(); }, seconds(20)));

  // Two parts of "hello, fleet\n" (its sha256), both sent before anyone decides.
  const auto [part1, part2] = GreetingUploadParts();
  cp->SendCommand(lease, part1);
  cp->SendCommand(lease, part2);
  ASSERT_TRUE(cp->WaitFor([&] { return !OpenRequests(*cp, lease).empty(); }, seconds(20))) << agent.Log();
  const pb::HumanRequest r = OpenRequests(*cp, lease)[0];
  EXPECT_EQ(r.action(), "upload");
  EXPECT_EQ(r.call_id(), "up-1");
  EXPECT_EQ(r.question(), "upload: /workspace/greeting.txt");
  cp->SendCommand(lease, Exec("cmd-look", {"/bin/sh", "-c", "test -e /workspace/greeting.txt && echo early || echo absent"}));
  ASSERT_TRUE(cp->WaitFor([&] { return Stdout(cp->Lease(lease)->events) == "absent\n"; }, seconds(20)));
  cp->SendCommand(lease, Answer("ans-up", r.request_id(), pb::HumanDecision::APPROVE));
  auto finished = [&](const std::string& call_id) -> std::optional<pb::ToolCallFinished> {
    const std::optional<ControlPlaneDouble::LeaseView> l = cp->Lease(lease);
    for (const pb::Event& e : l->events) {
      if (e.has_tool_call_finished() && e.tool_call_finished().call_id() == call_id) return e.tool_call_finished();
    }
    return std::nullopt;
  };
  ASSERT_TRUE(cp->WaitFor([&] { return finished("up-1").has_value(); }, seconds(20)));
  EXPECT_TRUE(finished("up-1")->has_result()) << finished("up-1")->DebugString();
  cp->SendCommand(lease, Exec("cmd-cat", {"/bin/cat", "/workspace/greeting.txt"}));
  ASSERT_TRUE(cp->WaitFor([&] { return Stdout(cp->Lease(lease)->events) == "absent\nhello, fleet\n"; }, seconds(20)));

  // Rejected: the upload ends PERMISSION_DENIED and no file is left.
  pb::SessionCommand other = part1;
  other.set_command_id("up-2");
  other.mutable_upload()->set_path("/workspace/other.txt");
  other.mutable_upload()->set_last(true);
  cp->SendCommand(lease, other);
  std::string second;
  ASSERT_TRUE(cp->WaitFor([&] {
    for (const pb::HumanRequest& open : OpenRequests(*cp, lease)) {
      if (open.call_id() == "up-2") second = open.request_id();
    }
    return !second.empty();
  }, seconds(20)));
  cp->SendCommand(lease, Answer("ans-up-2", second, pb::HumanDecision::REJECT));
  ASSERT_TRUE(cp->WaitFor([&] { return finished("up-2").has_value(); }, seconds(20)));
  EXPECT_EQ(finished("up-2")->error().code(), grpc::PERMISSION_DENIED);
  EXPECT_EQ(finished("up-2")->error().message(), "rejected by control_plane: from the control plane");
  cp->SendCommand(lease, Exec("cmd-look-2", {"/bin/sh", "-c", "test -e /workspace/other.txt && echo there || echo gone"}));
  ASSERT_TRUE(cp->WaitFor([&] { return Stdout(cp->Lease(lease)->events).find("gone\n") != std::string::npos; },
                          seconds(20)));
  pb::SessionCommand cancel;
  cancel.set_command_id("cmd-cancel");
  cancel.mutable_cancel()->set_reason("done");
  cp->SendCommand(lease, cancel);
  ASSERT_TRUE(cp->WaitForOutcomes(1, seconds(20)));
  EXPECT_EQ(agent.Terminate(seconds(30)), 0);
}

}  // namespace
}  // namespace sbx::testing
