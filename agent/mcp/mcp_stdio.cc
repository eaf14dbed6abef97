#include "agent/mcp/mcp_stdio.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <list>
#include <memory>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

namespace sbx::agent::mcp {
namespace {

using json = nlohmann::json;

// Writes whole lines to the output; one writer at a time so messages never interleave.
class LineWriter {
 public:
  explicit LineWriter(int fd) : fd_(fd) {}
  void Write(const json& message) {
    std::string line = Dump(message);
    line += '\n';
    absl::MutexLock lock(&mu_);
    size_t off = 0;
    while (off < line.size()) {
      ssize_t n = write(fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the client went away; the read side sees EOF
      off += static_cast<size_t>(n);
    }
  }

 private:
  const int fd_;
  absl::Mutex mu_;  // one line written at a time
};

class LineEmitter final : public Emitter {
 public:
  explicit LineEmitter(LineWriter* out) : out_(out) {}
  void Send(const json& message, uint64_t) override { out_->Write(message); }

 private:
  LineWriter* out_;
};

struct Worker {
  std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  std::jthread thread;
};

}  // namespace

int RunStdio(StdioOptions options) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  UniqueFd sfd(signalfd(-1, &stop_signals, SFD_CLOEXEC));

  McpServer server(options.server);
  LineWriter out(options.out_fd);
  std::list<Worker> workers;

  auto handle_line = [&](std::string_view line) {
    json parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool is_call = parsed.is_object() && parsed.contains("id") && parsed.value("method", json()) == "tools/call";
    if (!is_call) {
      LineEmitter emitter(&out);
      if (std::optional<json> r = server.HandleText(line, &emitter)) out.Write(*r);
      return;
    }
    workers.remove_if([](const Worker& w) { return w.done->load(); });
    if (workers.size() >= options.max_concurrent_calls) {
      out.Write(ErrorResponse(parsed["id"], kInternalError, "too many tool calls running at once"));
      return;
    }
    Worker& w = workers.emplace_back();
    w.thread = std::jthread([&server, &out, done = w.done, message = std::move(parsed)] {
      LineEmitter emitter(&out);
      if (std::optional<json> r = server.Handle(message, &emitter)) out.Write(*r);
      *done = true;
    });
  };

  std::string buf;
  bool skipping = false;  // inside a line that went over max_message_bytes
  char chunk[65536];
  for (;;) {
    pollfd fds[2] = {{options.in_fd, POLLIN, 0}, {sfd.get(), POLLIN, 0}};
    if (poll(fds, sfd ? 2 : 1, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (sfd && (fds[1].revents & POLLIN)) {
      fprintf(stderr, "sandboxctl mcp: signal received, ending the session\n");
      break;
    }
    if (fds[0].revents == 0) continue;
    ssize_t n = read(options.in_fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // end of input: the client is done
    buf.append(chunk, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(buf.data() + start, nl - start);
      if (skipping) {
        skipping = false;
        continue;
      }
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      handle_line(line);
    }
    buf.erase(0, start);
    if (buf.size() > options.max_message_bytes) {
      if (!skipping) {
        out.Write(ErrorResponse(nullptr, kInvalidRequest, "message too large"));
        fprintf(stderr, "sandboxctl mcp: a message of more than %zu bytes was skipped\n", options.max_message_bytes);
      }
      skipping = true;
      buf.clear();
    }
  }
  server.Shutdown();  // cancels running calls (they answer nothing) and Deletes the session
  workers.clear();    // joins
  return 0;
}

}  // namespace sbx::agent::mcp
