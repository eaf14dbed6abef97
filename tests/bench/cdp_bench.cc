// The CDP relay as Playwright sees it: tests/cdp/bench.mjs (page.goto of a data: page + page.screenshot, and a
// Runtime.evaluate returning 16 MiB) through `sandboxctl browser SESSION cdp` into a browser session, against
// the same script on a host Chromium started with --remote-debugging-port, in the same run. Prints medians and
// ratios. Needs node and tests/npm/node_modules (deploy/install-deps.sh).
//   cdp_bench [--runs N]
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/bench/bench_util.h"
#include "tests/common/spawn.h"
#include "tests/e2e/daemon_fixture.h"

namespace pb = ::duvo::sandbox::v1;
using sbx::bench::Capture;
using sbx::bench::Spawn;
using sbx::bench::Wait;

namespace {

nlohmann::json RunScript(const std::string& cdp_url, int runs) {
  setenv("CDP_URL", cdp_url.c_str(), 1);
  setenv("RUNS", std::to_string(runs).c_str(), 1);
  setenv("NPM_DIR", SBX_SOURCE_DIR "/tests/npm", 1);
  const std::string out = Capture({"/usr/bin/env", "node", SBX_SOURCE_DIR "/tests/cdp/bench.mjs"});
  const size_t brace = out.rfind('{');
  return brace == std::string::npos ? nlohmann::json() : nlohmann::json::parse(out.substr(brace), nullptr, false);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 20;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--runs") runs = atoi(argv[i + 1]);
  }
  if (sbx::testing::RunShell("node --version >/dev/null 2>&1").exit_code != 0 ||
      !std::filesystem::exists(SBX_SOURCE_DIR "/tests/npm/node_modules/playwright-core")) {
    fprintf(stderr, "cdp_bench: needs node (>= 20) and tests/npm/node_modules (cd tests/npm && npm ci)\n");
    return 2;
  }
  // Through the relay: a browser session of a real daemon, sandboxctl's endpoint.
  sbx::testing::Daemon daemon({});
  if (!daemon.ok()) {
    fprintf(stderr, "cdp_bench: the daemon did not start:\n%s\n", daemon.Log().c_str());
    return 1;
  }
  auto stub = daemon.NewStub();
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::BROWSER);
  pb::Session session;
  if (grpc::Status s = stub->Create(&ctx, req, &session); !s.ok()) {
    fprintf(stderr, "cdp_bench: Create: %s\n", s.error_message().c_str());
    return 1;
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return 1;
  const pid_t endpoint = Spawn({sbx::testing::CtlBin(), "--addr", daemon.address(), "browser", session.id(), "cdp",
                                "--listen", "127.0.0.1:0"},
                               false, fds[1]);
  close(fds[1]);
  std::string line;
  char c;
  while (read(fds[0], &c, 1) == 1 && c != '\n') line.push_back(c);
  const std::string port = line.substr(line.rfind(':') + 1);
  const nlohmann::json relay = RunScript("http://127.0.0.1:" + port, runs);
  kill(endpoint, SIGTERM);
  Wait(endpoint);
  close(fds[0]);

  // The anchor: a host Chromium with its own DevTools port, the same flags otherwise.
  const std::string profile = daemon.dir() + "/host-chromium";
  std::filesystem::create_directories(profile);
  const pid_t chromium = Spawn({"/usr/lib/chromium/chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
                                "--remote-debugging-port=0", "--user-data-dir=" + profile, "--no-first-run",
                                "--window-size=1280,800", "--hide-scrollbars", "--force-color-profile=srgb",
                                "about:blank"},
                               true);
  std::string active;
  for (int i = 0; i < 200 && active.empty(); ++i) {
    std::ifstream f(profile + "/DevToolsActivePort");
    std::getline(f, active);
    if (active.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const nlohmann::json host = active.empty() ? nlohmann::json() : RunScript("http://127.0.0.1:" + active, runs);
  kill(chromium, SIGTERM);
  Wait(chromium);
  if (!relay.is_object() || !host.is_object()) {
    fprintf(stderr, "cdp_bench: a run failed (relay: %s, host: %s)\n", relay.dump().c_str(), host.dump().c_str());
    return 1;
  }
  printf("| what (median of %d) | relay (browser session) | host Chromium --remote-debugging-port | ratio |\n", runs);
  printf("|---|---|---|---|\n");
  for (const char* key : {"goto_ms", "screenshot_ms", "goto_screenshot_ms", "eval_ms"}) {
    const double r = relay[key].get<double>(), h = host[key].get<double>();
    printf("| %s | %.1f ms | %.1f ms | %.2fx |\n", key, r, h, r / h);
  }
  printf("| 16 MiB Runtime.evaluate result | %.0f MiB/s | %.0f MiB/s | |\n", relay["eval_mib_per_s"].get<double>(),
         host["eval_mib_per_s"].get<double>());
  return 0;
}
