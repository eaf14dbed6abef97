// Helpers the init-trust guarantees share (tests/adversarial/*_test.cc): putting a probe into a daemon
// session and running it there. Header-only: each *_test.cc is its own binary.
#ifndef SBX_TESTS_ADVERSARIAL_INIT_TRUST_UTIL_H_
#define SBX_TESTS_ADVERSARIAL_INIT_TRUST_UTIL_H_

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"
#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {

// Uploads build/adversarial/<probe> to `dest` in the session, executable. Returns the RPC's status.
inline grpc::Status UploadProbe(duvo::sandbox::v1::Sandboxes::StubInterface* stub, const std::string& session,
                                const std::string& probe, const std::string& dest) {
  std::ifstream f(std::string(SBX_ADV_PROBE_DIR) + "/" + probe, std::ios::binary);
  if (!f) return grpc::Status(grpc::StatusCode::NOT_FOUND, "no probe " + probe + " in " SBX_ADV_PROBE_DIR);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string bytes = ss.str();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  duvo::sandbox::v1::UploadResponse response;
  auto writer = stub->Upload(&ctx, &response);
  constexpr size_t kChunk = 256 << 10;
  for (size_t off = 0; off == 0 || off < bytes.size(); off += kChunk) {
    duvo::sandbox::v1::UploadChunk chunk;
    if (off == 0) {
      chunk.set_session_id(session);
      chunk.set_path(dest);
      chunk.set_mode(0755);
    }
    chunk.set_data(bytes.substr(off, kChunk));
    chunk.set_last(off + kChunk >= bytes.size());
    if (!writer->Write(chunk)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

// Value of "key=value" on its own line in `out`, or "<missing>".
inline std::string ProbeField(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "<missing>";
}

// The session as Get sees it now.
inline duvo::sandbox::v1::Session GetSession(duvo::sandbox::v1::Sandboxes::StubInterface* stub,
                                             const std::string& id) {
  grpc::ClientContext ctx;
  duvo::sandbox::v1::GetRequest req;
  req.set_session_id(id);
  duvo::sandbox::v1::Session session;
  (void)stub->Get(&ctx, req, &session);
  return session;
}

}  // namespace sbx::testing

#endif  // SBX_TESTS_ADVERSARIAL_INIT_TRUST_UTIL_H_
