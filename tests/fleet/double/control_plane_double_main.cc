// control-plane-double: serves the control-plane double for local trials of a fleet-mode agent.
//
//   control-plane-double --listen 127.0.0.1:7000 [--token-file F] [--tls-cert C --tls-key K]
//       [--client-ca CA] [--lease-ttl-ms MS] [--enqueue N -- ARGV...]
//
// With --enqueue N it queues N file sessions that exec ARGV (end_after_calls), prints each outcome as one
// JSON line on stdout as it arrives, and exits 0 once N arrived. With N = 0 it serves until SIGINT or
// SIGTERM. With --keep-serving it goes on serving after the N outcomes until SIGINT or SIGTERM, then prints
// one summary line per lease (its grants and how many times its outcome was reported) and exits 0 if all N
// outcomes arrived (tests/container/run.sh checks that a restarted agent reports each lease once).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/fleet/double/control_plane_double.h"

namespace {

namespace v1 = ::duvo::sandbox::v1;
using sbx::testing::ControlPlaneDouble;

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buffer;
  buffer << in.rdbuf();
  *out = buffer.str();
  return true;
}

std::string OutcomeLine(const ControlPlaneDouble::LeaseView& lease) {
  const v1::Outcome& outcome = lease.outcome->outcome();
  nlohmann::json line = {
      {"lease_id", lease.lease_id},
      {"status", v1::Outcome::Status_Name(outcome.status())},
      {"reason", outcome.reason()},
      {"exit_code", outcome.has_exit_code() ? nlohmann::json(outcome.exit_code()) : nlohmann::json(nullptr)},
      {"events", lease.events.size()},
  };
  return line.dump();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A test double of the control plane (duvo.sandbox.v1.WorkerGateway)"};
  std::string listen = "127.0.0.1:7000";
  std::string token_file, tls_cert, tls_key, client_ca;
  uint64_t lease_ttl_ms = 30000;
  int enqueue = 0;
  bool keep_serving = false;
  std::vector<std::string> command;
  app.add_option("--listen", listen, "host:port to serve on (port 0 picks one)")->capture_default_str();
  app.add_option("--token-file", token_file, "require this bearer token (the file's first line)");
  app.add_option("--tls-cert", tls_cert, "serve TLS with this certificate chain (PEM)");
  app.add_option("--tls-key", tls_key, "the TLS private key (PEM)");
  app.add_option("--client-ca", client_ca, "require client certificates signed by this CA (mTLS)");
  app.add_option("--lease-ttl-ms", lease_ttl_ms, "the ttl of grants")->capture_default_str();
  app.add_option("--enqueue", enqueue, "queue N sessions running ARGV, exit once N outcomes arrived")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--keep-serving", keep_serving, "with --enqueue: serve on after N outcomes; print a summary at exit");
  app.add_option("argv", command, "the command the enqueued sessions exec (after --)");
  CLI11_PARSE(app, argc, argv);

  if (enqueue > 0 && command.empty()) {
    std::cerr << "--enqueue needs a command after --\n";
    return 2;
  }
  if (tls_cert.empty() != tls_key.empty()) {
    std::cerr << "--tls-cert and --tls-key go together\n";
    return 2;
  }
  if (!client_ca.empty() && tls_cert.empty()) {
    std::cerr << "--client-ca needs --tls-cert and --tls-key\n";
    return 2;
  }

  sbx::testing::DoubleOptions options;
  options.address = listen;
  options.lease_ttl_ms = lease_ttl_ms;
  const std::pair<const std::string*, std::string*> files[] = {
      {&token_file, &options.token},
      {&tls_cert, &options.server_cert_pem},
      {&tls_key, &options.server_key_pem},
      {&client_ca, &options.client_ca_pem},
  };
  for (const auto& [path, out] : files) {
    if (path->empty()) continue;
    if (!ReadFile(*path, out)) {
      std::cerr << "cannot read " << *path << "\n";
      return 1;
    }
  }
  if (!token_file.empty()) {
    options.token = options.token.substr(0, options.token.find_first_of("\r\n"));
    if (options.token.empty()) {
      std::cerr << "the token file " << token_file << " is empty\n";
      return 1;
    }
  }

  // Blocked before any gRPC thread exists, so every thread inherits the mask and main takes them with
  // sigtimedwait.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto cp = ControlPlaneDouble::Start(options);
  if (!cp.ok()) {
    std::cerr << "control-plane-double: " << cp.status().ToString() << "\n";
    return 1;
  }
  // Queued before the banner: whoever reads it finds all the work there.
  v1::SandboxRequest request;
  request.set_kind(v1::FILE);
  request.set_end_after_calls(true);
  v1::Exec* exec = request.add_calls()->mutable_exec();
  for (const std::string& arg : command) exec->add_argv(arg);
  for (int i = 0; i < enqueue; ++i) (*cp)->Enqueue(request);

  std::cerr << "control-plane-double: serving WorkerGateway on " << (*cp)->target()
            << (options.server_cert_pem.empty() ? ""
                : options.client_ca_pem.empty() ? " (TLS)"
                                                : " (mTLS)")
            << "\n";

  std::set<std::string> printed;
  const timespec slice = {0, 100 * 1000 * 1000};
  while (true) {
    if (enqueue > 0) {
      for (const auto& lease : (*cp)->Leases()) {
        if (!lease.outcome.has_value() || !printed.insert(lease.lease_id).second) continue;
        std::cout << OutcomeLine(lease) << std::endl;
      }
      if (printed.size() >= static_cast<size_t>(enqueue) && !keep_serving) return 0;
    }
    const int sig = sigtimedwait(&signals, nullptr, &slice);
    if (sig == SIGINT || sig == SIGTERM) {
      std::cerr << "control-plane-double: stopping\n";
      if (keep_serving) {
        for (const auto& lease : (*cp)->Leases()) {
          nlohmann::json line = {{"summary", lease.lease_id},
                                 {"grants", lease.grants},
                                 {"outcome_reports", lease.outcome_reports}};
          std::cout << line.dump() << std::endl;
        }
        return printed.size() >= static_cast<size_t>(enqueue) ? 0 : 1;
      }
      return enqueue > 0 ? 1 : 0;
    }
  }
}
