#include "tests/e2e/daemon_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/common/host_state.h"
#include "tests/common/http_server.h"
#include "tests/common/spawn.h"

namespace sbx::testing {

namespace pb = ::duvo::sandbox::v1;

// A binary that links agent_runner.cc too (tests/adversarial) takes AgentBin() from there.
#ifndef SBX_AGENT_BIN_FROM_AGENT_RUNNER
std::string AgentBin() { return SBX_AGENT_BIN; }
#endif
std::string CtlBin() { return SBX_CTL_BIN; }

Daemon::Daemon(Options options) {
  char dir[] = "/tmp/sbx-e2e-XXXXXX";
  if (mkdtemp(dir) == nullptr) return;
  dir_ = dir;
  socket_ = dir_ + "/agent.sock";
  const std::string config = dir_ + "/agent.textproto";
  {
    std::ofstream f(config);
    f << "unix_socket: \"" << socket_ << "\"\n";
    f << "metrics_address: \"127.0.0.1:0\"\n";
    // A state dir of its own (one agent per state dir), unless the test shares one between daemons.
    bool has_state_dir = false;
    for (const std::string& line : options.config_lines) has_state_dir |= line.rfind("state_dir:", 0) == 0;
    if (!has_state_dir) f << "state_dir: \"" << dir_ << "/state\"\n";
    for (const std::string& line : options.config_lines) f << line << "\n";
  }
  std::vector<std::string> args = {AgentBin(), "serve", "--config", config};
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  pid_ = SpawnLogged(args, dir_ + "/agent.log", /*append=*/false);
  if (pid_ < 0) return;
  for (int i = 0; i < 500; ++i) {
    struct stat st;
    if (stat(socket_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      auto channel = grpc::CreateChannel(address(), grpc::InsecureChannelCredentials());
      if (channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(2))) {
        ready_ = true;
        return;
      }
    }
    if (!Alive()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

bool Daemon::Alive() const {
  if (pid_ <= 0) return false;
  int status;
  if (waitpid(pid_, &status, WNOHANG) == 0) return true;
  pid_ = -1;  // reaped (or gone): Stop() has nothing to wait for
  return false;
}

std::string Daemon::Metrics() const {
  const std::string log = Log();
  const std::string key = "\"metrics\":\"127.0.0.1:";
  const size_t at = log.find(key);
  if (at == std::string::npos) return "";
  const int port = std::atoi(log.c_str() + at + key.size());
  return LoopbackExchange(port, "GET /metrics HTTP/1.0\r\n\r\n");
}

double Daemon::Metric(const std::string& name) const {
  std::istringstream in(Metrics());
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + " ", 0) == 0) return std::atof(line.c_str() + name.size() + 1);
  }
  return -1;
}

bool Daemon::WaitForMetric(const std::string& name, double value, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (Metric(name) == value) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int Daemon::Stop() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  for (int i = 0; i < 1000; ++i) {
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return 128 + SIGKILL;
}

Daemon::~Daemon() {
  if (pid_ > 0) Stop();
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string Daemon::Log() const {
  std::ifstream f(dir_ + "/agent.log");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::unique_ptr<pb::Sandboxes::StubInterface> Daemon::NewStub() const {
  return pb::Sandboxes::NewStub(grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
}

grpc::Status CreateSession(pb::Sandboxes::StubInterface* stub, pb::SessionKind kind, pb::Session* session) {
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(kind);
  return stub->Create(&ctx, req, session);
}

CallResult RunCall(pb::Sandboxes::StubInterface* stub, const std::string& session_id, const pb::ToolCall& call,
                   const std::string& idempotency_key) {
  CallResult result;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto stream = stub->Call(&ctx);
  pb::CallRequest req;
  req.set_session_id(session_id);
  *req.mutable_call() = call;
  req.set_idempotency_key(idempotency_key);
  stream->Write(req);
  stream->WritesDone();
  pb::Event event;
  while (stream->Read(&event)) {
    if (event.has_output()) {
      (event.output().stream() == pb::STDERR ? result.err : result.out) += event.output().data();
    }
    if (event.has_tool_call_finished()) {
      result.finished = event.tool_call_finished();
      result.has_finished = true;
      result.finished_at = std::chrono::steady_clock::now();
    }
    result.events.push_back(event);
  }
  result.status = stream->Finish();
  auto md = ctx.GetServerInitialMetadata();
  auto it = md.find("x-request-id");
  if (it != md.end()) result.request_id = std::string(it->second.data(), it->second.size());
  return result;
}

CallResult RunExec(pb::Sandboxes::StubInterface* stub, const std::string& session_id, std::vector<std::string> argv,
                   const std::string& stdin_data) {
  pb::ToolCall call;
  for (auto& a : argv) call.mutable_exec()->add_argv(a);
  call.mutable_exec()->set_stdin(stdin_data);
  return RunCall(stub, session_id, call);
}

std::string PolicyWithEgress(const std::string& path, const std::vector<std::string>& allow,
                             const std::vector<std::string>& ask) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string policy = ss.str();
  const std::string none = "network {\n  mode: NONE\n}";
  const size_t at = policy.find(none);
  if (at == std::string::npos) return "";
  std::string egress = "network {\n  mode: EGRESS\n";
  for (const std::string& rule : allow) egress += "  allow: \"" + rule + "\"\n";
  for (const std::string& rule : ask) egress += "  ask: \"" + rule + "\"\n";
  egress += "}";
  return policy.replace(at, none.size(), egress);
}

std::vector<pb::Audit> SessionAudits(pb::Sandboxes::StubInterface* stub, const std::string& id) {
  grpc::ClientContext ctx;
  pb::EventsRequest req;
  req.set_session_id(id);
  auto reader = stub->Events(&ctx, req);
  std::vector<pb::Audit> out;
  pb::Event e;
  while (reader->Read(&e)) {
    if (e.has_audit()) out.push_back(e.audit());
  }
  return out;
}

std::string RunCtl(const Daemon& daemon, const std::vector<std::string>& args, int* rc) {
  std::vector<std::string> argv = {CtlBin(), "--addr", daemon.address()};
  argv.insert(argv.end(), args.begin(), args.end());
  RunResult run = RunCapture(argv);
  *rc = run.exit_code;
  return std::move(run.out);
}

std::vector<std::string> SessionCgroups(const std::string& id) {
  return CgroupDirs([&](std::string_view name) {
    return id.empty() ? name.starts_with("session-") : name == "session-" + id;
  });
}

}  // namespace sbx::testing
