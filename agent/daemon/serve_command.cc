#include "agent/daemon/serve_command.h"

#include <unistd.h>

#include <cstdio>

#include "absl/status/status.h"
#include "agent/daemon/daemon.h"

namespace sbx::agent {
namespace {

int Fail(const absl::Status& status) {
  fprintf(stderr, "sandbox-agent serve: %.*s\n", static_cast<int>(status.message().size()), status.message().data());
  return 1;
}

}  // namespace

int ServeCommand(const ServeFlags& flags) {
  Daemon daemon(flags);
  if (absl::Status s = daemon.Start(); !s.ok()) return Fail(s);
  daemon.Run();
  daemon.Shutdown();
  // Every session, jail and cgroup is gone and the socket removed. NOTE: gRPC's own teardown
  // (grpc_shutdown, run when the builder's credentials go) can wait up to 10 s for an executor thread
  // parked in a poller timeout; nothing of ours is left for it to clean, so leave now.
  fflush(nullptr);
  _exit(0);
}

}  // namespace sbx::agent
