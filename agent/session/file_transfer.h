// FileTransfer: the bytes of one upload into a session's jail. Session::Upload (session.h) runs it as a tool
// call (events, idempotency) for both front ends, local mode's Sandboxes.Upload (agent/daemon/
// sandboxes_service.cc) and fleet mode's upload commands over Attach (agent/fleet/fleet_agent.cc), so both
// give the same guarantees:
// - data goes to sandbox-init in frames of at most InitClient::kMaxChunkBytes (nothing is buffered here);
// - the transfer ends with one sha256 check: what the sender declared (when it did), what the agent received
//   and what the jail stored must all agree;
// - a transfer that does not end well (a mismatch, a failed write, an abort, or one dropped unfinished)
//   removes its file: no partial or wrong file is left in the workspace.
#ifndef SBX_AGENT_SESSION_FILE_TRANSFER_H_
#define SBX_AGENT_SESSION_FILE_TRANSFER_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/sha256.h"
#include "sandbox/init_client.h"

namespace sbx::agent {

class FileTransfer {
 public:
  // What a finished transfer stored.
  struct Result {
    uint64_t size = 0;
    std::string sha256;  // lowercase hex
  };

  // `init` is not owned and must outlive the transfer (a Session::Upload holds it, and is dropped before
  // its session). `path` is resolved by sandbox-init inside the jail; mode 0 = 0644.
  FileTransfer(sandbox::InitClient* init, std::string path, uint32_t mode);
  // Removes the file unless Finish succeeded.
  ~FileTransfer();
  FileTransfer(const FileTransfer&) = delete;
  FileTransfer& operator=(const FileTransfer&) = delete;

  // Writes `data` at `offset`, which must be size() (chunks arrive in order). The first write creates or
  // truncates the file, even when `data` is empty. A failed write removes the file and ends the transfer.
  absl::Status Write(uint64_t offset, std::string_view data);
  // Ends the transfer: DataLoss (and the file removed) unless `declared_sha256` (when not empty), the bytes
  // received and the file the jail stored have one sha256.
  absl::StatusOr<Result> Finish(std::string_view declared_sha256);
  // Ends the transfer without a result: the partial file is removed.
  void Abort();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Finish or Abort was called, or a write failed.
  bool ended() const { return state_ != State::kOpen; }

 private:
  enum class State { kOpen, kSucceeded, kFailed };
  void RemoveFile();

  sandbox::InitClient* const init_;
  const std::string path_;
  const uint32_t mode_;
  Sha256 hash_;
  uint64_t size_ = 0;
  bool created_ = false;  // the first write went out (the file may exist)
  State state_ = State::kOpen;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_SESSION_FILE_TRANSFER_H_
