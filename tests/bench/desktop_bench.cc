// Desktop sessions: Create -> first screenshot, screenshot latency and frames per second at 1280x800, and
// the input round trip, through the daemon (a jail with Xvfb; sandbox-init's xcb/XTEST), side by side with
// an anchor on the host in the same run: Xvfb started directly, `xwd -root` (a raw dump, no PNG) for the
// screenshot and `xdotool mousemove` for input, each a process of its own as a shell user would run them.
//
//   desktop_bench [--creates N] [--shots N] [--moves N]
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/bench/bench_util.h"
#include "tests/e2e/daemon_fixture.h"

extern char** environ;

namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// A display number no X server on this host uses (no lock file, no socket): never another server's.
int FreeDisplay() {
  for (int d = 90; d < 900; ++d) {
    struct stat st;
    if (stat(("/tmp/.X" + std::to_string(d) + "-lock").c_str(), &st) == 0) continue;
    if (stat(("/tmp/.X11-unix/X" + std::to_string(d)).c_str(), &st) == 0) continue;
    return d;
  }
  fprintf(stderr, "no free X display number between :90 and :899\n");
  exit(1);
}

// Starts a host Xvfb on `display` (a free one) and waits for its socket; returns its pid.
pid_t HostXvfb(int display) {
  const std::string socket = "/tmp/.X11-unix/X" + std::to_string(display);
  const pid_t pid = sbx::bench::Spawn({"/usr/bin/Xvfb", ":" + std::to_string(display), "-screen", "0", "1280x800x24",
                                       "-nolisten", "tcp", "-noreset"},
                                      /*quiet_stderr=*/true);
  for (int i = 0; i < 2000; ++i) {
    struct stat st;
    if (stat(socket.c_str(), &st) == 0) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  fprintf(stderr, "host Xvfb :%d did not start\n", display);
  exit(1);
}

void StopXvfb(pid_t pid) {
  kill(pid, SIGTERM);
  int status;
  waitpid(pid, &status, 0);
}

bool Call(pb::Sandboxes::StubInterface* stub, const std::string& id, const pb::DesktopAction& action) {
  pb::ToolCall call;
  *call.mutable_desktop() = action;
  sbx::testing::CallResult r = sbx::testing::RunCall(stub, id, call);
  return r.has_finished && r.finished.has_result();
}

}  // namespace

int main(int argc, char** argv) {
  int creates = 20, shots = 100, moves = 200;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--creates") == 0) creates = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--shots") == 0) shots = atoi(argv[i + 1]);
    if (strcmp(argv[i], "--moves") == 0) moves = atoi(argv[i + 1]);
  }
  for (const char* tool : {"/usr/bin/Xvfb", "/usr/bin/xwd", "/usr/bin/xdotool"}) {
    if (access(tool, X_OK) != 0) {
      fprintf(stderr, "desktop_bench needs %s (deploy/install-deps.sh installs it)\n", tool);
      return 1;
    }
  }
  sbx::testing::Daemon daemon({});
  if (!daemon.ok()) {
    fprintf(stderr, "the daemon did not start:\n%s\n", daemon.Log().c_str());
    return 1;
  }
  auto stub = daemon.NewStub();
  pb::DesktopAction screenshot;
  screenshot.mutable_screenshot();

  // Create -> first screenshot, and the anchor: host Xvfb start -> first xwd.
  std::vector<double> create_ms, anchor_create_ms;
  for (int i = 0; i < creates; ++i) {
    const auto t0 = Clock::now();
    grpc::ClientContext ctx;
    pb::CreateRequest req;
    req.set_kind(pb::DESKTOP);
    pb::Session session;
    if (!stub->Create(&ctx, req, &session).ok() || !Call(stub.get(), session.id(), screenshot)) {
      fprintf(stderr, "create or screenshot failed:\n%s\n", daemon.Log().c_str());
      return 1;
    }
    create_ms.push_back(Ms(Clock::now() - t0));
    grpc::ClientContext dctx;
    pb::DeleteRequest del;
    del.set_session_id(session.id());
    pb::DeleteResponse dresp;
    (void)stub->Delete(&dctx, del, &dresp);

    const auto a0 = Clock::now();
    const int display = FreeDisplay();
    const pid_t xvfb = HostXvfb(display);
    sbx::bench::RunQuiet({"/usr/bin/xwd", "-root", "-silent", "-display", ":" + std::to_string(display)},
                         /*quiet_stderr=*/true);
    anchor_create_ms.push_back(Ms(Clock::now() - a0));
    StopXvfb(xvfb);
  }

  // Steady state on one session: screenshots and input round trips.
  grpc::ClientContext ctx;
  pb::CreateRequest req;
  req.set_kind(pb::DESKTOP);
  pb::Session session;
  if (!stub->Create(&ctx, req, &session).ok()) return 1;
  std::vector<double> shot_ms, move_ms, anchor_shot_ms, anchor_move_ms;
  const int display = FreeDisplay();
  const std::string display_name = ":" + std::to_string(display);
  const pid_t xvfb = HostXvfb(display);
  for (int i = 0; i < shots; ++i) {
    const auto t0 = Clock::now();
    if (!Call(stub.get(), session.id(), screenshot)) return 1;
    shot_ms.push_back(Ms(Clock::now() - t0));
    const auto a0 = Clock::now();
    sbx::bench::RunQuiet({"/usr/bin/xwd", "-root", "-silent", "-display", display_name}, /*quiet_stderr=*/true);
    anchor_shot_ms.push_back(Ms(Clock::now() - a0));
  }
  const auto fps_start = Clock::now();
  for (int i = 0; i < shots; ++i) Call(stub.get(), session.id(), screenshot);
  const double fps = shots / std::chrono::duration<double>(Clock::now() - fps_start).count();
  for (int i = 0; i < moves; ++i) {
    pb::DesktopAction move;
    move.mutable_mouse_move()->set_x(i % 1280);
    move.mutable_mouse_move()->set_y(i % 800);
    const auto t0 = Clock::now();
    if (!Call(stub.get(), session.id(), move)) return 1;
    move_ms.push_back(Ms(Clock::now() - t0));
    const auto a0 = Clock::now();
    setenv("DISPLAY", display_name.c_str(), 1);
    sbx::bench::RunQuiet({"/usr/bin/xdotool", "mousemove", std::to_string(i % 1280), std::to_string(i % 800)}, /*quiet_stderr=*/true);
    anchor_move_ms.push_back(Ms(Clock::now() - a0));
  }
  StopXvfb(xvfb);

  printf("desktop_bench: 1280x800, %u cores\n", std::thread::hardware_concurrency());
  printf("Create -> first screenshot (PNG), %d runs:\n", creates);
  printf("  desktop session        p50 %8.2f ms\n", sbx::bench::Percentile(create_ms, 0.5));
  printf("  anchor: host Xvfb+xwd  p50 %8.2f ms   ratio %.2f\n", sbx::bench::Percentile(anchor_create_ms, 0.5),
         sbx::bench::Percentile(create_ms, 0.5) / sbx::bench::Percentile(anchor_create_ms, 0.5));
  printf("screenshot, %d runs:\n", shots);
  printf("  desktop session (PNG)  p50 %8.2f ms   p99 %8.2f ms   %.1f frames/s\n", sbx::bench::Percentile(shot_ms, 0.5),
         sbx::bench::Percentile(shot_ms, 0.99), fps);
  printf("  anchor: xwd -root      p50 %8.2f ms   ratio %.2f\n", sbx::bench::Percentile(anchor_shot_ms, 0.5),
         sbx::bench::Percentile(shot_ms, 0.5) / sbx::bench::Percentile(anchor_shot_ms, 0.5));
  printf("input round trip (mouse_move), %d runs:\n", moves);
  printf("  desktop session        p50 %8.2f ms   p99 %8.2f ms\n", sbx::bench::Percentile(move_ms, 0.5), sbx::bench::Percentile(move_ms, 0.99));
  printf("  anchor: xdotool        p50 %8.2f ms   ratio %.2f\n", sbx::bench::Percentile(anchor_move_ms, 0.5),
         sbx::bench::Percentile(move_ms, 0.5) / sbx::bench::Percentile(anchor_move_ms, 0.5));
  return 0;
}
