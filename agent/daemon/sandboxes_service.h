// SandboxesService: the gRPC face of the SessionManager (duvo.sandbox.v1.Sandboxes). Every handler takes a
// request id (the client's x-request-id, or a new one), returns it in the x-request-id header, and turns
// errors into gRPC statuses in one place (grpc_status.h).
#ifndef SBX_AGENT_DAEMON_SANDBOXES_SERVICE_H_
#define SBX_AGENT_DAEMON_SANDBOXES_SERVICE_H_

#include <string>

#include "agent/obs/metrics.h"
#include "agent/session/session_manager.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::agent {

class SandboxesService final : public duvo::sandbox::v1::Sandboxes::Service {
 public:
  struct Options {
    SessionManager* sessions = nullptr;  // not owned
    Metrics* metrics = nullptr;          // not owned; may be null
    // When set, TCP clients must send "authorization: Bearer <token>" with the token in this file (re-read
    // when it changes). Unix-socket clients are authorized by the socket's permissions.
    std::string bearer_token_file;
  };
  explicit SandboxesService(Options options);

  grpc::Status Create(grpc::ServerContext* ctx, const duvo::sandbox::v1::CreateRequest* request,
                      duvo::sandbox::v1::Session* response) override;
  grpc::Status Get(grpc::ServerContext* ctx, const duvo::sandbox::v1::GetRequest* request,
                   duvo::sandbox::v1::Session* response) override;
  grpc::Status List(grpc::ServerContext* ctx, const duvo::sandbox::v1::ListRequest* request,
                    duvo::sandbox::v1::ListResponse* response) override;
  grpc::Status Call(grpc::ServerContext* ctx,
                    grpc::ServerReaderWriter<duvo::sandbox::v1::Event, duvo::sandbox::v1::CallRequest>* stream)
      override;
  grpc::Status Upload(grpc::ServerContext* ctx, grpc::ServerReader<duvo::sandbox::v1::UploadChunk>* reader,
                      duvo::sandbox::v1::UploadResponse* response) override;
  grpc::Status Download(grpc::ServerContext* ctx, const duvo::sandbox::v1::DownloadRequest* request,
                        grpc::ServerWriter<duvo::sandbox::v1::DownloadChunk>* writer) override;
  grpc::Status Events(grpc::ServerContext* ctx, const duvo::sandbox::v1::EventsRequest* request,
                      grpc::ServerWriter<duvo::sandbox::v1::Event>* writer) override;
  grpc::Status Cancel(grpc::ServerContext* ctx, const duvo::sandbox::v1::CancelRequest* request,
                      duvo::sandbox::v1::Session* response) override;
  grpc::Status Vnc(grpc::ServerContext* ctx,
                   grpc::ServerReaderWriter<duvo::sandbox::v1::VncData, duvo::sandbox::v1::VncData>* stream) override;
  // Decides an open HumanRequest of the session (agent/session/approvals.h), by "local".
  grpc::Status RespondHumanRequest(grpc::ServerContext* ctx,
                                   const duvo::sandbox::v1::RespondHumanRequestRequest* request,
                                   duvo::sandbox::v1::HumanDecision* response) override;
  grpc::Status Cdp(grpc::ServerContext* ctx,
                   grpc::ServerReaderWriter<duvo::sandbox::v1::CdpFrame, duvo::sandbox::v1::CdpFrame>* stream) override;
  grpc::Status Delete(grpc::ServerContext* ctx, const duvo::sandbox::v1::DeleteRequest* request,
                      duvo::sandbox::v1::DeleteResponse* response) override;

 private:
  // Reads or makes the request id, sets the response header, and checks the bearer token for TCP peers.
  absl::Status Begin(grpc::ServerContext* ctx, std::string* request_id);
  grpc::Status Finish(std::string_view method, const absl::Status& status, const std::string& request_id);

  const Options options_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_DAEMON_SANDBOXES_SERVICE_H_
