// Session::BeginUpload and Session::Upload: an upload into the jail as a tool call (its events, its
// idempotency key), the one path behind the Upload RPC and fleet upload commands.
#include <utility>

#include "absl/strings/str_cat.h"
#include "agent/session/session.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;

// What an upload's tool_call_started shows: a write_file of `path` with `mode`, without data.
pb::ToolCall UploadCallOf(const std::string& path, uint32_t mode) {
  pb::ToolCall call;
  call.mutable_write_file()->set_path(path);
  call.mutable_write_file()->set_mode(mode);
  return call;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session::Upload>> Session::BeginUpload(const std::string& key,
                                                                      const std::string& call_id,
                                                                      const std::string& path, uint32_t mode) {
  if (ended_ || events_.closed()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  }
  if (path.empty()) return absl::InvalidArgumentError("upload: path: empty");
  const pb::ToolCall call = UploadCallOf(path, mode);
  // Not a write_file call's body: the same key cannot name both.
  const std::string body = absl::StrCat("upload:", call.SerializeAsString());
  absl::MutexLock lock(&idempotent_mu_);
  if (!key.empty()) {
    auto it = idempotent_calls_.find(key);
    if (it != idempotent_calls_.end() && it->second.upload != IdempotentCall::Upload::kFailed) {
      const IdempotentCall& first = it->second;
      if (first.body != body) {
        return absl::AbortedError(absl::StrCat("idempotency_key '", key, "' was used for a different call"));
      }
      if (first.upload == IdempotentCall::Upload::kRunning) {
        return absl::AbortedError(absl::StrCat("idempotency_key '", key, "': its upload (call ", first.call_id,
                                               ") is still running"));
      }
      Touch();
      return std::unique_ptr<Upload>(new Upload(this, key, first.call_id, first.seq, first.upload_result));
    }
  }
  {
    absl::MutexLock session_lock(&mu_);
    last_call_id_ = call_id;
  }
  Touch();
  pb::Event started;
  started.mutable_tool_call_started()->set_call_id(call_id);
  *started.mutable_tool_call_started()->mutable_call() = call;
  const uint64_t seq = events_.Append(std::move(started));
  if (seq == 0) return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  if (!key.empty()) {
    idempotent_calls_[key] = IdempotentCall{body, call_id, seq, IdempotentCall::Upload::kRunning, {}};
  }
  auto upload = std::unique_ptr<Upload>(new Upload(this, key, call_id, seq, std::nullopt));
  upload->transfer_ = std::make_unique<FileTransfer>(init_.get(), path, mode);
  return upload;
}

Session::Upload::Upload(Session* session, std::string key, std::string call_id, uint64_t seq,
                        std::optional<FileTransfer::Result> replay)
    : session_(session), key_(std::move(key)), call_id_(std::move(call_id)), seq_(seq), replay_(std::move(replay)),
      ended_(replay_.has_value()) {}

Session::Upload::~Upload() {
  if (!ended_) Fail(absl::AbortedError("upload: ended unfinished; the partial file was removed"));
}

absl::Status Session::Upload::Write(uint64_t offset, std::string_view data) {
  if (replayed()) return absl::OkStatus();  // the first upload wrote it
  session_->Touch();
  absl::Status s = transfer_->Write(offset, data);
  if (!s.ok() && transfer_->ended() && !ended_) End(s);
  return s;
}

absl::StatusOr<FileTransfer::Result> Session::Upload::Finish(std::string_view declared_sha256) {
  if (replayed()) return *replay_;
  absl::StatusOr<FileTransfer::Result> result = transfer_->Finish(declared_sha256);
  if (!ended_) End(result);
  return result;
}

void Session::Upload::Fail(const absl::Status& why) {
  if (ended_) return;
  transfer_->Abort();
  End(why);
}

void Session::Upload::End(const absl::StatusOr<FileTransfer::Result>& result) {
  ended_ = true;
  pb::ToolResult done;
  done.set_done(true);
  session_->FinishCall(call_id_, result.ok() ? absl::StatusOr<pb::ToolResult>(done) : result.status());
  if (key_.empty()) return;
  absl::MutexLock lock(&session_->idempotent_mu_);
  auto it = session_->idempotent_calls_.find(key_);
  if (it == session_->idempotent_calls_.end() || it->second.call_id != call_id_) return;
  it->second.upload = result.ok() ? IdempotentCall::Upload::kSucceeded : IdempotentCall::Upload::kFailed;
  if (result.ok()) it->second.upload_result = *result;
}

}  // namespace sbx::agent
