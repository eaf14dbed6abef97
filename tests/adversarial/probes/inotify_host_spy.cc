// Probe: spies on the host through inotify on what the jail shares with it. It watches /usr/bin (a
// read-only bind of a host directory), /etc/ld.so.cache (a read-only bind of a host file, opened by every
// dynamic exec on the host) and /workspace (the jail's own tmpfs), then creates /sync/ready (/sync is a
// read-write host directory the test watches) and reads events until the test creates /sync/done. Events
// arrive in order on one inotify fd, so everything the host did before `done` has been queued by then.
// Then it writes to /workspace itself, which its watch must see. Output:
//   usr_bin_events=N etc_events=N workspace_events=N [first_usr_bin=NAME]
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

namespace {

int g_fd = -1;
int g_usr = -1, g_etc = -1, g_ws = -1, g_sync = -1;
int g_usr_events = 0, g_etc_events = 0, g_ws_events = 0;
bool g_done = false;
char g_first_usr[256] = "";

// Reads what is queued, waiting up to `timeout_ms` for the first batch.
bool Drain(int timeout_ms) {
  pollfd p{g_fd, POLLIN, 0};
  int n = poll(&p, 1, timeout_ms);
  if (n <= 0) return false;
  alignas(inotify_event) char buf[65536];
  ssize_t len = read(g_fd, buf, sizeof(buf));
  if (len <= 0) return false;
  for (char* at = buf; at < buf + len;) {
    const auto* ev = reinterpret_cast<const inotify_event*>(at);
    if (ev->wd == g_usr) {
      if (g_usr_events++ == 0 && ev->len > 0) snprintf(g_first_usr, sizeof(g_first_usr), "%s", ev->name);
    } else if (ev->wd == g_etc) {
      ++g_etc_events;
    } else if (ev->wd == g_ws) {
      ++g_ws_events;
    } else if (ev->wd == g_sync && (ev->mask & IN_CREATE) && ev->len > 0 && strcmp(ev->name, "done") == 0) {
      g_done = true;
    }
    at += sizeof(inotify_event) + ev->len;
  }
  return true;
}

int Fail(const char* what) {
  printf("error %s: %s\n", what, strerror(errno));
  return 1;
}

}  // namespace

int main() {
  g_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (g_fd < 0) return Fail("inotify_init1");
  const uint32_t kSpy = IN_OPEN | IN_ACCESS | IN_CLOSE_NOWRITE;
  if ((g_usr = inotify_add_watch(g_fd, "/usr/bin", kSpy)) < 0) return Fail("watch /usr/bin");
  if ((g_etc = inotify_add_watch(g_fd, "/etc/ld.so.cache", kSpy)) < 0) return Fail("watch /etc/ld.so.cache");
  if ((g_ws = inotify_add_watch(g_fd, "/workspace", kSpy | IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE)) < 0) {
    return Fail("watch /workspace");
  }
  if ((g_sync = inotify_add_watch(g_fd, "/sync", IN_CREATE)) < 0) return Fail("watch /sync");

  int ready = open("/sync/ready", O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (ready < 0) return Fail("create /sync/ready");
  close(ready);

  // The test creates /sync/done within seconds; 60 s bounds a broken test.
  for (int waited = 0; !g_done && waited < 600; ++waited) Drain(100);
  if (!g_done) {
    printf("timeout waiting for /sync/done\n");
    return 1;
  }
  const int usr_before_own_write = g_usr_events;
  const int etc_before_own_write = g_etc_events;
  const int ws_before_own_write = g_ws_events;

  int fd = open("/workspace/probe.txt", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Fail("create /workspace/probe.txt");
  if (write(fd, "x", 1) != 1) return Fail("write /workspace/probe.txt");
  close(fd);
  for (int waited = 0; g_ws_events == ws_before_own_write && waited < 50; ++waited) Drain(100);

  printf("usr_bin_events=%d etc_events=%d workspace_events=%d first_usr_bin=%s\n", usr_before_own_write,
         etc_before_own_write, g_ws_events - ws_before_own_write, g_first_usr[0] ? g_first_usr : "-");
  return 0;
}
