// Browser sessions: cold Create -> first screenshot of a local page through the daemon, and the session's
// peak memory, side by side with an anchor in the same run: Debian's Chromium run directly on the host to
// screenshot the same page (`chromium --headless --screenshot`, one process, no jail, no API), on both
// cores and, as a second anchor, on one (`taskset -c 0`): the browser policy gives a session one CPU.
//
//   browser_bench [--runs N]
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"
#include "tests/e2e/daemon_fixture.h"

namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

constexpr char kChromium[] = "/usr/lib/chromium/chromium";
constexpr char kPage[] = "<html><body style=\"background:#0a78c8\"><h1>benchmark page</h1></body></html>";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

bool Call(pb::Sandboxes::StubInterface* stub, const std::string& id, const pb::ToolCall& call) {
  sbx::testing::CallResult r = sbx::testing::RunCall(stub, id, call);
  return r.has_finished && r.finished.has_result();
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--runs") == 0) runs = atoi(argv[i + 1]);
  }
  if (access(kChromium, X_OK) != 0) {
    fprintf(stderr, "browser_bench needs %s (deploy/install-deps.sh installs chromium)\n", kChromium);
    return 1;
  }
  const std::string dir = std::filesystem::temp_directory_path() / ("sbx-browser-bench-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/page.html") << kPage;

  sbx::testing::Daemon daemon({});
  if (!daemon.ok()) {
    fprintf(stderr, "the daemon did not start:\n%s\n", daemon.Log().c_str());
    return 1;
  }
  auto stub = daemon.NewStub();
  // Create -> write the page -> navigate -> screenshot; the session's peak memory after a Cancel.
  // Each run's steps, for where the time goes: Create, write, navigate, screenshot.
  std::vector<double> cold_steps[4], warm_steps[4];
  std::vector<double>* step_ms = cold_steps;
  const auto one = [&](pb::Sandboxes::StubInterface* s, double* ms, double* peak) -> bool {
    const auto t0 = Clock::now();
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::BROWSER);
    pb::Session session;
    if (!s->Create(&ctx, req, &session).ok()) return false;
    const auto t1 = Clock::now();
    pb::ToolCall write;
    write.mutable_write_file()->set_path("/workspace/page.html");
    write.mutable_write_file()->set_data(kPage);
    pb::ToolCall nav;
    nav.mutable_browser()->mutable_navigate()->set_url("file:///workspace/page.html");
    pb::ToolCall shot;
    shot.mutable_browser()->mutable_screenshot();
    if (!Call(s, session.id(), write)) return false;
    const auto t2 = Clock::now();
    if (!Call(s, session.id(), nav)) return false;
    const auto t3 = Clock::now();
    if (!Call(s, session.id(), shot)) return false;
    const auto t4 = Clock::now();
    *ms = Ms(t4 - t0);
    step_ms[0].push_back(Ms(t1 - t0));
    step_ms[1].push_back(Ms(t2 - t1));
    step_ms[2].push_back(Ms(t3 - t2));
    step_ms[3].push_back(Ms(t4 - t3));
    grpc::ClientContext cctx;
    pb::CancelRequest cancel;
    cancel.set_session_id(session.id());
    pb::Session ended;
    if (s->Cancel(&cctx, cancel, &ended).ok() && peak != nullptr) {
      *peak = static_cast<double>(ended.outcome().usage().max_memory_bytes()) / (1 << 20);
    }
    grpc::ClientContext dctx;
    pb::DeleteRequest del;
    del.set_session_id(session.id());
    pb::DeleteResponse dresp;
    (void)s->Delete(&dctx, del, &dresp);
    return true;
  };
  // The jail's share of a browser Create: a file session's Create (jail, cgroup, sandbox-init, the init
  // handshake) on the same daemon. The rest of a browser Create is Chromium's start to its first target.
  const auto file_create = [&](pb::Sandboxes::StubInterface* s) -> double {
    const auto t0 = Clock::now();
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::FILE);
    pb::Session session;
    if (!s->Create(&ctx, req, &session).ok()) return -1;
    const double ms = Ms(Clock::now() - t0);
    grpc::ClientContext dctx;
    pb::DeleteRequest del;
    del.set_session_id(session.id());
    pb::DeleteResponse dresp;
    (void)s->Delete(&dctx, del, &dresp);
    return ms;
  };
  std::vector<double> cold_ms, warm_ms, anchor_ms, anchor_one_cpu_ms, peak_mib, jail_ms;
  for (int i = 0; i < runs; ++i) {
    const double jail = file_create(stub.get());
    if (jail < 0) {
      fprintf(stderr, "a file session's Create failed:\n%s\n", daemon.Log().c_str());
      return 1;
    }
    jail_ms.push_back(jail);
    double ms = 0, peak = 0;
    if (!one(stub.get(), &ms, &peak)) {
      fprintf(stderr, "a browser call failed:\n%s\n", daemon.Log().c_str());
      return 1;
    }
    cold_ms.push_back(ms);
    peak_mib.push_back(peak);
    for (const bool one_cpu : {false, true}) {
      const std::string profile = dir + "/profile-" + std::to_string(i);
      std::vector<std::string> argv = {kChromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                       "--user-data-dir=" + profile, "--screenshot=" + dir + "/anchor.png",
                                       "--window-size=1280,800", "file://" + dir + "/page.html"};
      if (one_cpu) argv.insert(argv.begin(), {"taskset", "-c", "0"});
      const auto a0 = Clock::now();
      sbx::bench::RunQuiet(argv, /*quiet_stderr=*/true);
      (one_cpu ? anchor_one_cpu_ms : anchor_ms).push_back(Ms(Clock::now() - a0));
      std::error_code ec;
      std::filesystem::remove_all(profile, ec);
    }
  }
  {
    // The warm pool: a daemon keeping one browser started; each run waits for the pool to refill first.
    sbx::testing::Daemon warm({{"warm_browsers: 1"}, {}});
    if (!warm.ok()) {
      fprintf(stderr, "the warm daemon did not start:\n%s\n", warm.Log().c_str());
      return 1;
    }
    auto warm_stub = warm.NewStub();
    step_ms = warm_steps;
    for (int i = 0; i < runs; ++i) {
      // The pool's refill (a Chromium start, seconds on a slow machine) must be done, or the run is cold.
      if (!warm.WaitForMetric("sandbox_agent_warm_browsers", 1, std::chrono::seconds(60))) {
        fprintf(stderr, "the warm pool did not refill within 60 s:\n%s\n", warm.Log().c_str());
        return 1;
      }
      double ms = 0;
      if (!one(warm_stub.get(), &ms, nullptr)) {
        fprintf(stderr, "a warm browser call failed:\n%s\n", warm.Log().c_str());
        return 1;
      }
      warm_ms.push_back(ms);
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);

  printf("browser_bench: 1280x800 viewport, a local page, %u cores, %d runs\n", std::thread::hardware_concurrency(),
         runs);
  printf("cold Create -> first screenshot (jail, Chromium start, navigate, PNG over the API):\n");
  printf("  browser session            p50 %8.1f ms   p90 %8.1f ms\n", sbx::bench::Percentile(cold_ms, 0.5),
         sbx::bench::Percentile(cold_ms, 0.9));
  printf("  anchor: chromium --screenshot on the host  p50 %8.1f ms   ratio %.2f\n",
         sbx::bench::Percentile(anchor_ms, 0.5),
         sbx::bench::Percentile(cold_ms, 0.5) / sbx::bench::Percentile(anchor_ms, 0.5));
  printf("  anchor on one CPU (taskset -c 0; the policy's cpu limit is one CPU)  p50 %8.1f ms   ratio %.2f\n",
         sbx::bench::Percentile(anchor_one_cpu_ms, 0.5),
         sbx::bench::Percentile(cold_ms, 0.5) / sbx::bench::Percentile(anchor_one_cpu_ms, 0.5));
  printf("peak memory per browser session (the cgroup's high-water mark): p50 %.0f MiB, max %.0f MiB\n",
         sbx::bench::Percentile(peak_mib, 0.5), sbx::bench::Percentile(peak_mib, 1.0));
  printf("warm Create -> first screenshot (a browser from the pool):\n");
  printf("  browser session            p50 %8.1f ms   p90 %8.1f ms\n", sbx::bench::Percentile(warm_ms, 0.5),
         sbx::bench::Percentile(warm_ms, 0.9));
  const auto steps = [](const char* what, std::vector<double>* v) {
    printf("  %s steps, p50: Create %.1f ms, write the page %.1f ms, navigate %.1f ms, screenshot %.1f ms\n", what,
           sbx::bench::Percentile(v[0], 0.5), sbx::bench::Percentile(v[1], 0.5), sbx::bench::Percentile(v[2], 0.5),
           sbx::bench::Percentile(v[3], 0.5));
  };
  steps("cold", cold_steps);
  const double jail_p50 = sbx::bench::Percentile(jail_ms, 0.5);
  printf("  cold Create, p50: the jail and sandbox-init (a file session's Create) %.1f ms, Chromium's start to its\n"
         "  first target (the rest) %.1f ms\n",
         jail_p50, sbx::bench::Percentile(cold_steps[0], 0.5) - jail_p50);
  steps("warm", warm_steps);
  printf("targets: cold < 1.5 s, warm < 150 ms\n");
  return 0;
}
