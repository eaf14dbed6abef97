// PID 1's duties in the serving mode: the signals sent to init (a termination from outside the jail is
// forwarded to every command), and reaping every child, commands, drivers' processes and orphans alike.
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "sandbox/init/server.h"

namespace sbx::sandbox::serve {

void Server::OnSignals() {
  signalfd_siginfo info;
  while (read(signals_.fd.get(), &info, sizeof(info)) == sizeof(info)) {
    if (info.ssi_signo == SIGCHLD) continue;  // reaped below
    // NOTE: only the agent may end the jail this way; the workload runs as init's uid and may signal PID 1
    // too. Trusted: kill(2) or pidfd_send_signal from outside the pid namespace, which the kernel marks
    // SI_USER with no sender pid visible here (0). Everything else is ignored:
    //  - kill(2) from inside the jail: SI_USER, but the sender's pid is set;
    //  - rt_sigqueueinfo/pidfd_send_signal with a siginfo of the workload's making: it may put 0 in si_pid,
    //    but the kernel refuses si_code >= 0 (SI_USER is 0) for a signal to another process;
    //  - F_SETOWN 1 + F_SETSIG + O_ASYNC: the kernel sends the signal itself, with si_code POLL_* and no pid.
    if (info.ssi_code != SI_USER || info.ssi_pid != 0) continue;
    if (!terminating_) {
      terminating_ = true;
      KillAll(static_cast<int>(info.ssi_signo));
    } else {
      KillAll(SIGKILL);  // a second one: no more grace
    }
  }
  ReapChildren();
  if (terminating_) {
    // Shutting down, a command ends when it is reaped, even if a process outside its group still holds its
    // output open.
    std::vector<uint64_t> ids;
    for (const auto& [id, e] : execs_) ids.push_back(id);
    for (uint64_t id : ids) {
      if (Exec* e = FindExec(id)) MaybeFinish(*e);
    }
  }
}

void Server::ReapChildren() {
  for (;;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) break;
    DriverChildExited(pid, status);
    const auto it = pids_.find(pid);
    if (it == pids_.end()) continue;  // an orphan re-parented to PID 1
    Exec* e = FindExec(it->second);
    pids_.erase(it);
    if (e == nullptr) continue;
    e->reaped = true;
    e->wait_status = status;
    // Its last output is read at once: no read waits for more writes of a command that has ended (ExecEnd
    // would come kReadCoalesce late).
    e->deferred[1] = e->deferred[2] = false;
    UpdateExecEvents(*e);
    MaybeFinish(*e);
  }
}

void Server::KillAll(int sig) {
  for (auto& [id, e] : execs_) kill(-e->pid, sig);
}

}  // namespace sbx::sandbox::serve
