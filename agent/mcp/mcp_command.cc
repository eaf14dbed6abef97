#include "agent/mcp/mcp_command.h"

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <google/protobuf/text_format.h>

#include "agent/mcp/mcp_stdio.h"

namespace sbx::agent::mcp {

namespace pb = ::duvo::sandbox::v1;

int McpCommand(const McpCommandFlags& flags) {
  // Before any gRPC thread exists: SIGINT/SIGTERM are taken by RunStdio's signalfd, so every thread must
  // have them blocked, or one of gRPC's would die of them without the session being Deleted.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  StdioOptions options;
  pb::CreateRequest& create = options.server.create;
  if (flags.kind == "file") {
    create.set_kind(pb::FILE);
  } else if (flags.kind == "browser") {
    create.set_kind(pb::BROWSER);
  } else if (flags.kind == "desktop") {
    create.set_kind(pb::DESKTOP);
  } else {
    fprintf(stderr, "sandboxctl mcp: --kind %s: expected file, browser or desktop\n", flags.kind.c_str());
    return 2;
  }
  if (!flags.policy_file.empty()) {
    std::ifstream in(flags.policy_file);
    if (!in) {
      fprintf(stderr, "sandboxctl mcp: --policy %s: cannot read it\n", flags.policy_file.c_str());
      return 2;
    }
    std::stringstream text;
    text << in.rdbuf();
    if (!google::protobuf::TextFormat::ParseFromString(text.str(), create.mutable_policy())) {
      fprintf(stderr, "sandboxctl mcp: --policy %s: not a SandboxPolicy textproto\n", flags.policy_file.c_str());
      return 2;
    }
    // A request may only narrow policy.limits (anything else is PERMISSION_DENIED); its approval gates go in
    // CreateRequest.approvals, which adds them to the host's.
    if (create.policy().has_approvals()) {
      *create.mutable_approvals() = create.policy().approvals();
      create.mutable_policy()->clear_approvals();
    }
  }
  options.server.approval_wait = std::chrono::milliseconds(flags.approval_wait_ms);
  create.mutable_labels()->insert({"client", "mcp-stdio"});
  std::string token;
  if (!flags.token_file.empty()) {
    std::ifstream f(flags.token_file);
    std::getline(f, token);
  }
  options.server.decorate = [token](grpc::ClientContext* ctx) {
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
  };
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(flags.addr, grpc::InsecureChannelCredentials());
  std::unique_ptr<pb::Sandboxes::Stub> stub = pb::Sandboxes::NewStub(channel);
  options.server.stub = stub.get();
  fprintf(stderr, "sandboxctl mcp: serving MCP on stdio (%s sessions, agent %s)\n", flags.kind.c_str(),
          flags.addr.c_str());
  return RunStdio(std::move(options));
}

}  // namespace sbx::agent::mcp
