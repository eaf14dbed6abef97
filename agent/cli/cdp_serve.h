// sandboxctl browser SESSION cdp --listen HOST:PORT: the CDP endpoint (cdp_endpoint.h) over the Cdp RPC.
#ifndef SBX_AGENT_CLI_CDP_SERVE_H_
#define SBX_AGENT_CLI_CDP_SERVE_H_

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "agent/cli/cdp_endpoint.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"

namespace sbx::cdp {

// Opens each stream as one Cdp RPC on `stub` (not owned), its context from `context` (the bearer token, the
// request id); a refusal maps to an HTTP status (UNAUTHENTICATED 401, NOT_FOUND 404, ...). Shared by
// sandboxctl and the daemon's TCP listener.
OpenCdpFn GrpcCdpOpener(duvo::sandbox::v1::Sandboxes::StubInterface* stub,
                        std::function<std::unique_ptr<grpc::ClientContext>(const CdpOpenRequest&)> context);

// Serves until interrupted; each connection on its own thread. Prints "listening on HOST:PORT" once ready.
// `context` makes each RPC's context (the bearer token, the request id).
int ServeCdpEndpoint(duvo::sandbox::v1::Sandboxes::Stub& stub,
                     std::function<std::unique_ptr<grpc::ClientContext>()> context, const std::string& session_id,
                     const std::string& listen);

}  // namespace sbx::cdp

#endif  // SBX_AGENT_CLI_CDP_SERVE_H_
