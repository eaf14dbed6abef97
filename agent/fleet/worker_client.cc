#include "agent/fleet/worker_client.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "base/status.h"
#include "base/unique_fd.h"

namespace sbx::agent {
namespace {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, const char* what) {
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoToStatus(errno, absl::StrCat(what, " ", path));
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoToStatus(errno, absl::StrCat(what, " ", path));
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (1 << 20)) return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": over 1 MiB"));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> TokenFile::Get() {
  if (path_.empty()) return std::string();
  struct stat st;
  if (stat(path_.c_str(), &st) < 0) return ErrnoToStatus(errno, absl::StrCat("fleet.token_file ", path_));
  absl::MutexLock lock(&mu_);
  if (st.st_ino == ino_ && st.st_size == size_ && st.st_mtim.tv_sec == mtime_.tv_sec &&
      st.st_mtim.tv_nsec == mtime_.tv_nsec) {
    return token_;
  }
  ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path_, "fleet.token_file"));
  std::string token(absl::StripAsciiWhitespace(text));
  if (token.empty()) return absl::FailedPreconditionError(absl::StrCat("fleet.token_file ", path_, " is empty"));
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("fleet.token_file ", path_, ": the token has a character a header cannot carry"));
    }
  }
  token_ = std::move(token);
  ino_ = st.st_ino;
  size_ = st.st_size;
  mtime_ = st.st_mtim;
  return token_;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeWorkerChannel(const FleetSettings& fleet, WorkerChannelUse use) {
  grpc::ChannelArguments args;
  if (use == WorkerChannelUse::kStreams) {
    args.SetString("sbx.channel", "streams");  // channel arguments that differ: a subchannel of its own
    // Read-ahead per stream stays at 1 MiB (plus the message being read) instead of growing with the
    // bandwidth-delay estimate: the agent's memory per upload is bounded by its chunk size.
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
    args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1 << 20);
  }
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  // Notice a dead control plane on an idle connection (long polls, attach streams) within ~30 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Reconnects are paced by our own backoff; keep gRPC's own short so a returning control plane is seen soon.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (fleet.tls) {
    grpc::SslCredentialsOptions ssl;
    if (!fleet.ca_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadSmallFile(fleet.ca_file, "fleet.tls.ca_file"));
    }
    if (!fleet.cert_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadSmallFile(fleet.cert_file, "fleet.tls.cert_file"));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadSmallFile(fleet.key_file, "fleet.tls.key_file"));
    }
    if (!fleet.server_name.empty()) args.SetSslTargetNameOverride(fleet.server_name);
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(fleet.control_plane, creds, args);
}

absl::Status PrepareContext(TokenFile& token, grpc::ClientContext* context,
                            std::optional<std::chrono::milliseconds> timeout) {
  ASSIGN_OR_RETURN(std::string t, token.Get());
  if (!t.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", t));
  if (timeout) context->set_deadline(std::chrono::system_clock::now() + *timeout);
  return absl::OkStatus();
}

std::optional<std::chrono::milliseconds> RetryDelay(const grpc::Status& status, const grpc::ClientContext& context) {
  if (!status.error_details().empty()) {
    google::rpc::Status details;
    if (details.ParseFromString(status.error_details())) {
      for (const google::protobuf::Any& any : details.details()) {
        google::rpc::RetryInfo info;
        if (any.UnpackTo(&info)) {
          const int64_t ms = std::clamp<int64_t>(info.retry_delay().seconds(), 0, 86400) * 1000 +
                             info.retry_delay().nanos() / 1000000;
          return std::chrono::milliseconds(std::max<int64_t>(ms, 0));
        }
      }
    }
  }
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find("retry-after");
  if (it == trailers.end()) {
    const auto& headers = context.GetServerInitialMetadata();
    it = headers.find("retry-after");
    if (it == headers.end()) return std::nullopt;
  }
  double seconds = 0;
  if (!absl::SimpleAtod(std::string(it->second.data(), it->second.size()), &seconds) || !(seconds >= 0)) {
    return std::nullopt;
  }
  return std::chrono::milliseconds(static_cast<int64_t>(std::min(seconds, 86400.0) * 1000));
}

Backoff::Backoff(std::chrono::milliseconds initial, std::chrono::milliseconds max)
    : initial_(initial), max_(max), rng_(std::random_device{}()) {}

std::chrono::milliseconds Backoff::Next(std::optional<std::chrono::milliseconds> asked) {
  const int n = attempt_;
  attempt_ = std::min(attempt_ + 1, 30);
  if (asked) return std::min<std::chrono::milliseconds>(*asked, std::chrono::minutes(10));
  const double cap = std::min<double>(static_cast<double>(max_.count()),
                                      static_cast<double>(initial_.count()) * std::ldexp(1.0, n));
  std::uniform_real_distribution<double> dist(0, cap);
  return std::chrono::milliseconds(static_cast<int64_t>(dist(rng_)));
}

}  // namespace sbx::agent
