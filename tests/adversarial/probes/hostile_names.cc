// The hostile workload of issue 11 items 9 and 10: makes files in the current directory whose names are not
// UTF-8, or carry terminal escapes (clear the screen, ring the bell, an 8-bit CSI), for a client that lists
// them or an operator whose terminal shows them.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

int main() {
  const char* names[] = {
      "bad\xff\xfename",          // not UTF-8
      "\x1b[2J\x07" "cleared",    // ESC [2J (clear screen) and BEL
      "csi\xc2\x9b" "31mred",     // U+009B, CSI on 8-bit terminals
  };
  for (const char* name : names) {
    const int fd = open(name, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      perror("open");
      return 1;
    }
    close(fd);
  }
  puts("made");
  return 0;
}
