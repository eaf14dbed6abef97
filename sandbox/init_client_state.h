// InitClient's state shared between the callers' threads and its reader thread (init_client.cc holds the
// calls, init_client_state.cc the connection). Internal to sandbox/: included by those two files only.
#ifndef SBX_SANDBOX_INIT_CLIENT_STATE_H_
#define SBX_SANDBOX_INIT_CLIENT_STATE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "sandbox/init_client.h"
#include "wire/init_protocol.pb.h"

namespace sbx::sandbox {

// Everything the client shares between the callers' threads and its reader thread.
struct InitClient::State {
  // One outstanding request.
  struct PendingCall {
    bool exec = false;
    // A command (reader thread only after registration).
    OutputFn on_output;
    EndFn on_end;
    uint64_t next_offset[3] = {0, 0, 0};  // by stream: the offset the next chunk must carry
    // A blocking call: the answer it expects besides an error, and the answer once it arrived (under mu).
    ::sbx::init::Response::KindCase expected = ::sbx::init::Response::KIND_NOT_SET;
    bool done = false;
    ::sbx::init::Response response;
  };

  explicit State(UniqueFd control) : fd(std::move(control)) {}

  // Sends one request frame. Fails with InvalidArgument when it is over the cap, and with Unavailable when
  // the connection is (or now becomes) broken.
  absl::Status Send(const ::sbx::init::Request& request, std::string_view what);
  // Registers a blocking call, sends it and waits for its answer (an `expected` one or an error).
  // call_timeout_ms: 0 = kCallTimeoutMs, not sent; else sent as the request's timeout_ms (capped at
  // kMaxCallTimeoutMs) and waited for plus kAnswerMarginMs.
  absl::StatusOr<::sbx::init::Response> Call(::sbx::init::Request request, ::sbx::init::Response::KindCase expected, std::string_view what,
                                    uint32_t call_timeout_ms = 0);
  // Gives `call` the next call id and registers it for its answers (Unavailable once the connection broke).
  absl::StatusOr<uint64_t> Register(std::shared_ptr<PendingCall> call);
  // Registers a stream (a command, or the CDP client: Output chunks ended by ExecEnd or an error) and sends
  // its first request; returns its call id. The callbacks as StartExec's.
  absl::StatusOr<uint64_t> StartStream(::sbx::init::Request request, OutputFn on_output, EndFn on_end, std::string_view what);
  // Sends `data` in requests of at most kMaxChunkBytes (at least one), each answered with Ok before the next
  // goes: `fill` puts one chunk into a request, and says whether it is the last.
  absl::Status CallInChunks(std::string_view data, std::string_view what,
                            const std::function<void(::sbx::init::Request* request, std::string chunk, bool last)>& fill);
  // Marks the connection broken (the first cause sticks) and shuts the socket down, which wakes the reader.
  void Break(absl::Status cause);
  absl::Status Unavailable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  void ReaderLoop(std::stop_token stop);
  // Routes one answer to its call; an error is a protocol violation that ends the connection.
  absl::Status Dispatch(::sbx::init::Response response);
  // Ends the connection for good: every pending call fails with the cause.
  void FailAll(absl::Status cause);

  const UniqueFd fd;
  std::atomic<bool> stopping{false};
  absl::Mutex write_mu ABSL_ACQUIRED_BEFORE(mu);  // serializes frames on the socket

  mutable absl::Mutex mu;
  absl::CondVar cv;  // signaled when a blocking call's answer arrived, or the connection broke
  bool healthy ABSL_GUARDED_BY(mu) = true;
  absl::Status cause ABSL_GUARDED_BY(mu);  // why the connection broke
  uint64_t next_call_id ABSL_GUARDED_BY(mu) = 1;
  std::unordered_map<uint64_t, std::shared_ptr<PendingCall>> calls ABSL_GUARDED_BY(mu);

  std::jthread reader;  // NOTE: last member: it starts after, and is joined before, everything it uses
};

}  // namespace sbx::sandbox

#endif  // SBX_SANDBOX_INIT_CLIENT_STATE_H_
