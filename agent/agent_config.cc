#include "agent/agent_config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "duvo/sandbox/v1/agent_config.pb.h"
#include "sandbox/status.h"
#include "sandbox/textproto.h"
#include "sandbox/unique_fd.h"

namespace sbx::agent {
AgentConfig DefaultAgentConfig() {
  AgentConfig c;
  if (geteuid() == 0) {
    c.state_dir = "/var/lib/sandbox-agent";
    c.unix_socket = "/run/sandbox-agent/agent.sock";
  } else {
    const char* runtime = getenv("XDG_RUNTIME_DIR");
    const char* state = getenv("XDG_STATE_HOME");
    const char* home = getenv("HOME");
    const std::string runtime_dir = runtime && *runtime ? runtime : absl::StrCat("/tmp/sandbox-agent-", geteuid());
    c.unix_socket = absl::StrCat(runtime_dir, "/sandbox-agent/agent.sock");
    c.state_dir = state && *state ? absl::StrCat(state, "/sandbox-agent")
                                  : absl::StrCat(home && *home ? home : "/tmp", "/.local/state/sandbox-agent");
  }
  return c;
}

absl::StatusOr<AgentConfig> LoadAgentConfig(std::string_view path) {
  AgentConfig c = DefaultAgentConfig();
  if (path.empty()) return c;
  const std::string file(path);
  UniqueFd fd(open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return ErrnoToStatus(errno, absl::StrCat("config ", file));
  std::string text;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    if (n < 0) return ErrnoToStatus(errno, absl::StrCat("config ", file));
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > (1 << 20)) return absl::InvalidArgumentError(absl::StrCat(file, ": larger than 1 MiB"));
  }
  duvo::sandbox::v1::AgentConfig proto;
  RETURN_IF_ERROR(ParseTextProto(text, file, &proto));
  if (!proto.state_dir().empty()) c.state_dir = proto.state_dir();
  if (!proto.unix_socket().empty()) c.unix_socket = proto.unix_socket();
  c.tcp_address = proto.tcp_address();
  c.bearer_token_file = proto.bearer_token_file();
  if (!c.tcp_address.empty() && c.bearer_token_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": tcp_address needs bearer_token_file"));
  }
  if (proto.has_max_sessions()) {
    if (proto.max_sessions() == 0 || proto.max_sessions() > 100000) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": max_sessions: must be 1..100000"));
    }
    c.max_sessions = proto.max_sessions();
  }
  if (proto.has_default_ttl_ms()) {
    if (proto.default_ttl_ms() == 0) return absl::InvalidArgumentError(absl::StrCat(file, ": default_ttl_ms: must be > 0"));
    c.default_ttl = std::chrono::milliseconds(proto.default_ttl_ms());
  }
  if (proto.has_default_idle_timeout_ms()) {
    if (proto.default_idle_timeout_ms() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": default_idle_timeout_ms: must be > 0"));
    }
    c.default_idle_timeout = std::chrono::milliseconds(proto.default_idle_timeout_ms());
  }
  if (!proto.policy_dir().empty()) c.policy_dir = proto.policy_dir();
  if (!proto.metrics_address().empty()) c.metrics_address = proto.metrics_address();
  c.init_path = proto.init_path();
  return c;
}

}  // namespace sbx::agent
