// xgrab: a hostile X client. It connects to the session's display (DISPLAY=:N, the jail's
// /tmp/.X11-unix/XN socket) with the raw X11 protocol, sends GrabServer, makes sure the server has processed
// it (a GetInputFocus round trip), prints "grabbed=1" and holds the grab until it is killed. While a client
// holds the server grabbed, the X server answers no other client: the session's own screenshots and input
// included.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace {

bool ReadAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t r = read(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

bool WriteAll(int fd, const void* buf, size_t n) { return write(fd, buf, n) == static_cast<ssize_t>(n); }

}  // namespace

int main() {
  const char* display = getenv("DISPLAY");
  if (display == nullptr || display[0] != ':') return fprintf(stderr, "xgrab: no DISPLAY\n"), 2;
  const int number = atoi(display + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  snprintf(addr.sun_path, sizeof(addr.sun_path), "/tmp/.X11-unix/X%d", number);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0) return perror("xgrab: connect"), 1;
  // Connection setup, little-endian, protocol 11.0, no authorization.
  const uint8_t setup[12] = {'l', 0, 11, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  if (!WriteAll(fd, setup, sizeof(setup))) return perror("xgrab: setup"), 1;
  uint8_t head[8];
  if (!ReadAll(fd, head, sizeof(head)) || head[0] != 1) return fprintf(stderr, "xgrab: setup refused\n"), 1;
  const size_t extra = static_cast<size_t>(head[6] | (head[7] << 8)) * 4;
  char* rest = static_cast<char*>(malloc(extra));
  if (!ReadAll(fd, rest, extra)) return fprintf(stderr, "xgrab: short setup reply\n"), 1;
  free(rest);
  // GrabServer (opcode 36), then GetInputFocus (43) whose reply says the grab is in place.
  const uint8_t requests[8] = {36, 0, 1, 0, 43, 0, 1, 0};
  if (!WriteAll(fd, requests, sizeof(requests))) return perror("xgrab: grab"), 1;
  uint8_t reply[32];
  if (!ReadAll(fd, reply, sizeof(reply)) || reply[0] != 1) return fprintf(stderr, "xgrab: no reply\n"), 1;
  printf("grabbed=1\n");
  fflush(stdout);
  for (;;) pause();
}
