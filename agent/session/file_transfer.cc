#include "agent/session/file_transfer.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace sbx::agent {

FileTransfer::FileTransfer(sandbox::InitClient* init, std::string path, uint32_t mode)
    : init_(init), path_(std::move(path)), mode_(mode == 0 ? 0644 : mode) {}

FileTransfer::~FileTransfer() {
  if (state_ == State::kOpen) Abort();
}

void FileTransfer::RemoveFile() {
  // NOTE: best effort: the connection to the jail may be what failed; the file then goes with the jail.
  if (created_) (void)init_->Remove(path_, /*recursive=*/false);
}

absl::Status FileTransfer::Write(uint64_t offset, std::string_view data) {
  if (state_ != State::kOpen) {
    return absl::FailedPreconditionError(absl::StrCat("upload ", path_, ": the transfer has already ended"));
  }
  if (offset != size_) {
    return absl::InvalidArgumentError(
        absl::StrCat("upload ", path_, ": a chunk at offset ", offset, ", expected ", size_));
  }
  size_t done = 0;
  do {
    const size_t n = std::min<size_t>(data.size() - done, sandbox::InitClient::kMaxChunkBytes);
    const bool first = !created_;
    created_ = true;
    absl::Status s = init_->WriteFile(path_, data.substr(done, n), size_, /*truncate=*/first, mode_);
    if (!s.ok()) {
      RemoveFile();
      state_ = State::kFailed;
      return s;
    }
    size_ += n;
    done += n;
  } while (done < data.size());
  hash_.Update(data);
  return absl::OkStatus();
}

absl::StatusOr<FileTransfer::Result> FileTransfer::Finish(std::string_view declared_sha256) {
  if (state_ != State::kOpen) {
    return absl::FailedPreconditionError(absl::StrCat("upload ", path_, ": the transfer has already ended"));
  }
  // An empty upload still leaves an (empty) file.
  if (!created_) {
    if (absl::Status s = Write(0, ""); !s.ok()) return s;
  }
  const std::string received = Sha256::Hex(hash_.Final());
  absl::StatusOr<std::string> stored = init_->Sha256(path_);
  if (!stored.ok()) {
    RemoveFile();
    state_ = State::kFailed;
    return stored.status();
  }
  if ((!declared_sha256.empty() && declared_sha256 != received) || *stored != received) {
    RemoveFile();
    state_ = State::kFailed;
    return absl::DataLossError(absl::StrCat("upload ", path_, ": sha256: the sender declared ",
                                            declared_sha256.empty() ? "-" : ToAbsl(declared_sha256),
                                            ", the agent received ", received, ", the jail stored ", *stored,
                                            "; the file was removed"));
  }
  state_ = State::kSucceeded;
  return Result{size_, received};
}

void FileTransfer::Abort() {
  if (state_ != State::kOpen) return;
  RemoveFile();
  state_ = State::kFailed;
}

}  // namespace sbx::agent
