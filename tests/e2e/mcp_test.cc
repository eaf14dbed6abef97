// MCP end to end: the official TypeScript SDK's client (tests/mcp/*.mjs, from tests/npm) against a real daemon,
// over stdio (`sandboxctl mcp`) and Streamable HTTP (/mcp on the daemon's TCP listener); and sandboxctl mcp's
// own life cycle (the session it made is Deleted on end of input and on SIGTERM).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;

std::string Shell(const std::string& cmd, int* rc) {
  RunResult run = RunShell(cmd);
  *rc = run.exit_code;
  return std::move(run.out);
}

// What the node tests need, or why they cannot run here (named for the skip).
std::string MissingNodeDeps() {
  int rc = 0;
  const std::string version = Shell("node --version 2>/dev/null", &rc);
  if (rc != 0) return "node is not installed (deploy/install-deps.sh needs Node 20 or newer)";
  if (version.size() < 3 || std::stoi(version.substr(1)) < 20) return "node " + version + " is older than 20";
  const std::string sdk = std::string(SBX_NPM_DIR) + "/node_modules/@modelcontextprotocol/sdk/package.json";
  if (access(sdk.c_str(), R_OK) != 0) return "tests/npm has no node_modules (run deploy/install-deps.sh: npm ci)";
  return "";
}

size_t SessionCount(const Daemon& daemon) {
  auto stub = daemon.NewStub();
  grpc::ClientContext ctx;
  pb::ListResponse resp;
  grpc::Status s = stub->List(&ctx, pb::ListRequest(), &resp);
  return s.ok() ? static_cast<size_t>(resp.sessions_size()) : 1000;
}

bool WaitForSessions(const Daemon& daemon, size_t n) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    if (SessionCount(daemon) == n) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

class McpE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_file_ = "/tmp/sbx-mcp-token-" + std::to_string(getpid());
    std::ofstream(token_file_) << "mcp-s3cret\n";
    daemon_ = std::make_unique<Daemon>(Daemon::Options{
        {"tcp_address: \"127.0.0.1:0\"", "bearer_token_file: \"" + token_file_ + "\""}, {}});
    ASSERT_TRUE(daemon_->ok()) << daemon_->Log();
    const std::string log = daemon_->Log();
    const size_t at = log.find("(port ");
    ASSERT_NE(at, std::string::npos) << log;
    port_ = std::stoi(log.substr(at + 6));
  }
  void TearDown() override { unlink(token_file_.c_str()); }

  // Runs tests/mcp/<script> with node; returns its exit code, output in *out.
  int Node(const std::string& script, const std::string& env, std::string* out) {
    int rc = 0;
    *out = Shell("cd " SBX_MCP_TEST_DIR " && env SBX_CTL_BIN=" + CtlBin() + " SBX_AGENT_ADDR=" + daemon_->address() +
                     " MCP_URL=http://127.0.0.1:" + std::to_string(port_) + "/mcp MCP_TOKEN=mcp-s3cret " + env +
                     " timeout 240 node " + script + " 2>&1",
                 &rc);
    return rc;
  }

  std::string token_file_;
  std::unique_ptr<Daemon> daemon_;
  int port_ = 0;
};

TEST_F(McpE2eTest, SdkOverStdioFileSession) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  std::string out;
  EXPECT_EQ(Node("stdio.mjs", "MCP_KIND=file", &out), 0) << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  // sandboxctl mcp Deleted its session when the client closed its stdin.
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
}

TEST_F(McpE2eTest, SdkOverStdioBrowserSessionScreenshotIsImageContent) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  if (access("/usr/bin/chromium", X_OK) != 0) GTEST_SKIP() << "Debian's chromium is not installed";
  std::string out;
  EXPECT_EQ(Node("stdio.mjs", "MCP_KIND=browser", &out), 0) << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
}

TEST_F(McpE2eTest, SdkOverStdioDesktopSessionComputerTool) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  if (access("/usr/bin/Xvfb", X_OK) != 0) GTEST_SKIP() << "this machine lacks Xvfb (deploy/install-deps.sh installs it)";
  std::string out;
  EXPECT_EQ(Node("stdio.mjs", "MCP_KIND=desktop", &out), 0) << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
}

// A session whose policy requires approval for exec: the MCP call says "awaiting approval" with the request's
// id; after sandboxctl approve the exec runs.
TEST_F(McpE2eTest, SdkExecHeldForApprovalRunsAfterSandboxctlApprove) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  const std::string policy = "/tmp/sbx-mcp-approval-policy-" + std::to_string(getpid()) + ".textproto";
  std::ofstream(policy) << "approvals { require_approval: \"exec\" timeout_ms: 120000 }\n";
  std::string out;
  EXPECT_EQ(Node("approval.mjs", "MCP_POLICY=" + policy, &out), 0) << out << "\n" << daemon_->Log();
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
  unlink(policy.c_str());
}

TEST_F(McpE2eTest, SdkOverStreamableHttp) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  std::string out;
  EXPECT_EQ(Node("http.mjs", "", &out), 0) << out;
  EXPECT_NE(out.find("all checks passed"), std::string::npos) << out;
  // Every MCP session was ended (DELETE), so its sandbox session is gone; 401s created none.
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
}

// The MCP project's conformance checks (@modelcontextprotocol/conformance) for the scenarios that apply to this
// server (tests/mcp/conformance.mjs says which, and why the others do not): initialize, ping, tools/list,
// concurrent SSE streams, and DNS rebinding (a Host or Origin naming another site is refused over loopback).
TEST_F(McpE2eTest, TheSdksConformanceChecks) {
  if (std::string m = MissingNodeDeps(); !m.empty()) GTEST_SKIP() << m;
  const std::string cli = std::string(SBX_NPM_DIR) + "/node_modules/@modelcontextprotocol/conformance/package.json";
  ASSERT_EQ(access(cli.c_str(), R_OK), 0) << "tests/npm lacks @modelcontextprotocol/conformance: run npm ci there";
  char dir[] = "/tmp/sbx-mcp-conformance-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string out;
  EXPECT_EQ(Node("conformance.mjs", std::string("OUT_DIR=") + dir, &out), 0) << out;
  EXPECT_NE(out.find("all conformance checks passed"), std::string::npos) << out;
  EXPECT_NE(out.find("ok   dns-rebinding-protection localhost-host-rebinding-rejected: SUCCESS"), std::string::npos)
      << out;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  EXPECT_TRUE(WaitForSessions(*daemon_, 0));
}

// Without node: the stdio server speaks to a plain pipe, and SIGTERM Deletes the session it made.
TEST_F(McpE2eTest, SandboxctlMcpDeletesItsSessionOnSigterm) {
  SpawnOptions options;
  options.args = {CtlBin(), "--addr", daemon_->address(), "mcp"};
  options.stdin_pipe = true;
  options.stdout_pipe = true;
  options.stderr_inherit = true;
  const Spawned ctl = Spawn(options);
  const pid_t pid = ctl.pid;
  ASSERT_GE(pid, 0);
  const std::string requests =
      R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}})"
      "\n"
      R"({"jsonrpc":"2.0","method":"notifications/initialized"})"
      "\n"
      R"({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"exec","arguments":{"argv":["/bin/echo","up"]}}})"
      "\n";
  ASSERT_EQ(write(ctl.stdin_fd, requests.data(), requests.size()), static_cast<ssize_t>(requests.size()));
  std::string got;
  char buf[4096];
  while (got.find("\"id\":2") == std::string::npos) {
    ssize_t n = read(ctl.stdout_fd, buf, sizeof(buf));
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_NE(got.find("exit code 0"), std::string::npos) << got;
  EXPECT_EQ(got.find("structuredContent"), std::string::npos) << "2025-03-26 has no structuredContent: " << got;
  EXPECT_EQ(SessionCount(*daemon_), 1u);
  kill(pid, SIGTERM);  // stdin still open: only the signal ends it
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(SessionCount(*daemon_), 0u) << "the session is Deleted before sandboxctl mcp exits";
  close(ctl.stdin_fd);
  close(ctl.stdout_fd);
}

}  // namespace
}  // namespace sbx::testing
