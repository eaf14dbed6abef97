// Test helper: passing one file descriptor over a unix socket (SCM_RIGHTS), as a forked child hands a seccomp
// listener to its parent.
#ifndef SBX_TESTS_COMMON_FD_PASSING_H_
#define SBX_TESTS_COMMON_FD_PASSING_H_

namespace sbx::testing {

// Sends `fd` with one byte on `sock`; 0, or -1 on error. Raw syscalls only: safe in a forked child.
int SendFd(int sock, int fd);
// Receives an fd sent by SendFd (close-on-exec), or -1.
int RecvFd(int sock);

}  // namespace sbx::testing

#endif  // SBX_TESTS_COMMON_FD_PASSING_H_
