#include "agent/run/run_command.h"

#include <signal.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/run/init_locator.h"
#include "agent/run/outcome_json.h"
#include "sandbox/cgroup/cgroup.h"
#include "sandbox/jail.h"
#include "sandbox/oom_score.h"
#include "sandbox/policy/policy_builder.h"
#include "sandbox/policy/policy_loader.h"
#include "base/status.h"
#include "base/unique_fd.h"

extern char** environ;

namespace sbx::agent {
namespace {

constexpr char kInstalledFilePolicy[] = "/etc/sandbox-agent/policies/file.textproto";

absl::StatusOr<uint64_t> ParseBytes(std::string_view flag, std::string text) {
  uint64_t multiplier = 1;
  if (!text.empty()) {
    switch (text.back()) {
      case 'k': case 'K': multiplier = 1ull << 10; break;
      case 'm': case 'M': multiplier = 1ull << 20; break;
      case 'g': case 'G': multiplier = 1ull << 30; break;
      default: break;
    }
    if (multiplier != 1) text.pop_back();
  }
  uint64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value > UINT64_MAX / multiplier) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(flag), ": '", text, "' is not a byte count (e.g. 268435456 or 256M)"));
  }
  return value * multiplier;
}

// "SRC[:DST]" -> (SRC, DST). The source must exist on the host now, so the error names the flag.
absl::StatusOr<std::pair<std::string, std::string>> ParseBind(std::string_view flag, const std::string& spec) {
  const size_t colon = spec.find(':');
  std::string src = spec.substr(0, colon);
  std::string dst = colon == std::string::npos ? src : spec.substr(colon + 1);
  if (src.empty() || dst.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(ToAbsl(flag), " '", spec, "': expected SRC[:DST]"));
  }
  char resolved[PATH_MAX];
  if (realpath(src.c_str(), resolved) == nullptr) {
    return ErrnoToStatus(errno, absl::StrCat(ToAbsl(flag), " '", spec, "': source ", src));
  }
  return std::make_pair(std::string(resolved), dst);
}

absl::StatusOr<sandbox::Policy> LoadPolicy(const RunFlags& flags) {
  if (!flags.policy_path.empty()) return sandbox::LoadPolicyFile(flags.policy_path);
  if (access(kInstalledFilePolicy, R_OK) == 0) return sandbox::LoadPolicyFile(kInstalledFilePolicy);
  return sandbox::DefaultFilePolicy();
}

absl::StatusOr<sandbox::Policy> EffectivePolicy(const RunFlags& flags) {
  ASSIGN_OR_RETURN(sandbox::Policy base, LoadPolicy(flags));
  sandbox::PolicyNarrowing narrowing;
  if (flags.time_limit_seconds) {
    const double s = *flags.time_limit_seconds;
    if (!(s > 0) || !std::isfinite(s) || s > 7 * 24 * 3600.0) {
      return absl::InvalidArgumentError(absl::StrCat("--time-limit: ", s, " is not a duration in seconds (0 < s <= 604800)"));
    }
    narrowing.wall_time_limit_ms = static_cast<uint64_t>(std::ceil(s * 1000));
  }
  if (flags.memory_limit) {
    ASSIGN_OR_RETURN(narrowing.memory_max_bytes, ParseBytes("--memory-limit", *flags.memory_limit));
  }
  if (flags.pids_limit) narrowing.pids_max = *flags.pids_limit;
  ASSIGN_OR_RETURN(sandbox::Policy narrowed, sandbox::NarrowPolicy(base, narrowing));

  sandbox::PolicyBuilder builder(narrowed);
  for (const std::string& spec : flags.ro_binds) {
    ASSIGN_OR_RETURN(auto bind, ParseBind("--ro-bind", spec));
    builder.AddBind(bind.first, bind.second, /*writable=*/false);
  }
  for (const std::string& spec : flags.rw_binds) {
    ASSIGN_OR_RETURN(auto bind, ParseBind("--rw-bind", spec));
    builder.AddBind(bind.first, bind.second, /*writable=*/true);
  }
  for (const std::string& kv : flags.env) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--env '", kv, "': expected KEY=VALUE"));
    }
    builder.SetEnv(kv.substr(0, eq), kv.substr(eq + 1));
  }
  if (!flags.cwd.empty()) builder.SetWorkdir(flags.cwd);
  return builder.TryBuild();
}

int SetupError(const RunFlags& flags, const absl::Status& status) {
  fprintf(stderr, "sandbox-agent: %.*s\n", static_cast<int>(status.message().size()), status.message().data());
  if (!flags.outcome_json.empty()) {
    sandbox::RunResult result;
    result.status = sandbox::RunStatus::kFailed;
    result.reason = sandbox::RunReason::kSetupError;
    result.message = std::string(status.message());
    if (absl::Status s = WriteOutcomeJson(result, flags.outcome_json); !s.ok()) {
      fprintf(stderr, "sandbox-agent: %.*s\n", static_cast<int>(s.message().size()), s.message().data());
    }
  }
  return 125;
}

// The jail's cgroups: `layout` when it could be prepared. Rootless without a delegated cgroup, the run goes on
// with a warning; as root, that is a setup error.
absl::Status UseCgroups(const sandbox::Policy& policy, absl::StatusOr<sandbox::CgroupLayout>& layout,
                        sandbox::JailOptions& options) {
  if (layout.ok()) {
    options.cgroups = &*layout;
  } else if (geteuid() != 0) {
    // Rootless without a delegated cgroup: say plainly what is not enforced.
    const sandbox::Limits& l = policy.limits();
    std::string warning = absl::StrCat(
        "rootless: cgroup limits are NOT enforced (memory ", l.memory_max_bytes, " bytes, pids ", l.pids_max,
        ", cpu ", l.cpu_millicores, " millicores): ", layout.status().message(),
        "; run as root or delegate a cgroup to this user");
    fprintf(stderr, "sandbox-agent: warning: %s\n", warning.c_str());
    options.warnings.push_back(std::move(warning));
  } else {
    return Annotate(layout.status(), "cgroups");
  }
  return absl::OkStatus();
}

// Signals to the agent are forwarded to the workload (and mark the run canceled): blocked here, read from the
// returned signalfd by Jail::Wait.
absl::StatusOr<UniqueFd> BlockForwardedSignals() {
  sigset_t forwarded;
  sigemptyset(&forwarded);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&forwarded, sig);
  sigprocmask(SIG_BLOCK, &forwarded, nullptr);
  UniqueFd signals(signalfd(-1, &forwarded, SFD_CLOEXEC));
  if (!signals) return ErrnoToStatus(errno, "signalfd");
  return signals;
}

// Seccomp denials (policy audit_denials): one stderr line each, and the outcome JSON's seccomp_audits. The
// supervisor's rate limit bounds them per second; this bounds what the JSON holds over a long run. Record runs
// on the jail's supervisor thread.
class SeccompAudits {
 public:
  static constexpr size_t kMaxJsonAudits = 1000;

  void Record(const sandbox::SeccompAudit& a) {
    const std::string line =
        a.kind == sandbox::SeccompAudit::Kind::kSuppressed
            ? absl::StrCat(SeccompAuditAction(a.kind), ": ", a.suppressed,
                           " more denials (rate limit: audits past it are only counted)")
            : absl::StrCat(SeccompAuditAction(a.kind), ": ", a.syscall, "(", a.args, ") by pid ", a.pid, " \"",
                           a.comm, "\"",
                           a.kind == sandbox::SeccompAudit::Kind::kDenied ? absl::StrCat(": errno ", a.errno_value)
                                                                          : ": killed");
    fprintf(stderr, "sandbox-agent: %s\n", line.c_str());
    absl::MutexLock lock(&mu_);
    if (audits_.size() < kMaxJsonAudits) {
      audits_.push_back(a);
    } else {
      ++dropped_;
    }
  }

  // Once the supervisor has stopped: the audits kept, and how many past kMaxJsonAudits were not.
  std::vector<sandbox::SeccompAudit> Take(uint64_t* dropped) {
    absl::MutexLock lock(&mu_);
    *dropped = dropped_;
    return std::move(audits_);
  }

 private:
  absl::Mutex mu_;
  std::vector<sandbox::SeccompAudit> audits_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

// The run's end: its failure on stderr, the outcome JSON, and the exit status.
int FinishRun(const RunFlags& flags, const sandbox::RunResult& result,
              const std::vector<sandbox::SeccompAudit>& audits) {
  if (result.status == sandbox::RunStatus::kFailed && !result.message.empty()) {
    fprintf(stderr, "sandbox-agent: %s: %s\n", std::string(sandbox::RunReasonName(result.reason)).c_str(),
            result.message.c_str());
  }
  if (!flags.outcome_json.empty()) {
    if (absl::Status s = WriteOutcomeJson(result, flags.outcome_json, audits); !s.ok()) {
      fprintf(stderr, "sandbox-agent: %.*s\n", static_cast<int>(s.message().size()), s.message().data());
    }
  }
  const int code = sandbox::ExitStatusFor(result);
#if !defined(__SANITIZE_ADDRESS__)
  // The run is over and everything it owed is written: end here rather than return through the static
  // destructors (protobuf's descriptor pools, locale caches), a few hundred microseconds of every start that
  // release nothing the kernel would not. Sanitizer builds return, for the leak check at exit.
  fflush(nullptr);
  _exit(code);
#endif
  return code;
}

}  // namespace

int RunCommand(const RunFlags& flags) {
  if (flags.command.empty()) {
    return SetupError(flags, absl::InvalidArgumentError(
                                 "run: no command given (usage: sandbox-agent run [FLAGS] -- COMMAND [ARG...])"));
  }
  absl::StatusOr<sandbox::Policy> policy = EffectivePolicy(flags);
  if (!policy.ok()) return SetupError(flags, policy.status());
  // The OOM killer should pick the jail (set to 1000 by Jail::Start), never the agent that reports on it.
  // Without CAP_SYS_RESOURCE (most containers, some hosts' root) that cannot be done: the outcome's warnings
  // say so and the run goes on. NOTE: not on stderr, which is the workload's and, on a setup error, carries
  // exactly one line naming the problem; a one-shot agent that could not lower itself would print it on
  // every run.
  std::vector<std::string> warnings;
  if (absl::Status s = sandbox::ProtectAgentFromOomKiller(); !s.ok()) warnings.emplace_back(s.message());
  absl::StatusOr<std::string> init = LocateInit(flags.init_path);
  if (!init.ok()) return SetupError(flags, init.status());

  sandbox::JailOptions options;
  options.argv = flags.command;
  options.init_path = *init;
  // The jail child stays PID 1 instead of exec'ing sandbox-init (~2 ms less per run): `run` is a small
  // process, so the fork-style clone this needs is cheap (sandbox/jail.h).
  options.in_process_init = true;
  options.host_environ = environ;
  options.name = absl::StrCat("run-", getpid());
  options.warnings = std::move(warnings);
  absl::StatusOr<sandbox::CgroupLayout> layout = sandbox::PrepareCgroupLayout();
  if (absl::Status s = UseCgroups(*policy, layout, options); !s.ok()) return SetupError(flags, s);

  absl::StatusOr<UniqueFd> signals = BlockForwardedSignals();
  if (!signals.ok()) return SetupError(flags, signals.status());

  SeccompAudits audits;
  options.seccomp_audit = [&audits](const sandbox::SeccompAudit& a) { audits.Record(a); };
  absl::StatusOr<std::unique_ptr<sandbox::Jail>> jail = sandbox::Jail::Start(*policy, options);
  if (!jail.ok()) return SetupError(flags, jail.status());
  sandbox::RunResult result = (*jail)->Wait(signals->get());
  jail->reset();  // the supervisor has stopped: the audits are all in
  uint64_t audits_dropped = 0;
  const std::vector<sandbox::SeccompAudit> kept = audits.Take(&audits_dropped);
  if (audits_dropped > 0) {
    result.warnings.push_back(absl::StrCat("seccomp_audits: ", audits_dropped, " records past the first ",
                                           SeccompAudits::kMaxJsonAudits, " are on stderr only"));
  }
  return FinishRun(flags, result, kept);
}

}  // namespace sbx::agent
