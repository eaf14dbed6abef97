// The control-plane double, driven over real gRPC on loopback with the raw generated WorkerGateway stub.
#include <grpc/support/log.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "tests/fleet/double/control_plane_double.h"

namespace sbx::testing {
namespace {

namespace v1 = ::duvo::sandbox::v1;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;
using Method = ControlPlaneDouble::Method;

// gRPC's own log (handshake failures, a busy port) is expected noise in these tests.
const bool kQuietGrpc = [] {
  gpr_set_log_function([](gpr_log_func_args*) {});
  return true;
}();

milliseconds Since(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target,
                                           std::shared_ptr<grpc::ChannelCredentials> creds = nullptr,
                                           const std::string& name_override = "") {
  grpc::ChannelArguments args;
  // Reconnect fast after Stop/Restart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 50);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  if (!name_override.empty()) args.SetSslTargetNameOverride(name_override);
  return grpc::CreateCustomChannel(target, creds ? creds : grpc::InsecureChannelCredentials(), args);
}

v1::SandboxRequest FileRequest(const std::string& word) {
  v1::SandboxRequest request;
  request.set_kind(v1::FILE);
  request.set_end_after_calls(true);
  v1::Exec* exec = request.add_calls()->mutable_exec();
  exec->add_argv("/bin/echo");
  exec->add_argv(word);
  return request;
}

v1::LeaseRequest LeaseAsk(const std::string& agent, uint32_t free, uint64_t wait_ms,
                          uint32_t max_sessions = 0, v1::SessionKind kind = v1::FILE) {
  v1::LeaseRequest request;
  request.set_agent_id(agent);
  (*request.mutable_labels())["zone"] = "test";
  v1::KindCapacity* capacity = request.add_capacity();
  capacity->set_kind(kind);
  capacity->set_free(free);
  request.set_max_sessions(max_sessions);
  request.set_wait_ms(wait_ms);
  return request;
}

v1::Event MakeEvent(uint64_t seq, const std::string& session = "s-1") {
  v1::Event event;
  event.set_seq(seq);
  event.set_session_id(session);
  event.mutable_output()->set_data("chunk " + std::to_string(seq));
  return event;
}

v1::SessionCommand Cancel(const std::string& id) {
  v1::SessionCommand command;
  command.set_command_id(id);
  command.mutable_cancel()->set_reason("test");
  return command;
}

std::vector<std::string> Ids(const v1::LeaseResponse& response) {
  std::vector<std::string> ids;
  for (const auto& grant : response.leases()) ids.push_back(grant.lease_id());
  return ids;
}

void Authorize(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

// One Attach stream from the agent's side: a reader thread collects what the double sends.
class AttachClient {
 public:
  explicit AttachClient(v1::WorkerGateway::Stub* stub, const std::string& token = "") {
    Authorize(&ctx_, token);
    stream_ = stub->Attach(&ctx_);
    reader_ = std::jthread([this] {
      v1::ControlMessage message;
      while (stream_->Read(&message)) {
        std::lock_guard lock(mu_);
        received_.push_back(message);
        cv_.notify_all();
      }
      std::lock_guard lock(mu_);
      ended_ = true;
      cv_.notify_all();
    });
  }
  ~AttachClient() {
    if (!finished_) {
      ctx_.TryCancel();
      reader_.join();
      stream_->Finish().ok();
    }
  }

  bool Hello(const std::string& lease_id, const std::string& session_id = "s-1", uint64_t last_seq = 0) {
    v1::AgentMessage message;
    message.mutable_hello()->set_agent_id("agent-1");
    message.mutable_hello()->set_lease_id(lease_id);
    message.mutable_hello()->set_session_id(session_id);
    message.mutable_hello()->set_last_seq(last_seq);
    return stream_->Write(message);
  }
  bool Send(const v1::AgentMessage& message) { return stream_->Write(message); }
  bool SendEvent(uint64_t seq) {
    v1::AgentMessage message;
    *message.mutable_event() = MakeEvent(seq);
    return stream_->Write(message);
  }
  // Waits until pred(everything received so far) holds.
  bool WaitFor(const std::function<bool(const std::vector<v1::ControlMessage>&)>& pred,
               milliseconds timeout = milliseconds(3000)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(received_); });
  }
  bool WaitEnded(milliseconds timeout = milliseconds(3000)) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return ended_; });
  }
  std::vector<v1::ControlMessage> Received() {
    std::lock_guard lock(mu_);
    return received_;
  }
  // Half-closes, waits for the double to end the stream, and returns its status.
  grpc::Status Finish() {
    stream_->WritesDone();
    reader_.join();
    finished_ = true;
    return stream_->Finish();
  }
  // Waits for the double to end the stream (without half-closing) and returns its status.
  grpc::Status AwaitEnd() {
    reader_.join();
    finished_ = true;
    return stream_->Finish();
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::ControlMessage>> stream_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<v1::ControlMessage> received_;
  bool ended_ = false;
  bool finished_ = false;
  std::jthread reader_;
};

uint64_t LastAck(const std::vector<v1::ControlMessage>& received) {
  uint64_t ack = 0;
  for (const auto& message : received) {
    if (message.msg_case() == v1::ControlMessage::kAckSeq) ack = message.ack_seq();
  }
  return ack;
}

std::vector<std::string> CommandIds(const std::vector<v1::ControlMessage>& received) {
  std::vector<std::string> ids;
  for (const auto& message : received) {
    if (message.has_command()) ids.push_back(message.command().command_id());
  }
  return ids;
}

std::vector<uint64_t> Seqs(const ControlPlaneDouble::LeaseView& lease) {
  std::vector<uint64_t> seqs;
  for (const auto& event : lease.events) seqs.push_back(event.seq());
  return seqs;
}

class CpDoubleTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDouble(DoubleOptions{}); }

  void StartDouble(DoubleOptions options) {
    options.lease_ttl_ms = 5000;
    auto cp = ControlPlaneDouble::Start(std::move(options));
    ASSERT_TRUE(cp.ok()) << cp.status();
    cp_ = std::move(*cp);
    channel_ = MakeChannel(cp_->target());
    stub_ = v1::WorkerGateway::NewStub(channel_);
  }

  grpc::Status CallLease(const v1::LeaseRequest& request, v1::LeaseResponse* response,
                         const std::string& token = "") {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(40));
    return stub_->Lease(&ctx, request, response);
  }

  // Leases exactly the given ids (fails the test otherwise).
  void Grant(const std::string& agent, std::vector<std::string> want) {
    v1::LeaseResponse response;
    ASSERT_TRUE(CallLease(LeaseAsk(agent, static_cast<uint32_t>(want.size()), 0), &response).ok());
    ASSERT_EQ(Ids(response), want);
  }

  grpc::Status Report(const v1::ReportOutcomeRequest& request, const std::string& token = "") {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    v1::ReportOutcomeResponse response;
    return stub_->ReportOutcome(&ctx, request, &response);
  }

  static v1::ReportOutcomeRequest Outcome(const std::string& lease_id, v1::Outcome::Status status,
                                          uint64_t last_seq) {
    v1::ReportOutcomeRequest request;
    request.set_agent_id("agent-1");
    request.set_lease_id(lease_id);
    request.set_session_id("s-1");
    request.mutable_outcome()->set_status(status);
    request.mutable_outcome()->set_reason("exited");
    request.mutable_outcome()->set_exit_code(0);
    request.set_last_seq(last_seq);
    return request;
  }

  std::unique_ptr<ControlPlaneDouble> cp_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerGateway::Stub> stub_;
};

// --- Lease -------------------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, LeaseLongPollTimesOutEmpty) {
  v1::LeaseResponse response;
  auto start = Clock::now();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 4, 300), &response).ok());
  EXPECT_GE(Since(start), milliseconds(280));
  EXPECT_LT(Since(start), milliseconds(2000));
  EXPECT_EQ(response.leases_size(), 0);

  start = Clock::now();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 4, 0), &response).ok());
  EXPECT_LT(Since(start), milliseconds(200));
  EXPECT_EQ(response.leases_size(), 0);
  EXPECT_EQ(cp_->Agents().at("agent-1").lease_calls, 2);
}

TEST_F(CpDoubleTest, LeaseAnswersAsSoonAsWorkArrives) {
  const v1::SandboxRequest request = FileRequest("hi");
  std::jthread enqueuer([&] {
    std::this_thread::sleep_for(milliseconds(200));
    cp_->Enqueue(request, 1234);
  });
  v1::LeaseResponse response;
  const auto start = Clock::now();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 4, 10000), &response).ok());
  EXPECT_GE(Since(start), milliseconds(150));
  EXPECT_LT(Since(start), milliseconds(2000));
  ASSERT_EQ(response.leases_size(), 1);
  EXPECT_EQ(response.leases(0).lease_id(), "l-1");
  EXPECT_EQ(response.leases(0).ttl_ms(), 1234u);
  v1::SandboxRequest parsed;
  ASSERT_TRUE(parsed.ParseFromString(response.leases(0).request()));
  EXPECT_EQ(parsed.SerializeAsString(), request.SerializeAsString());

  // The default ttl is the options' lease_ttl_ms.
  EXPECT_EQ(cp_->Enqueue(request), "l-2");
  Grant("agent-1", {"l-2"});
  auto lease = cp_->Lease("l-2");
  ASSERT_TRUE(lease.has_value());
  EXPECT_EQ(lease->ttl_ms, 5000u);
  EXPECT_EQ(lease->agent_id, "agent-1");
  EXPECT_EQ(lease->grants, 1);
  EXPECT_GE(lease->first_granted, lease->enqueued);
}

TEST_F(CpDoubleTest, LeaseGrantsFifoWithinCapacityAndMaxSessions) {
  for (int i = 0; i < 5; ++i) cp_->Enqueue(FileRequest(std::to_string(i)));
  v1::LeaseResponse response;
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 2, 0), &response).ok());
  EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-1", "l-2"}));

  // max_sessions 3 with 2 outstanding leaves room for one, whatever the free capacity says.
  response.Clear();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 5, 0, 3), &response).ok());
  EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-3"}));
  response.Clear();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 5, 200, 3), &response).ok());
  EXPECT_EQ(response.leases_size(), 0);

  // A report frees a slot.
  ASSERT_TRUE(Report(Outcome("l-1", v1::Outcome::COMPLETED, 0)).ok());
  response.Clear();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 5, 0, 3), &response).ok());
  EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-4"}));

  // Another agent has its own bookkeeping.
  response.Clear();
  ASSERT_TRUE(CallLease(LeaseAsk("agent-2", 1, 0, 1), &response).ok());
  EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-5"}));

  const auto agents = cp_->Agents();
  const auto& a1 = agents.at("agent-1");
  EXPECT_EQ(a1.outstanding, 3);
  EXPECT_EQ(a1.max_outstanding, 3);
  EXPECT_EQ(a1.max_free_advertised, 5u);
  EXPECT_EQ(a1.max_sessions, 3u);
  EXPECT_EQ(a1.lease_calls, 4);
  EXPECT_EQ(a1.labels.at("zone"), "test");
  EXPECT_EQ(agents.at("agent-2").outstanding, 1);
  EXPECT_EQ(cp_->queued(), 0);
}

TEST_F(CpDoubleTest, LeaseRespectsCapacityPerKind) {
  v1::SandboxRequest browser = FileRequest("b");
  browser.set_kind(v1::BROWSER);
  cp_->Enqueue(browser);                            // l-1
  cp_->Enqueue(FileRequest("f"));                   // l-2
  cp_->EnqueueRaw(std::string("\xff\xff\xff", 3));  // l-3: does not parse, needs total capacity only
  v1::LeaseRequest ask = LeaseAsk("agent-1", 1, 0);
  v1::KindCapacity* none = ask.add_capacity();
  none->set_kind(v1::BROWSER);
  none->set_free(0);
  v1::LeaseResponse response;
  ASSERT_TRUE(CallLease(ask, &response).ok());
  EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-2"}));

  ask.mutable_capacity(0)->set_free(5);
  response.Clear();
  ASSERT_TRUE(CallLease(ask, &response).ok());
  ASSERT_EQ(Ids(response), (std::vector<std::string>{"l-3"}));
  EXPECT_EQ(response.leases(0).request(), std::string("\xff\xff\xff", 3));
  EXPECT_EQ(cp_->queued(),
            1);  // the browser request waits for browser capacity
}

TEST_F(CpDoubleTest, GrantAgainGrantsTheSameLeaseWithoutCountingItTwice) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  cp_->GrantAgain(id);
  v1::LeaseResponse response;
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 2, 0), &response).ok());
  ASSERT_EQ(Ids(response), (std::vector<std::string>{id}));
  EXPECT_EQ(response.leases(0).request(), FileRequest("x").SerializeAsString());
  EXPECT_EQ(cp_->Lease(id)->grants, 2);
  EXPECT_EQ(cp_->Agents().at("agent-1").outstanding, 1);
  EXPECT_EQ(cp_->Agents().at("agent-1").max_outstanding, 1);
  ASSERT_TRUE(Report(Outcome(id, v1::Outcome::COMPLETED, 0)).ok());
  EXPECT_EQ(cp_->Agents().at("agent-1").outstanding, 0);
}

// --- Heartbeat ---------------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, HeartbeatRenewsRevokesAndStopsRenewing) {
  for (int i = 0; i < 5; ++i) cp_->Enqueue(FileRequest("x"), i == 3 ? 777 : 0);
  Grant("agent-1", {"l-1", "l-2", "l-3", "l-4"});  // l-5 stays queued: never granted
  cp_->Revoke("l-2", "drained by operator");
  cp_->StopRenewing("l-3");
  v1::HeartbeatRequest request;
  request.set_agent_id("agent-1");
  for (const char* id : {"l-1", "l-2", "l-3", "l-4", "l-5", "l-99"}) request.add_lease_ids(id);
  grpc::ClientContext ctx;
  v1::HeartbeatResponse response;
  ASSERT_TRUE(stub_->Heartbeat(&ctx, request, &response).ok());
  std::map<std::string, uint64_t> renewed;
  for (const auto& renewal : response.renewed()) renewed[renewal.lease_id()] = renewal.ttl_ms();
  std::map<std::string, std::string> revoked;
  for (const auto& revocation : response.revoked()) revoked[revocation.lease_id()] = revocation.reason();
  EXPECT_EQ(renewed, (std::map<std::string, uint64_t>{{"l-1", 5000}, {"l-4", 777}}));
  EXPECT_EQ(revoked,
            (std::map<std::string, std::string>{
                {"l-2", "drained by operator"}, {"l-5", "unknown lease"}, {"l-99", "unknown lease"}}));
  EXPECT_EQ(cp_->Calls()[Method::kHeartbeat], 1);
}

// Issue 17: the heartbeat answer lists the leases held; a refusal ends a lease; an unrenewed lease expires
// (requeued as a new lease); a Lease response can be lost on the wire after its grants were recorded.
TEST_F(CpDoubleTest, HeldLeasesRefusalsExpiryAndALostLeaseResponse) {
  cp_.reset();
  DoubleOptions options;
  options.expire_grace_ms = 200;
  options.requeue_ended = true;
  StartDouble(options);
  cp_->Enqueue(FileRequest("a"), 60000);
  cp_->Enqueue(FileRequest("b"), 60000);
  cp_->Enqueue(FileRequest("c"), 300);
  Grant("agent-1", {"l-1", "l-2", "l-3"});
  const auto heartbeat = [&](const std::string& agent, std::vector<std::string> held,
                             std::vector<std::string> refused) {
    v1::HeartbeatRequest request;
    request.set_agent_id(agent);
    for (const auto& id : held) request.add_lease_ids(id);
    for (const auto& id : refused) request.add_refused_lease_ids(id);
    grpc::ClientContext ctx;
    v1::HeartbeatResponse response;
    EXPECT_TRUE(stub_->Heartbeat(&ctx, request, &response).ok());
    return std::vector<std::string>(response.held_lease_ids().begin(), response.held_lease_ids().end());
  };
  // l-2 refused (l-99 is no lease of this agent: ignored); l-3 is held although not listed.
  EXPECT_EQ(heartbeat("agent-1", {"l-1"}, {"l-2", "l-99"}), (std::vector<std::string>{"l-1", "l-3"}));
  EXPECT_TRUE(cp_->Lease("l-2")->refused);
  EXPECT_FALSE(cp_->Lease("l-2")->outcome.has_value());
  EXPECT_EQ(cp_->queued(), 1) << "the refused request is queued again as a new lease";
  EXPECT_EQ(cp_->Lease("l-4")->request, cp_->Lease("l-2")->request);
  // l-3 (ttl 300 ms) is never renewed: it expires 200 ms after its ttl, and its request is queued again.
  ASSERT_TRUE(cp_->WaitFor([&] { return cp_->Lease("l-3")->expired; }, milliseconds(3000)));
  const ControlPlaneDouble::LeaseView expired = *cp_->Lease("l-3");
  ASSERT_TRUE(expired.outcome.has_value());
  EXPECT_EQ(expired.outcome->outcome().reason(), "lease_expired");
  EXPECT_EQ(expired.outcome_reports, 0);
  EXPECT_GE(expired.outcome_at - expired.first_granted, milliseconds(500));
  EXPECT_EQ(heartbeat("agent-1", {"l-1"}, {}), (std::vector<std::string>{"l-1"}));
  EXPECT_EQ(cp_->Agents()["agent-1"].outstanding, 1);
  EXPECT_EQ(cp_->queued(), 2);
  // A lost response: the grants are recorded (and held by agent-2), the caller sees UNAVAILABLE.
  cp_->LoseNextLeaseResponses(1);
  v1::LeaseResponse response;
  EXPECT_EQ(CallLease(LeaseAsk("agent-2", 1, 0), &response).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(response.leases_size(), 0);
  EXPECT_EQ(cp_->Lease("l-4")->agent_id, "agent-2");
  EXPECT_EQ(heartbeat("agent-2", {}, {}), (std::vector<std::string>{"l-4"}));
  // A storm is granted whole, whatever the capacity.
  const std::vector<std::string> storm = cp_->GrantStorm(50, FileRequest("s"));
  ASSERT_TRUE(CallLease(LeaseAsk("agent-3", 1, 0), &response).ok());
  EXPECT_EQ(response.leases_size(), 50);
  EXPECT_EQ(response.leases(0).lease_id(), storm[0]);
}

// --- Attach ------------------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, AttachRequiresAHelloForAGrantedLease) {
  cp_->Enqueue(FileRequest("x"));
  {
    AttachClient client(stub_.get());
    v1::AgentMessage event;
    *event.mutable_event() = MakeEvent(1);
    ASSERT_TRUE(client.Send(event));
    EXPECT_EQ(client.AwaitEnd().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    AttachClient client(stub_.get());
    ASSERT_TRUE(client.Hello("l-1"));  // enqueued, never granted
    EXPECT_EQ(client.AwaitEnd().error_code(), grpc::StatusCode::NOT_FOUND);
  }
  EXPECT_EQ(cp_->Lease("l-1")->attaches, 0);
}

TEST_F(CpDoubleTest, AttachResumesAcksDeliversAndResendsCommands) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  cp_->SendCommand(id, Cancel("c-1"));  // queued until a stream opens
  {
    AttachClient client(stub_.get());
    ASSERT_TRUE(client.Hello(id, "s-1"));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return r.size() >= 2; }));
    auto received = client.Received();
    ASSERT_TRUE(received[0].has_resume());
    EXPECT_EQ(received[0].resume().after_seq(), 0u);
    EXPECT_EQ(CommandIds(received), (std::vector<std::string>{"c-1"}));

    // Acks come promptly after events.
    const auto start = Clock::now();
    for (uint64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(client.SendEvent(seq));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return LastAck(r) == 3; }));
    EXPECT_LT(Since(start), milliseconds(500));

    // A command sent while the stream is open arrives promptly.
    const auto sent = Clock::now();
    cp_->SendCommand(id, Cancel("c-2"));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return CommandIds(r).size() == 2; }));
    EXPECT_LT(Since(sent), milliseconds(500));

    v1::AgentMessage error;
    error.mutable_command_error()->set_command_id("c-2");
    error.mutable_command_error()->set_code(3);
    error.mutable_command_error()->set_message("unknown command");
    ASSERT_TRUE(client.Send(error));
    ASSERT_TRUE(cp_->WaitFor([&] { return cp_->Lease(id)->command_errors.size() == 1; }, milliseconds(3000)));
    EXPECT_TRUE(client.Finish().ok());
  }
  {
    // A new stream resumes after the held events and gets every command again.
    AttachClient client(stub_.get());
    ASSERT_TRUE(client.Hello(id, "s-1", 3));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return CommandIds(r).size() == 2; }));
    auto received = client.Received();
    ASSERT_TRUE(received[0].has_resume());
    EXPECT_EQ(received[0].resume().after_seq(), 3u);
    EXPECT_EQ(CommandIds(received), (std::vector<std::string>{"c-1", "c-2"}));

    // Resent events at or below the resume point are duplicates, not gaps.
    ASSERT_TRUE(client.SendEvent(2));
    ASSERT_TRUE(client.SendEvent(3));
    ASSERT_TRUE(client.SendEvent(4));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return LastAck(r) == 4; }));
    EXPECT_EQ(cp_->Lease(id)->gaps, 0);
    // Skipping 5 is a gap; the ack that follows stays at the contiguous seq.
    const size_t before = client.Received().size();
    ASSERT_TRUE(client.SendEvent(6));
    ASSERT_TRUE(cp_->WaitFor([&] { return cp_->Lease(id)->gaps == 1; }, milliseconds(3000)));
    ASSERT_TRUE(client.WaitFor([&](const auto& r) { return r.size() > before; }));
    ASSERT_TRUE(client.Received().back().has_ack_seq());
    EXPECT_EQ(client.Received().back().ack_seq(), 4u);
    EXPECT_TRUE(client.Finish().ok());
  }
  const auto lease = cp_->Lease(id);
  EXPECT_EQ(Seqs(*lease), (std::vector<uint64_t>{1, 2, 3, 4, 6}));
  EXPECT_EQ(lease->contiguous_seq, 4u);
  EXPECT_EQ(lease->attaches, 2);
  EXPECT_EQ(lease->session_id, "s-1");
  EXPECT_EQ(lease->commands_sent, 4);
  ASSERT_EQ(lease->command_errors.size(), 1u);
  EXPECT_EQ(lease->command_errors[0].message(), "unknown command");
  EXPECT_EQ(cp_->Calls()[Method::kAttach], 2);
}

TEST_F(CpDoubleTest, DropStreamsCancelsAttachStreamsOnly) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  AttachClient client(stub_.get());
  ASSERT_TRUE(client.Hello(id));
  ASSERT_TRUE(client.SendEvent(1));
  ASSERT_TRUE(client.WaitFor([](const auto& r) { return LastAck(r) == 1; }));
  cp_->DropStreams();
  EXPECT_EQ(client.AwaitEnd().error_code(), grpc::StatusCode::CANCELLED);

  // Still serving: a new stream resumes where the old one stopped.
  AttachClient again(stub_.get());
  ASSERT_TRUE(again.Hello(id));
  ASSERT_TRUE(again.WaitFor([](const auto& r) { return !r.empty(); }));
  EXPECT_EQ(again.Received()[0].resume().after_seq(), 1u);
  EXPECT_TRUE(again.Finish().ok());
  v1::LeaseResponse response;
  EXPECT_TRUE(CallLease(LeaseAsk("agent-1", 1, 0), &response).ok());
}

// --- ReportOutcome -----------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, ReportOutcomeIsIdempotentAndMergesEvents) {
  std::atomic<int> hooked{0};
  cp_->OnEvent([&](const std::string& lease_id, const v1::Event&) {
    if (lease_id == "l-1") ++hooked;
  });
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  {
    AttachClient client(stub_.get());
    ASSERT_TRUE(client.Hello(id));
    ASSERT_TRUE(client.SendEvent(1));
    ASSERT_TRUE(client.SendEvent(2));
    ASSERT_TRUE(client.WaitFor([](const auto& r) { return LastAck(r) == 2; }));
    EXPECT_TRUE(client.Finish().ok());
  }
  EXPECT_FALSE(cp_->WaitForOutcomes(1, milliseconds(50)));
  v1::ReportOutcomeRequest first = Outcome(id, v1::Outcome::COMPLETED, 4);
  for (uint64_t seq : {2, 3, 4}) *first.add_events() = MakeEvent(seq);
  ASSERT_TRUE(Report(first).ok());
  v1::ReportOutcomeRequest repeat = Outcome(id, v1::Outcome::FAILED, 5);
  *repeat.add_events() = MakeEvent(5);
  ASSERT_TRUE(Report(repeat).ok());
  ASSERT_TRUE(Report(first).ok());

  EXPECT_TRUE(cp_->WaitForOutcomes(1, milliseconds(1000)));
  EXPECT_FALSE(cp_->WaitForOutcomes(2, milliseconds(50)));
  const auto lease = cp_->Lease(id);
  ASSERT_TRUE(lease->outcome.has_value());
  EXPECT_EQ(lease->outcome->outcome().status(), v1::Outcome::COMPLETED);
  EXPECT_EQ(lease->outcome_reports, 3);
  EXPECT_EQ(Seqs(*lease), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(lease->gaps, 0);
  EXPECT_GE(lease->outcome_at, lease->first_granted);
  EXPECT_EQ(hooked.load(), 4);
  EXPECT_EQ(cp_->Agents().at("agent-1").outstanding, 0);
  EXPECT_EQ(cp_->Calls()[Method::kReportOutcome], 3);
}

TEST_F(CpDoubleTest, ReportOutcomeWithLastSeqAboveHeldEventsIsAGap) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  v1::ReportOutcomeRequest request = Outcome(id, v1::Outcome::COMPLETED, 3);
  *request.add_events() = MakeEvent(1);
  ASSERT_TRUE(Report(request).ok());
  EXPECT_EQ(cp_->Lease(id)->gaps, 1);

  // A report for a lease the double never made is recorded as such.
  ASSERT_TRUE(Report(Outcome("l-404", v1::Outcome::FAILED, 0)).ok());
  ASSERT_TRUE(cp_->Lease("l-404").has_value());
  EXPECT_EQ(cp_->Lease("l-404")->grants, 0);
  EXPECT_TRUE(cp_->WaitForOutcomes(2, milliseconds(100)));
}

// --- Faults ------------------------------------------------------------------------------------------------

// Checks a failed call's status: code, google.rpc.RetryInfo and the retry-after trailer.
void ExpectRetryable(const grpc::Status& status, const grpc::ClientContext& ctx, grpc::StatusCode code,
                     milliseconds delay, const std::string& retry_after) {
  EXPECT_EQ(status.error_code(), code);
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(status.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(code));
  ASSERT_EQ(details.details_size(), 1);
  google::rpc::RetryInfo retry;
  ASSERT_TRUE(details.details(0).UnpackTo(&retry));
  EXPECT_EQ(retry.retry_delay().seconds() * 1000 + retry.retry_delay().nanos() / 1000000, delay.count());
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("retry-after");
  ASSERT_NE(it, trailers.end());
  EXPECT_EQ(std::string(it->second.data(), it->second.size()), retry_after);
}

TEST_F(CpDoubleTest, FailNextAnswersWithRetryInfo) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  cp_->FailNext(Method::kLease, grpc::StatusCode::UNAVAILABLE, 2, milliseconds(1500));
  cp_->FailNext(Method::kHeartbeat, grpc::StatusCode::RESOURCE_EXHAUSTED, 1, milliseconds(200));
  cp_->FailNext(Method::kReportOutcome, grpc::StatusCode::UNAVAILABLE, 1, milliseconds(3000));
  cp_->FailNext(Method::kAttach, grpc::StatusCode::UNAVAILABLE, 1, milliseconds(1000));
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext ctx;
    v1::LeaseResponse response;
    const grpc::Status status = stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response);
    ExpectRetryable(status, ctx, grpc::StatusCode::UNAVAILABLE, milliseconds(1500), "2");
  }
  {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    v1::HeartbeatResponse response;
    const grpc::Status status = stub_->Heartbeat(&ctx, request, &response);
    ExpectRetryable(status, ctx, grpc::StatusCode::RESOURCE_EXHAUSTED, milliseconds(200), "1");
  }
  {
    grpc::ClientContext ctx;
    v1::ReportOutcomeResponse response;
    const grpc::Status status = stub_->ReportOutcome(&ctx, Outcome(id, v1::Outcome::COMPLETED, 0), &response);
    ExpectRetryable(status, ctx, grpc::StatusCode::UNAVAILABLE, milliseconds(3000), "3");
    EXPECT_FALSE(cp_->Lease(id)->outcome.has_value());
  }
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Attach(&ctx);
    v1::ControlMessage message;
    EXPECT_FALSE(stream->Read(&message));
    ExpectRetryable(stream->Finish(), ctx, grpc::StatusCode::UNAVAILABLE, milliseconds(1000), "1");
  }
  // Then every method answers again.
  v1::LeaseResponse response;
  EXPECT_TRUE(CallLease(LeaseAsk("agent-1", 1, 0), &response).ok());
  EXPECT_TRUE(Report(Outcome(id, v1::Outcome::COMPLETED, 0)).ok());
  AttachClient client(stub_.get());
  ASSERT_TRUE(client.Hello(id));
  ASSERT_TRUE(client.WaitFor([](const auto& r) { return !r.empty(); }));
  EXPECT_TRUE(client.Finish().ok());

  // Without a delay: the bare code.
  cp_->FailNext(Method::kLease, grpc::StatusCode::INTERNAL, 1);
  grpc::ClientContext ctx;
  const grpc::Status status = stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_TRUE(status.error_details().empty());
  EXPECT_EQ(cp_->Calls()[Method::kLease], 5);
}

// --- Auth --------------------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, EveryCallNeedsTheBearerToken) {
  DoubleOptions options;
  options.token = "s3cret";
  StartDouble(options);
  const std::string id = cp_->Enqueue(FileRequest("x"));
  v1::LeaseResponse response;
  EXPECT_EQ(CallLease(LeaseAsk("agent-1", 1, 0), &response).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CallLease(LeaseAsk("agent-1", 1, 0), &response, "s3cre").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "s3cret");  // no "Bearer "
    EXPECT_EQ(stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  ASSERT_TRUE(CallLease(LeaseAsk("agent-1", 1, 0), &response, "s3cret").ok());
  ASSERT_EQ(Ids(response), (std::vector<std::string>{id}));
  {
    AttachClient client(stub_.get(), "wrong");
    client.Hello(id);  // may fail: the double refuses the stream without reading it
    EXPECT_EQ(client.AwaitEnd().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    v1::HeartbeatRequest request;
    v1::HeartbeatResponse heartbeat;
    EXPECT_EQ(stub_->Heartbeat(&ctx, request, &heartbeat).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  EXPECT_EQ(Report(Outcome(id, v1::Outcome::COMPLETED, 0)).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // Rotation: the old token stops working, the new one works.
  cp_->SetToken("n3w");
  EXPECT_EQ(Report(Outcome(id, v1::Outcome::COMPLETED, 0), "s3cret").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Report(Outcome(id, v1::Outcome::COMPLETED, 0), "n3w").ok());
  EXPECT_EQ(cp_->unauthenticated(), 7);
  auto calls = cp_->Calls();
  EXPECT_EQ(calls[Method::kLease], 1);
  EXPECT_EQ(calls[Method::kAttach], 0);
  EXPECT_EQ(calls[Method::kReportOutcome], 1);
  EXPECT_EQ(cp_->Lease(id)->outcome_reports, 1);
}

// --- Stop / Restart ----------------------------------------------------------------------------------------

TEST_F(CpDoubleTest, StopEndsEveryCallAndRestartKeepsPortAndState) {
  const std::string id = cp_->Enqueue(FileRequest("x"));
  Grant("agent-1", {id});
  const int port = cp_->port();
  AttachClient client(stub_.get());
  ASSERT_TRUE(client.Hello(id));
  ASSERT_TRUE(client.SendEvent(1));
  ASSERT_TRUE(client.WaitFor([](const auto& r) { return LastAck(r) == 1; }));
  cp_->SendCommand(id, Cancel("c-1"));
  ASSERT_TRUE(client.WaitFor([](const auto& r) { return CommandIds(r).size() == 1; }));

  std::atomic<bool> poll_done{false};
  std::jthread poller([&] {
    v1::LeaseResponse response;
    grpc::ClientContext ctx;
    stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 20000), &response).ok();
    EXPECT_EQ(response.leases_size(), 0);
    poll_done = true;
  });
  ASSERT_TRUE(cp_->WaitFor([&] { return cp_->Agents().at("agent-1").lease_calls == 2; }, milliseconds(3000)));

  const auto start = Clock::now();
  cp_->Stop();
  EXPECT_LT(Since(start), milliseconds(2000));
  EXPECT_TRUE(client.WaitEnded(milliseconds(2000)));
  EXPECT_NE(client.AwaitEnd().error_code(), grpc::StatusCode::OK);
  poller.join();
  EXPECT_TRUE(poll_done.load());
  EXPECT_LT(Since(start), milliseconds(3000));
  cp_->Stop();  // idempotent

  v1::LeaseResponse response;
  {
    grpc::ClientContext ctx;
    EXPECT_EQ(stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response).error_code(),
              grpc::StatusCode::UNAVAILABLE);
  }

  ASSERT_TRUE(cp_->Restart().ok());
  ASSERT_TRUE(cp_->Restart().ok());  // already serving
  EXPECT_EQ(cp_->port(), port);
  EXPECT_EQ(cp_->Enqueue(FileRequest("y")), "l-2");
  {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    ASSERT_TRUE(stub_->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response).ok());
    EXPECT_EQ(Ids(response), (std::vector<std::string>{"l-2"}));
  }
  AttachClient again(stub_.get());
  ASSERT_TRUE(again.Hello(id));
  ASSERT_TRUE(again.WaitFor([](const auto& r) { return CommandIds(r).size() == 1; }));
  EXPECT_EQ(again.Received()[0].resume().after_seq(), 1u);
  EXPECT_TRUE(again.Finish().ok());
  EXPECT_EQ(cp_->Lease(id)->attaches, 2);
  EXPECT_EQ(cp_->Agents().at("agent-1").outstanding, 2);
}

TEST_F(CpDoubleTest, StartRefusesABusyPortAndBadOptions) {
  DoubleOptions options;
  options.address = cp_->target();
  EXPECT_FALSE(ControlPlaneDouble::Start(options).ok());
  options.address = "no-port";
  EXPECT_EQ(ControlPlaneDouble::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.address = "127.0.0.1:0";
  options.server_cert_pem = "x";
  EXPECT_EQ(ControlPlaneDouble::Start(options).status().code(), absl::StatusCode::kInvalidArgument);
}

// --- Thread safety -----------------------------------------------------------------------------------------

constexpr int kLeases = 6;
constexpr uint64_t kEvents = 300;

TEST_F(CpDoubleTest, ConcurrentStreamsAndReportsKeepEveryEvent) {
  std::atomic<int> hooked{0};
  cp_->OnEvent([&](const std::string&, const v1::Event&) { ++hooked; });
  std::vector<std::string> ids;
  for (int i = 0; i < kLeases; ++i) ids.push_back(cp_->Enqueue(FileRequest(std::to_string(i))));
  Grant("agent-1", ids);
  std::atomic<bool> stop{false};
  std::jthread observer([&] {
    while (!stop) {
      cp_->Leases();
      cp_->Agents();
    }
  });
  {
    std::vector<std::jthread> agents;
    for (const std::string& id : ids) {
      agents.emplace_back([&, id] {
        AttachClient client(stub_.get());
        ASSERT_TRUE(client.Hello(id));
        for (uint64_t seq = 1; seq <= kEvents; ++seq) ASSERT_TRUE(client.SendEvent(seq));
        cp_->SendCommand(id, Cancel("c-" + id));
        ASSERT_TRUE(
            client.WaitFor([](const auto& r) { return LastAck(r) == kEvents && !CommandIds(r).empty(); },
                           milliseconds(5000)));
        EXPECT_TRUE(client.Finish().ok());
        v1::ReportOutcomeRequest request = Outcome(id, v1::Outcome::COMPLETED, kEvents + 1);
        *request.add_events() = MakeEvent(kEvents + 1);
        EXPECT_TRUE(Report(request).ok());
      });
    }
  }
  stop = true;
  EXPECT_TRUE(cp_->WaitForOutcomes(kLeases, milliseconds(1000)));
  for (const auto& lease : cp_->Leases()) {
    EXPECT_EQ(lease.events.size(), kEvents + 1) << lease.lease_id;
    EXPECT_EQ(lease.contiguous_seq, kEvents + 1);
    EXPECT_EQ(lease.gaps, 0);
  }
  EXPECT_EQ(hooked.load(), kLeases * static_cast<int>(kEvents + 1));
}

// --- The binary --------------------------------------------------------------------------------------------

TEST(ControlPlaneDoubleBinary, EnqueuesPrintsOutcomesAndExits) {
  // timeout: a failed assertion below must not leave the binary (and pclose) waiting for outcomes.
  const std::string command = std::string("exec timeout 20 ") + CP_DOUBLE_BINARY +
                              " --listen 127.0.0.1:0 --lease-ttl-ms 4321 "
                              "--enqueue 2 -- /bin/echo hi 2>&1";
  FILE* out = popen(command.c_str(), "r");
  ASSERT_NE(out, nullptr);
  auto read_line = [&] {
    char buffer[1024];
    return fgets(buffer, sizeof(buffer), out) == nullptr ? std::string() : std::string(buffer);
  };
  const std::string banner = read_line();
  const size_t at = banner.find("127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << banner;
  const std::string target = banner.substr(at, banner.find_first_of(" \n", at) - at);
  auto stub = v1::WorkerGateway::NewStub(MakeChannel(target));

  v1::LeaseResponse response;
  grpc::ClientContext lease_ctx;
  ASSERT_TRUE(stub->Lease(&lease_ctx, LeaseAsk("agent-1", 2, 1000), &response).ok());
  ASSERT_EQ(response.leases_size(), 2);
  EXPECT_EQ(response.leases(0).ttl_ms(), 4321u);
  v1::SandboxRequest request;
  ASSERT_TRUE(request.ParseFromString(response.leases(0).request()));
  EXPECT_EQ(request.kind(), v1::FILE);
  EXPECT_TRUE(request.end_after_calls());
  ASSERT_EQ(request.calls_size(), 1);
  EXPECT_EQ(request.calls(0).exec().argv_size(), 2);
  EXPECT_EQ(request.calls(0).exec().argv(1), "hi");

  for (int i = 0; i < 2; ++i) {
    v1::ReportOutcomeRequest report;
    report.set_lease_id(response.leases(i).lease_id());
    report.mutable_outcome()->set_status(v1::Outcome::COMPLETED);
    report.mutable_outcome()->set_reason("exited");
    report.mutable_outcome()->set_exit_code(3);
    *report.add_events() = MakeEvent(1);
    report.set_last_seq(1);
    grpc::ClientContext ctx;
    v1::ReportOutcomeResponse ack;
    ASSERT_TRUE(stub->ReportOutcome(&ctx, report, &ack).ok());
  }
  std::vector<std::string> lines = {read_line(), read_line()};
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines[0],
            "{\"events\":1,\"exit_code\":3,\"lease_id\":\"l-1\",\"reason\":"
            "\"exited\",\"status\":\"COMPLETED\"}\n");
  EXPECT_NE(lines[1].find("\"lease_id\":\"l-2\""), std::string::npos) << lines[1];
  const int status = pclose(out);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

// --- TLS ---------------------------------------------------------------------------------------------------

// Certificates made by the openssl command line into a temp dir: a CA, a server and a client cert it signs,
// and a self-signed client cert no one trusts.
class Certs {
 public:
  Certs() {
    char pattern[] = "/tmp/cp_double_certs.XXXXXX";
    dir_ = mkdtemp(pattern);
    const std::string d = dir_.string();
    std::ofstream(dir_ / "server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
                                       << "extendedKeyUsage=serverAuth\n";
    std::ofstream(dir_ / "client.ext") << "extendedKeyUsage=clientAuth\n";
    const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string script =
        "cd " + d + " && " + "openssl req -x509 " + key +
        " -keyout ca.key -out ca.crt -days 1 -subj /CN=cp-double-test-ca && " + "openssl req " + key +
        " -keyout server.key -out server.csr -subj /CN=localhost && " +
        "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key "
        "-CAcreateserial -out server.crt -days 1 "
        "-extfile server.ext && " +
        "openssl req " + key + " -keyout client.key -out client.csr -subj /CN=agent-1 && " +
        "openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key "
        "-CAcreateserial -out client.crt -days 1 "
        "-extfile client.ext && " +
        "openssl req -x509 " + key + " -keyout rogue.key -out rogue.crt -days 1 -subj /CN=rogue";
    ok_ = std::system(("(" + script + ") >/dev/null 2>&1").c_str()) == 0;
  }
  ~Certs() { std::filesystem::remove_all(dir_); }
  bool ok() const { return ok_; }
  std::string Read(const std::string& name) const {
    std::ifstream in(dir_ / name);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
  }

 private:
  std::filesystem::path dir_;
  bool ok_ = false;
};

class CpDoubleTlsTest : public CpDoubleTest {
 protected:
  void SetUp() override {}
  static void SetUpTestSuite() { certs_ = new Certs(); }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }

  // A Lease call over a channel with these credentials.
  grpc::Status TryLease(std::shared_ptr<grpc::ChannelCredentials> creds) {
    auto stub = v1::WorkerGateway::NewStub(MakeChannel(cp_->target(), std::move(creds), "localhost"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(3));
    v1::LeaseResponse response;
    return stub->Lease(&ctx, LeaseAsk("agent-1", 1, 0), &response);
  }
  std::shared_ptr<grpc::ChannelCredentials> Tls(const std::string& cert = "", const std::string& key = "") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = certs_->Read("ca.crt");
    if (!cert.empty()) {
      ssl.pem_cert_chain = certs_->Read(cert);
      ssl.pem_private_key = certs_->Read(key);
    }
    return grpc::SslCredentials(ssl);
  }

  static Certs* certs_;
};
Certs* CpDoubleTlsTest::certs_ = nullptr;

TEST_F(CpDoubleTlsTest, ServesTls) {
  ASSERT_TRUE(certs_->ok()) << "openssl could not make the test certificates";
  DoubleOptions options;
  options.server_cert_pem = certs_->Read("server.crt");
  options.server_key_pem = certs_->Read("server.key");
  StartDouble(options);
  EXPECT_TRUE(TryLease(Tls()).ok());
  EXPECT_EQ(TryLease(grpc::InsecureChannelCredentials()).error_code(), grpc::StatusCode::UNAVAILABLE);
  // Restart keeps TLS.
  cp_->Stop();
  ASSERT_TRUE(cp_->Restart().ok());
  EXPECT_TRUE(TryLease(Tls()).ok());
}

TEST_F(CpDoubleTlsTest, MtlsRequiresAClientCertificateFromTheCa) {
  ASSERT_TRUE(certs_->ok()) << "openssl could not make the test certificates";
  DoubleOptions options;
  options.server_cert_pem = certs_->Read("server.crt");
  options.server_key_pem = certs_->Read("server.key");
  options.client_ca_pem = certs_->Read("ca.crt");
  options.token = "t";
  StartDouble(options);
  EXPECT_NE(TryLease(Tls()).error_code(), grpc::StatusCode::OK);
  EXPECT_NE(TryLease(Tls("rogue.crt", "rogue.key")).error_code(), grpc::StatusCode::OK);
  // With the right certificate the call gets through TLS, to the token check.
  EXPECT_EQ(TryLease(Tls("client.crt", "client.key")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(cp_->unauthenticated(), 1);
  cp_->SetToken("");
  EXPECT_TRUE(TryLease(Tls("client.crt", "client.key")).ok());
}

}  // namespace
}  // namespace sbx::testing
