// Fleet mode under chaos (issue 17): two real agents lease 1,000 leases of mixed workloads from the
// control-plane double while a random agent is SIGKILLed every 1-3 s and restarted on its state dir, and the
// control plane is cut off twice (3 s, 5 s). See tests/fleet/chaos.h for the run and what each check means.
//
// For a developer, the environment overrides the run: SBX_CHAOS_LEASES, SBX_CHAOS_KILL_MIN_MS,
// SBX_CHAOS_KILL_MAX_MS (0 = no kills), SBX_CHAOS_SEED, SBX_CHAOS_SETTLE_MS.
#include <sys/types.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "duvo/sandbox/v1/worker.grpc.pb.h"
#include "tests/fleet/agent_process.h"
#include "tests/fleet/chaos.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using std::chrono::milliseconds;

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* value = getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const long long parsed = strtoll(value, &end, 10);
  if (*end != '\0' || parsed < 0) {
    ADD_FAILURE() << name << "=\"" << value << "\" is not a non-negative integer; using " << fallback;
    return fallback;
  }
  return parsed;
}

// At most the first 25 entries of a check, and how many there were.
std::string Describe(const std::vector<std::string>& items) {
  std::string out = absl::StrCat(items.size(), " violations:\n");
  for (size_t i = 0; i < items.size() && i < 25; ++i) absl::StrAppend(&out, "  ", items[i], "\n");
  if (items.size() > 25) absl::StrAppend(&out, "  ...\n");
  return out;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
}

// What the chaos run relies on in the double: a re-grant with GrantAgainTo reaches only the agent it names,
// and OnRequest sees every heartbeat and every outcome report, repeats included.
TEST(FleetChaosTest, TheDoublesGrantAgainToReachesOnlyItsAgentAndOnRequestSeesEveryReport) {
  absl::StatusOr<std::unique_ptr<ControlPlaneDouble>> cp = ControlPlaneDouble::Start({});
  ASSERT_TRUE(cp.ok()) << cp.status();
  std::mutex mu;
  std::vector<std::string> seen;
  (*cp)->OnRequest([&](ControlPlaneDouble::Method m, const google::protobuf::Message& message) {
    std::lock_guard lock(mu);
    if (m == ControlPlaneDouble::Method::kHeartbeat) {
      const auto& hb = static_cast<const pb::HeartbeatRequest&>(message);
      seen.push_back(absl::StrCat("heartbeat ", hb.agent_id(), " ", hb.lease_ids_size()));
    } else {
      const auto& r = static_cast<const pb::ReportOutcomeRequest&>(message);
      seen.push_back(absl::StrCat("outcome ", r.lease_id(), " ", r.outcome().exit_code()));
    }
  });
  auto stub = pb::WorkerGateway::NewStub(grpc::CreateChannel((*cp)->target(), grpc::InsecureChannelCredentials()));
  auto lease = [&](const std::string& agent) {
    pb::LeaseRequest request;
    request.set_agent_id(agent);
    pb::KindCapacity* c = request.add_capacity();
    c->set_kind(pb::FILE);
    c->set_free(4);
    request.set_wait_ms(100);
    pb::LeaseResponse response;
    grpc::ClientContext ctx;
    EXPECT_TRUE(stub->Lease(&ctx, request, &response).ok());
    std::vector<std::string> ids;
    for (const pb::LeaseGrant& g : response.leases()) ids.push_back(g.lease_id());
    return ids;
  };
  const std::string id = (*cp)->Enqueue(ExecRequest({"/bin/true"}));
  ASSERT_EQ(lease("a"), std::vector<std::string>{id});
  for (int exit_code : {3, 4}) {  // a repeat that disagrees: the double records the first, the hook sees both
    pb::ReportOutcomeRequest report;
    report.set_agent_id("a");
    report.set_lease_id(id);
    report.mutable_outcome()->set_status(pb::Outcome::COMPLETED);
    report.mutable_outcome()->set_exit_code(exit_code);
    pb::ReportOutcomeResponse response;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->ReportOutcome(&ctx, report, &response).ok());
  }
  pb::HeartbeatRequest hb;
  hb.set_agent_id("a");
  hb.add_lease_ids(id);
  pb::HeartbeatResponse hb_response;
  grpc::ClientContext hb_ctx;
  ASSERT_TRUE(stub->Heartbeat(&hb_ctx, hb, &hb_response).ok());

  (*cp)->GrantAgainTo(id, "a");
  EXPECT_TRUE(lease("b").empty()) << "a grant for agent a went to b";
  EXPECT_EQ((*cp)->queued(), 1);
  EXPECT_EQ(lease("a"), std::vector<std::string>{id});
  EXPECT_EQ((*cp)->Lease(id)->grants, 2);
  EXPECT_EQ((*cp)->Lease(id)->outcome->outcome().exit_code(), 3);
  std::lock_guard lock(mu);
  EXPECT_EQ(seen, (std::vector<std::string>{"outcome " + id + " 3", "outcome " + id + " 4", "heartbeat a 1"}));
}

TEST(FleetChaosTest, AgentsKilledAndTheControlPlaneCutOffEveryLeaseHasOneOutcomeRunsOnceAndLeavesNothing) {
  ChaosOptions options;
  options.agents = 2;
  options.capacity = 8;
  options.leases = static_cast<int>(EnvInt("SBX_CHAOS_LEASES", 1000));
  options.kill_min = milliseconds(EnvInt("SBX_CHAOS_KILL_MIN_MS", 1000));
  options.kill_max = milliseconds(EnvInt("SBX_CHAOS_KILL_MAX_MS", 3000));
  options.seed = static_cast<uint64_t>(EnvInt("SBX_CHAOS_SEED", 17));
  options.settle = milliseconds(EnvInt("SBX_CHAOS_SETTLE_MS", 90000));
  const auto wall = std::chrono::steady_clock::now();
  absl::StatusOr<ChaosResult> run = RunChaos(options);
  ASSERT_TRUE(run.ok()) << run.status();
  const ChaosResult& result = *run;
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count();

  // What happened, for the log (and for the lead comparing runs).
  std::map<std::string, int> outcomes;
  for (const ControlPlaneDouble::LeaseView& l : result.leases) {
    if (!l.outcome) continue;
    const pb::Outcome& o = l.outcome->outcome();
    ++outcomes[absl::StrCat(pb::Outcome::Status_Name(o.status()), o.reason().empty() ? "" : "/", o.reason())];
  }
  int incomplete = 0;
  const std::vector<double> restart_ms = RestartToReportedMs(result, &incomplete);
  const auto after_grant = std::count_if(result.restarts.begin(), result.restarts.end(),
                                         [](const ChaosRestart& r) { return r.after_grant; });
  printf("chaos: %d leases, %zu kills (%zd right after a grant), %d outages, %zu re-grants; %s in %.1f s "
         "(test %.1f s)\n", options.leases, result.restarts.size(), static_cast<ssize_t>(after_grant),
         result.outages, result.regranted.size(),
         result.settled ? "settled" : "NOT settled", result.seconds(), wall_s);
  for (const auto& [what, n] : outcomes) printf("chaos:   %-28s %d\n", what.c_str(), n);
  printf("chaos: restart -> every held lease reported: p50 %.0f ms, p99 %.0f ms (%zu restarts; %d never got there)\n",
         Percentile(restart_ms, 0.5), Percentile(restart_ms, 0.99), restart_ms.size(), incomplete);

  // The chaos happened (a run without it proves nothing).
  if (options.kill_max.count() > 0) {
    EXPECT_GE(result.restarts.size(), 3u) << "too few kills for a chaos run";
    EXPECT_FALSE(result.regranted.empty()) << "no completed lease was granted again after a restart";
  }
  EXPECT_EQ(result.outages, 2);
  for (const ChaosRestart& r : result.restarts) EXPECT_FALSE(r.start_failed) << r.agent_id << " failed to restart";
  if (options.kill_max.count() > 0) {
    // The leftover scan is not blind: while sessions ran it saw their cgroups and processes.
    EXPECT_GT(result.seen_running_cgroups, 0);
    EXPECT_GT(result.seen_running_jail_processes, 0);
  }

  const std::map<std::string, std::vector<std::string>> v = CheckChaos(result);
  EXPECT_TRUE(result.settled) << "not every lease had an outcome within the settle deadline";
  EXPECT_TRUE(v.at("lost").empty()) << "lost leases (granted, never reported): " << Describe(v.at("lost"));
  EXPECT_TRUE(v.at("one_outcome").empty()) << "exactly one outcome per lease: " << Describe(v.at("one_outcome"));
  EXPECT_TRUE(v.at("run_twice").empty()) << "no lease runs twice: " << Describe(v.at("run_twice"));
  EXPECT_TRUE(v.at("restart_and_completed").empty())
      << "agent_restart and completed for one lease: " << Describe(v.at("restart_and_completed"));
  EXPECT_TRUE(v.at("exit_code").empty()) << "right exit codes and outputs: " << Describe(v.at("exit_code"));
  EXPECT_TRUE(v.at("unexpected").empty()) << "only COMPLETED or agent_restart: " << Describe(v.at("unexpected"));
  EXPECT_TRUE(v.at("events").empty()) << "gap-free events: " << Describe(v.at("events"));
  EXPECT_TRUE(v.at("unknown").empty()) << "outcomes for leases never granted: " << Describe(v.at("unknown"));
  EXPECT_TRUE(v.at("leftovers").empty()) << "nothing left behind: " << Describe(v.at("leftovers"));
  if (HasFailure()) {
    for (const auto& [agent, log] : result.agent_logs) {
      // The end of each agent's log (every lifetime appends to it).
      const size_t keep = 6000;
      printf("--- %s log (last %zu bytes) ---\n%s\n", agent.c_str(), std::min(keep, log.size()),
             log.substr(log.size() > keep ? log.size() - keep : 0).c_str());
    }
  }
}

}  // namespace
}  // namespace sbx::testing
