// gRPC server reflection on the daemon's real TCP listener, checked by an independent client
// (tests/e2e/reflection_client.py: Debian's python3-grpcio, no generated code of ours): it lists the
// services, fetches the file descriptors, and calls Sandboxes.List with messages built only from what
// reflection returned, with the bearer token and (refused) without it.
#include <unistd.h>

#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using ::testing::HasSubstr;

constexpr char kPython[] = "/usr/bin/python3";  // Debian's, where python3-grpcio is installed

// Runs `cmd` through the shell; returns its stdout and stderr, with the exit status in *rc.
std::string Shell(const std::string& cmd, int* rc) {
  RunResult run = RunShell(cmd + " 2>&1");
  *rc = run.exit_code;
  return std::move(run.out);
}

TEST(ReflectionTest, AnIndependentClientListsDescribesAndCallsTheApiOverTcpWithTheToken) {
  int rc = -1;
  Shell(std::string(kPython) + " -c 'import grpc, google.protobuf'", &rc);
  if (rc != 0) GTEST_SKIP() << "this machine lacks python3-grpcio / python3-protobuf (deploy/install-deps.sh installs them)";
  const std::string token_file = "/tmp/sbx-reflection-token-" + std::to_string(getpid());
  std::ofstream(token_file) << "reflect-s3cret\n";
  Daemon::Options o;
  o.config_lines = {"tcp_address: \"127.0.0.1:0\"", "bearer_token_file: \"" + token_file + "\""};
  Daemon daemon(o);
  ASSERT_TRUE(daemon.ok()) << daemon.Log();
  const std::string log = daemon.Log();
  const size_t at = log.find("(port ");
  ASSERT_NE(at, std::string::npos) << log;
  const int port = std::stoi(log.substr(at + 6));

  // A session for List to return.
  auto stub = daemon.NewStub();
  pb::Session session;
  ASSERT_TRUE(CreateSession(stub.get(), pb::FILE, &session).ok());

  const std::string out = Shell(std::string(kPython) + " " + SBX_REFLECTION_CLIENT + " --target 127.0.0.1:" +
                                  std::to_string(port) + " --token-file " + token_file + " --reflection-desc " +
                                  SBX_REFLECTION_DESC,
                              &rc);
  unlink(token_file.c_str());
  EXPECT_EQ(rc, 0) << out;
  EXPECT_THAT(out, HasSubstr("service duvo.sandbox.v1.Sandboxes\n"));
  EXPECT_THAT(out, HasSubstr("service grpc.reflection.v1alpha.ServerReflection\n"));
  EXPECT_THAT(out, HasSubstr("file duvo/sandbox/v1/sandboxes.proto\n"));
  EXPECT_THAT(out, HasSubstr("file duvo/sandbox/v1/session.proto\n"));
  EXPECT_THAT(out, HasSubstr("list ok: 1 sessions: " + session.id() + "\n"));
  EXPECT_THAT(out, HasSubstr("without token: UNAUTHENTICATED\n"));
}

}  // namespace
}  // namespace sbx::testing
