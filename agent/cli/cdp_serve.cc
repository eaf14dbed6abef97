#include "agent/cli/cdp_serve.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "agent/cli/cdp_endpoint.h"
#include "net/listen.h"

namespace sbx::cdp {
namespace {

namespace pb = ::duvo::sandbox::v1;

constexpr size_t kPieceBytes = 1 << 20;  // CdpFrame pieces (gRPC's message cap is 4 MiB)

class GrpcCdpStream : public CdpStream {
 public:
  GrpcCdpStream(std::unique_ptr<grpc::ClientContext> ctx, pb::Sandboxes::StubInterface& stub)
      : ctx_(std::move(ctx)), stream_(stub.Cdp(ctx_.get())) {}

  bool Read(std::string* message) override {
    message->clear();
    pb::CdpFrame f;
    while (stream_->Read(&f)) {
      message->append(f.message());
      if (!f.more()) return true;
    }
    return false;
  }
  bool Write(std::string_view message) override {
    size_t off = 0;
    do {
      pb::CdpFrame f;
      const size_t n = std::min(kPieceBytes, message.size() - off);
      f.set_message(std::string(message.substr(off, n)));
      off += n;
      f.set_more(off < message.size());
      if (!stream_->Write(f)) return false;
    } while (off < message.size());
    return true;
  }
  void WritesDone() override { stream_->WritesDone(); }
  void Cancel() override { ctx_->TryCancel(); }
  std::string Finish() override {
    if (!finished_) {
      status_ = stream_->Finish();
      finished_ = true;
    }
    if (status_.ok() || status_.error_code() == grpc::CANCELLED) return "";
    return status_.error_message();
  }
  grpc::Status status() {
    Finish();
    return status_;
  }
  bool Start(const std::string& session_id) {
    pb::CdpFrame first;
    first.set_session_id(session_id);
    if (!stream_->Write(first)) return false;
    pb::CdpFrame ack;  // the agent's empty first message: the stream is open
    return stream_->Read(&ack);
  }

 private:
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::unique_ptr<grpc::ClientReaderWriterInterface<pb::CdpFrame, pb::CdpFrame>> stream_;
  bool finished_ = false;
  grpc::Status status_;
};

int HttpStatusOf(grpc::StatusCode code) {
  switch (code) {
    case grpc::UNAUTHENTICATED:
      return 401;
    case grpc::PERMISSION_DENIED:
      return 403;
    case grpc::NOT_FOUND:
      return 404;
    case grpc::FAILED_PRECONDITION:
      return 409;
    default:
      return 502;
  }
}

}  // namespace

OpenCdpFn GrpcCdpOpener(pb::Sandboxes::StubInterface* stub,
                        std::function<std::unique_ptr<grpc::ClientContext>(const CdpOpenRequest&)> context) {
  return [stub, context = std::move(context)](const CdpOpenRequest& request, int* http_status,
                                               std::string* error) -> std::unique_ptr<CdpStream> {
    auto s = std::make_unique<GrpcCdpStream>(context(request), *stub);
    if (s->Start(request.session_id)) return s;
    const grpc::Status st = s->status();
    *http_status = HttpStatusOf(st.error_code());
    *error = "cdp: " + st.error_message();
    return nullptr;
  };
}

int ServeCdpEndpoint(pb::Sandboxes::Stub& stub, std::function<std::unique_ptr<grpc::ClientContext>()> context,
                     const std::string& session_id, const std::string& listen) {
  int exit_code = 0;
  const int lfd = sbx::cli::ListenTcp(listen, 16, "127.0.0.1:9222", &exit_code);
  if (lfd < 0) return exit_code;
  CdpEndpointOptions options;
  options.session_id = session_id;
  options.open = GrpcCdpOpener(&stub, [context](const CdpOpenRequest&) { return context(); });
  for (;;) {
    const int cfd = accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      fprintf(stderr, "sandboxctl: accept: %s\n", strerror(errno));
      return 1;
    }
    std::thread([cfd, options] { ServeCdpConnection(cfd, options); }).detach();
  }
}

}  // namespace sbx::cdp
