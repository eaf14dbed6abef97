// The hostile workload of issue 11 items 9 and 10: makes files in the current directory whose names are not
// UTF-8 (argv[1] "utf8"), or carry terminal escapes (argv[1] "escapes": clear the screen, ring the bell, an
// 8-bit CSI), or both (no argument), for a client that lists them or an operator whose terminal shows them.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  const char* which = argc > 1 ? argv[1] : "";
  struct {
    const char* name;
    const char* kind;
  } names[] = {
      {"bad\xff\xfename", "utf8"},          // not UTF-8
      {"\x1b[2J\x07" "cleared", "escapes"},  // ESC [2J (clear screen) and BEL
      {"csi\xc2\x9b" "31mred", "escapes"},   // U+009B, CSI on 8-bit terminals
  };
  for (const auto& [name, kind] : names) {
    if (*which != '\0' && strcmp(which, kind) != 0) continue;
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
