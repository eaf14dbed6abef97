#include "agent/fleet/agent_config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "duvo/sandbox/v1/agent_config.pb.h"
#include "base/status.h"
#include "sandbox/policy/textproto.h"
#include "base/unique_fd.h"

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

namespace {

absl::Status LoadFleet(const duvo::sandbox::v1::FleetConfig& f, const std::string& file, FleetSettings* out) {
  out->control_plane = f.control_plane();
  if (f.has_tls()) {
    out->tls = true;
    out->ca_file = f.tls().ca_file();
    out->cert_file = f.tls().cert_file();
    out->key_file = f.tls().key_file();
    out->server_name = f.tls().server_name();
    if (out->cert_file.empty() != out->key_file.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": fleet.tls: cert_file and key_file go together (mTLS)"));
    }
  }
  out->token_file = f.token_file();
  out->agent_id = f.agent_id();
  if (out->agent_id.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    out->agent_id = host;
  }
  out->labels.insert(f.labels().begin(), f.labels().end());
  struct Millis {
    const char* name;
    bool has;
    uint64_t value;
    uint64_t min, max;
    std::chrono::milliseconds* field;
  };
  const Millis fields[] = {
      {"lease_wait_ms", f.has_lease_wait_ms(), f.lease_wait_ms(), 100, 300000, &out->lease_wait},
      {"heartbeat_interval_ms", f.has_heartbeat_interval_ms(), f.heartbeat_interval_ms(), 10, 600000,
       &out->heartbeat_interval},
      {"drain_grace_ms", f.has_drain_grace_ms(), f.drain_grace_ms(), 0, 86400000, &out->drain_grace},
      {"backoff_initial_ms", f.has_backoff_initial_ms(), f.backoff_initial_ms(), 1, 600000, &out->backoff_initial},
      {"backoff_max_ms", f.has_backoff_max_ms(), f.backoff_max_ms(), 1, 3600000, &out->backoff_max},
      {"stream_op_timeout_ms", f.has_stream_op_timeout_ms(), f.stream_op_timeout_ms(), 100, 600000,
       &out->stream_op_timeout},
  };
  for (const Millis& m : fields) {
    if (!m.has) continue;
    if (m.value < m.min || m.value > m.max) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": fleet.", m.name, ": ", m.value, " is outside ", m.min, "..", m.max));
    }
    *m.field = std::chrono::milliseconds(m.value);
  }
  if (out->backoff_max < out->backoff_initial) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": fleet.backoff_max_ms is below backoff_initial_ms"));
  }
  if (f.has_max_request_bytes()) {
    if (f.max_request_bytes() < 1024 || f.max_request_bytes() > (64u << 20)) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": fleet.max_request_bytes: must be 1 KiB..64 MiB"));
    }
    out->max_request_bytes = f.max_request_bytes();
  }
  out->outbox_salvage = f.outbox_damage() != duvo::sandbox::v1::FleetConfig::REFUSE;
  return absl::OkStatus();
}

// warm_files, warm_desktops, warm_browsers: each, and the three together, at most max_sessions.
absl::Status LoadWarmPools(const duvo::sandbox::v1::AgentConfig& proto, const std::string& file, AgentConfig* c) {
  struct Pool {
    const char* name;
    bool has;
    uint32_t value;
    uint32_t* field;
  };
  const Pool pools[] = {
      {"warm_files", proto.has_warm_files(), proto.warm_files(), &c->warm_files},
      {"warm_desktops", proto.has_warm_desktops(), proto.warm_desktops(), &c->warm_desktops},
      {"warm_browsers", proto.has_warm_browsers(), proto.warm_browsers(), &c->warm_browsers},
  };
  uint64_t total = 0;
  for (const Pool& p : pools) {
    if (!p.has) continue;
    if (p.value > c->max_sessions) {
      return absl::InvalidArgumentError(absl::StrCat(file, ": ", p.name, ": ", p.value,
                                                     " is more than max_sessions (", c->max_sessions, ")"));
    }
    *p.field = p.value;
    total += p.value;
  }
  if (total > c->max_sessions) {
    return absl::InvalidArgumentError(absl::StrCat(
        file, ": warm_files + warm_desktops + warm_browsers: ", c->warm_files, " + ", c->warm_desktops, " + ",
        c->warm_browsers, " = ", total, " is more than max_sessions (", c->max_sessions,
        "); the warm pools share the agent's slots"));
  }
  return absl::OkStatus();
}

}  // namespace

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
  c.health_address = proto.health_address();
  RETURN_IF_ERROR(LoadWarmPools(proto, file, &c));
  for (int i = 0; i < proto.egress_deny_cidrs_size(); ++i) {
    absl::StatusOr<IpNetwork> network = ParseIpNetwork(proto.egress_deny_cidrs(i));
    if (!network.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": egress_deny_cidrs[", i, "]: ", network.status().message()));
    }
    c.egress_deny.push_back(*network);
  }
  if (proto.has_fleet()) RETURN_IF_ERROR(LoadFleet(proto.fleet(), file, &c.fleet));
  return c;
}

}  // namespace sbx::agent
