// MCP tools/call round trips against the gRPC Call round trip they are built on, in the same run and the
// same daemon: `exec /bin/true` through
//   grpc   Sandboxes.Call on the unix socket (the anchor),
//   stdio  sandboxctl mcp (a JSON-RPC line in, the response line out; sandboxctl calls the unix socket),
//   http   POST /mcp on the daemon's TCP listener (an SSE response; the daemon calls itself in process).
// Prints the median and p90 of each and the ratio of each median to the anchor's.
//   mcp_bench [--calls N]
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "tests/bench/bench_util.h"
#include "tests/common/http_server.h"
#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"

namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

void Report(const char* name, const std::vector<double>& ms, double anchor) {
  const double median = sbx::bench::Median(ms);
  printf("%-6s median %7.3f ms  p90 %7.3f ms  ratio to grpc %5.2fx  (n=%zu)\n", name, median,
         sbx::bench::Percentile(ms, 0.9), anchor > 0 ? median / anchor : 0.0, ms.size());
}

std::string CallLine(int id) {
  return "{\"jsonrpc\":\"2.0\",\"id\":" + std::to_string(id) +
         ",\"method\":\"tools/call\",\"params\":{\"name\":\"exec\",\"arguments\":{\"argv\":[\"/bin/true\"]}}}";
}
const char kInit[] =
    R"({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}})";

// One HTTP/1.1 exchange on a new connection; returns the whole response (the server closes SSE streams).
std::string HttpPost(int port, const std::string& headers, const std::string& body) {
  return sbx::testing::LoopbackExchange(
      port, "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n" + headers +
            "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
}

}  // namespace

int main(int argc, char** argv) {
  int calls = 200;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--calls") calls = std::stoi(argv[++i]);
  }
  signal(SIGPIPE, SIG_IGN);
  const std::string token_file = "/tmp/sbx-mcp-bench-token-" + std::to_string(getpid());
  std::ofstream(token_file) << "bench-token\n";
  sbx::testing::Daemon daemon(
      {{"tcp_address: \"127.0.0.1:0\"", "bearer_token_file: \"" + token_file + "\""}, {}});
  if (!daemon.ok()) {
    fprintf(stderr, "mcp_bench: the daemon did not start:\n%s\n", daemon.Log().c_str());
    return 1;
  }
  const std::string log = daemon.Log();
  const int port = std::stoi(log.substr(log.find("(port ") + 6));

  // grpc: the anchor.
  auto stub = daemon.NewStub();
  pb::Session session;
  if (!sbx::testing::CreateSession(stub.get(), pb::FILE, &session).ok()) return 1;
  std::vector<double> grpc_ms;
  for (int i = 0; i < calls + 5; ++i) {
    const auto t0 = Clock::now();
    sbx::testing::CallResult r = sbx::testing::RunExec(stub.get(), session.id(), {"/bin/true"});
    if (!r.has_finished) return 1;
    if (i >= 5) grpc_ms.push_back(Ms(Clock::now() - t0));
  }
  {
    grpc::ClientContext ctx;
    pb::DeleteRequest req;
    req.set_session_id(session.id());
    pb::DeleteResponse resp;
    (void)stub->Delete(&ctx, req, &resp);
  }

  // stdio: sandboxctl mcp on pipes.
  std::vector<double> stdio_ms;
  {
    sbx::testing::SpawnOptions options;
    options.args = {sbx::testing::CtlBin(), "--addr", daemon.address(), "mcp"};
    options.stdin_pipe = true;
    options.stdout_pipe = true;
    options.stderr_inherit = true;
    const sbx::testing::Spawned ctl = sbx::testing::Spawn(options);
    if (ctl.pid < 0) return 1;
    FILE* reader = fdopen(ctl.stdout_fd, "r");
    char* line = nullptr;
    size_t cap = 0;
    auto exchange = [&](const std::string& msg) {
      const std::string l = msg + "\n";
      if (write(ctl.stdin_fd, l.data(), l.size()) != static_cast<ssize_t>(l.size())) return false;
      return getline(&line, &cap, reader) > 0;
    };
    exchange(kInit);
    for (int i = 0; i < calls + 5; ++i) {
      const auto t0 = Clock::now();
      if (!exchange(CallLine(i + 1)) || strstr(line, "exit code 0") == nullptr) {
        fprintf(stderr, "mcp_bench: stdio call failed: %s\n", line ? line : "(eof)");
        return 1;
      }
      if (i >= 5) stdio_ms.push_back(Ms(Clock::now() - t0));
    }
    close(ctl.stdin_fd);
    sbx::testing::WaitExitCode(ctl.pid);
    free(line);
    fclose(reader);
  }

  // http: POST /mcp.
  std::vector<double> http_ms;
  {
    const std::string auth = "Authorization: Bearer bench-token\r\n";
    const std::string init = HttpPost(port, auth, kInit);
    const size_t at = init.find("Mcp-Session-Id: ");
    if (at == std::string::npos) {
      fprintf(stderr, "mcp_bench: initialize failed: %s\n", init.c_str());
      return 1;
    }
    const std::string sid = init.substr(at + 16, 32);
    const std::string headers = auth + "Mcp-Session-Id: " + sid + "\r\nMCP-Protocol-Version: 2025-06-18\r\n";
    for (int i = 0; i < calls + 5; ++i) {
      const auto t0 = Clock::now();
      const std::string resp = HttpPost(port, headers, CallLine(i + 1));
      if (resp.find("exit code 0") == std::string::npos) {
        fprintf(stderr, "mcp_bench: http call failed: %s\n", resp.c_str());
        return 1;
      }
      if (i >= 5) http_ms.push_back(Ms(Clock::now() - t0));
    }
  }
  unlink(token_file.c_str());

  printf("exec /bin/true round trips, %d calls each (after 5 warm-up calls; the MCP session's sandbox is made by the first)\n",
         calls);
  const double anchor = sbx::bench::Median(grpc_ms);
  Report("grpc", grpc_ms, anchor);
  Report("stdio", stdio_ms, anchor);
  Report("http", http_ms, anchor);
  return 0;
}
