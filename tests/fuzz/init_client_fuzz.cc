// Fuzzes the agent's InitClient (sandbox/init_client.h) against a hostile sandbox-init: the client runs one
// command (call 1) on a socketpair, and the input is everything "sandbox-init" sends back before it closes the
// connection: frames the client's reader thread reassembles, parses (Response) and dispatches (output offsets,
// streams, the command's end, protocol violations). Beyond "no crash": the command's on_end runs exactly once
// (and by the time the connection ended), output arrives in order per stream, and the client is unhealthy
// once the peer closed.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "sandbox/init_client.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

struct Observed {
  std::mutex mu;
  std::condition_variable cv;
  int ends = 0;
  uint64_t next[3] = {0, 0, 0};
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fds[2];
  Check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  // The whole input fits in the peer's send buffer, so writing it never waits for the client's reader (which
  // stops reading at the first protocol violation). run.sh caps inputs at 64 KiB.
  const int sndbuf = 4 << 20;
  setsockopt(fds[1], SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf));
  Observed seen;
  {
    sbx::sandbox::InitClient client{sbx::UniqueFd(fds[0])};
    sbx::sandbox::ExecSpec spec;
    spec.argv = {"true"};
    absl::StatusOr<uint64_t> id = client.StartExec(
        spec,
        [&seen](sbx::sandbox::OutputStream stream, std::string bytes, uint64_t offset) {
          std::lock_guard<std::mutex> lock(seen.mu);
          const int s = static_cast<int>(stream);
          Check(s == 1 || s == 2);
          Check(offset == seen.next[s]);
          seen.next[s] += bytes.size();
        },
        [&seen](absl::StatusOr<sbx::sandbox::ExecEnd> end) {
          std::lock_guard<std::mutex> lock(seen.mu);
          ++seen.ends;
          seen.cv.notify_all();
        });
    Check(id.ok());
    size_t done = 0;
    while (done < size) {
      const ssize_t n = send(fds[1], data + done, size - done, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n <= 0) break;  // the client shut the connection down (a violation): the rest is not read anyway
      done += static_cast<size_t>(n);
    }
    shutdown(fds[1], SHUT_WR);
    // The reader ends the command when the connection ends (or at the violation before that).
    std::unique_lock<std::mutex> lock(seen.mu);
    seen.cv.wait_for(lock, std::chrono::seconds(3), [&seen] { return seen.ends > 0; });
    Check(seen.ends == 1);
    lock.unlock();
    // The command may have ended before the connection did (an ExecEnd frame): the client notices the close
    // just after.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (client.healthy() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    Check(!client.healthy());
  }
  // Destroying the client ends a command still running: either way exactly once.
  Check(seen.ends == 1);
  close(fds[1]);
  return 0;
}
