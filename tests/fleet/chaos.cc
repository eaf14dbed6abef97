#include "tests/fleet/chaos.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/common/host_state.h"
#include "tests/fleet/agent_process.h"

namespace sbx::testing {
namespace {

namespace pb = ::duvo::sandbox::v1;
using std::chrono::milliseconds;
using Method = ControlPlaneDouble::Method;

std::string ReadAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// --- What is on the host -----------------------------------------------------------------------------------

// Processes whose cgroup path names one of `sessions`.
std::vector<std::string> ProcessesInSessions(const std::set<std::string>& sessions) {
  std::vector<std::string> out;
  DIR* d = opendir("/proc");
  while (d != nullptr) {
    dirent* e = readdir(d);
    if (e == nullptr) break;
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string cgroups = ReadAll(std::string("/proc/") + e->d_name + "/cgroup");
    for (size_t pos = cgroups.find("session-"); pos != std::string::npos; pos = cgroups.find("session-", pos + 1)) {
      size_t end = pos + 8;
      while (end < cgroups.size() && cgroups[end] != '/' && cgroups[end] != '\n') ++end;
      const std::string id = cgroups.substr(pos + 8, end - pos - 8);
      if (sessions.count(id) > 0) {
        out.push_back(absl::StrCat("process ", e->d_name, " in session-", id));
        break;
      }
    }
  }
  if (d != nullptr) closedir(d);
  return out;
}

// Mount points of this mount namespace (the host's: the agents run in it), with multiplicity.
std::multiset<std::string> MountPoints() {
  std::multiset<std::string> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream fields(line);
    std::string id, parent, devno, root, point;
    fields >> id >> parent >> devno >> root >> point;
    out.insert(point);
  }
  return out;
}

struct HostState {
  std::set<std::string> cgroups, jail_processes;
  std::multiset<std::string> mounts;
};

HostState Snapshot() {
  HostState s;
  for (std::string& dir : CgroupDirs([](std::string_view name) { return name.starts_with("session-"); })) {
    s.cgroups.insert(std::move(dir));
  }
  for (pid_t pid : JailUidProcesses()) s.jail_processes.insert(std::to_string(pid));
  s.mounts = MountPoints();
  return s;
}

// What `now` has that `before` did not, one per line. Mounts count when they are the run's (under `ours`, or
// naming a session or the agent): other work on the machine mounts and unmounts too.
std::string NewSince(const HostState& before, const HostState& now, const std::set<std::string>& sessions,
                     const std::vector<std::string>& ours) {
  std::string out;
  for (const std::string& c : now.cgroups) {
    if (before.cgroups.count(c) == 0) out += "cgroup " + c + "\n";
  }
  for (const std::string& p : now.jail_processes) {
    if (before.jail_processes.count(p) == 0) out += "jail-uid process " + p + "\n";
  }
  std::multiset<std::string> added = now.mounts;
  for (const std::string& m : before.mounts) {
    auto it = added.find(m);
    if (it != added.end()) added.erase(it);
  }
  for (const std::string& m : added) {
    bool mine = m.find("session-") != std::string::npos || m.find("sandbox") != std::string::npos;
    for (const std::string& dir : ours) mine |= m.rfind(dir, 0) == 0;
    if (mine) out += "mount " + m + "\n";
  }
  for (const std::string& p : ProcessesInSessions(sessions)) out += p + "\n";
  return out;
}

// --- Workloads ---------------------------------------------------------------------------------------------

std::string SeqOutput(int n) {
  std::string out;
  for (int i = 1; i <= n; ++i) absl::StrAppend(&out, i, "\n");
  return out;
}

pb::SandboxRequest Shell(const std::string& script) {
  return ExecRequest({"/bin/sh", "-c", script});
}

ChaosWorkload MakeWorkload(int index, ChaosOptions::Mix mix, std::mt19937_64& rng) {
  ChaosWorkload w;
  w.token = absl::StrCat("w", index);
  if (mix == ChaosOptions::Mix::kTrue) {
    w.kind = ChaosWorkload::Kind::kTrue;
    w.request = ExecRequest({"/bin/true"});
    return w;
  }
  // Its first act: the evidence that it ran.
  const std::string evidence = absl::StrCat("echo ", w.token, " >> /evidence/runs; ");
  const int pick = static_cast<int>(rng() % 100);
  if (index % 50 == 7) {
    // ~1 MiB of known output (seq 1 160000 is 1,008,901 bytes).
    w.kind = ChaosWorkload::Kind::kOutput;
    w.expected_stdout = SeqOutput(160000);
    w.request = Shell(evidence + "seq 1 160000");
  } else if (pick < 30) {
    static constexpr int kCodes[] = {0, 0, 0, 1, 2, 3, 42, 77};
    w.kind = ChaosWorkload::Kind::kExit;
    w.expected_exit = kCodes[rng() % std::size(kCodes)];
    w.request = Shell(absl::StrCat(evidence, "exit ", w.expected_exit));
  } else if (pick < 50) {
    const int n = 1 + static_cast<int>(rng() % 5000);
    w.kind = ChaosWorkload::Kind::kOutput;
    w.expected_exit = n % 3;
    w.expected_stdout = SeqOutput(n);
    w.request = Shell(absl::StrCat(evidence, "seq 1 ", n, "; exit ", w.expected_exit));
  } else if (pick < 65) {
    const int ms = 200 + static_cast<int>(rng() % 1300);
    w.kind = ChaosWorkload::Kind::kSleep;
    w.expected_exit = index % 4;
    w.request = Shell(absl::StrCat(evidence, "sleep ", ms / 1000, ".", absl::StrFormat("%03d", ms % 1000),
                                   "; exit ", w.expected_exit));
  } else if (pick < 90) {
    static constexpr int kCodes[] = {1, 9, 100, 126, 127, 255};
    w.kind = ChaosWorkload::Kind::kExit;
    w.expected_exit = kCodes[rng() % std::size(kCodes)];
    // 127 the way a shell gives it: a command that does not exist.
    w.request = Shell(w.expected_exit == 127 ? evidence + "exec /nonexistent/command"
                                             : absl::StrCat(evidence, "echo failing >&2; exit ", w.expected_exit));
  } else {
    // File tool calls around two execs: the last exec's exit code is the session's.
    w.kind = ChaosWorkload::Kind::kFiles;
    w.expected_exit = 5;
    const std::string path = "/workspace/data-" + w.token;
    const std::string payload = "payload-" + w.token + "\n" + std::string(100 + rng() % 60000, 'z') + "\n";
    w.expected_read_file = payload;
    w.request = Shell(evidence);
    pb::WriteFile* write = w.request.add_calls()->mutable_write_file();
    write->set_path(path);
    write->set_data(payload);
    write->set_mode(0644);
    w.request.add_calls()->mutable_read_file()->set_path(path);
    pb::Exec* check = w.request.add_calls()->mutable_exec();
    for (const char* a : {"/bin/sh", "-c"}) check->add_argv(a);
    check->add_argv(absl::StrCat("grep -qx payload-", w.token, " ", path, " || exit 9; exit 5"));
  }
  return w;
}

// How long the killer goes on without a new outcome while work is queued.
constexpr milliseconds kStall{20000};

void Progress(const ChaosOptions& options, const std::string& line) {
  if (options.verbose) fprintf(stderr, "chaos: %s\n", line.c_str());
}

// Everything the run shares between its threads and the double's hook.
struct Shared {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::map<std::string, std::vector<pb::ReportOutcomeRequest>> reports;
  std::map<std::string, ChaosClock::time_point> first_report;
  std::set<std::string> workload_ids;
  size_t workloads_reported = 0;
  ChaosClock::time_point last_outcome;
  std::vector<ChaosRestart> restarts;
  std::map<std::string, size_t> current_restart;  // agent id -> index into restarts

  // A heartbeat or outcome from `agent` naming `ids`, at `t`: counts for the agent's current restart.
  void Named(const std::string& agent, const std::vector<std::string>& ids, ChaosClock::time_point t) {
    auto cur = current_restart.find(agent);
    if (cur == current_restart.end()) return;
    ChaosRestart& r = restarts[cur->second];
    if (t < r.restarted || t >= r.next_kill) return;
    for (const std::string& id : ids) {
      if (r.held.count(id) > 0) r.reported.emplace(id, t);
    }
  }

  bool Sleep(milliseconds d) {  // false once stopped
    std::unique_lock lock(mu);
    return !cv.wait_for(lock, d, [&] { return stop; });
  }
};

}  // namespace

absl::StatusOr<ChaosResult> RunChaos(const ChaosOptions& options) {
  ChaosResult result;
  // The evidence directory, bound read-write into every jail. Jails run as different host uids: the file is
  // created here and opened to all.
  char root_template[] = "/tmp/sbx-chaos-XXXXXX";
  if (mkdtemp(root_template) == nullptr) return absl::InternalError("mkdtemp failed");
  const std::string root = root_template;
  const std::string evidence_dir = root + "/evidence";
  const std::string evidence = evidence_dir + "/runs";
  struct RemoveRoot {
    std::string path;
    ~RemoveRoot() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } remove_root{root};
  chmod(root.c_str(), 0755);
  if (mkdir(evidence_dir.c_str(), 0777) != 0 || chmod(evidence_dir.c_str(), 0777) != 0) {
    return absl::InternalError("cannot make " + evidence_dir);
  }
  { std::ofstream(evidence).flush(); }
  if (chmod(evidence.c_str(), 0666) != 0) return absl::InternalError("cannot chmod " + evidence);
  const std::string policy = ReadAll(SBX_FILE_POLICY) + "\nmounts { bind { src: \"" + evidence_dir +
                             "\" dst: \"/evidence\" writable: true } }\n";

  const HostState before = Snapshot();

  absl::StatusOr<std::unique_ptr<ControlPlaneDouble>> started = ControlPlaneDouble::Start({});
  if (!started.ok()) return started.status();
  std::unique_ptr<ControlPlaneDouble> cp = std::move(*started);
  auto shared = std::make_shared<Shared>();
  cp->OnRequest([shared](Method m, const google::protobuf::Message& message) {
    const ChaosClock::time_point now = ChaosClock::now();
    std::lock_guard lock(shared->mu);
    if (m == Method::kHeartbeat) {
      const auto& hb = static_cast<const pb::HeartbeatRequest&>(message);
      shared->Named(hb.agent_id(), std::vector<std::string>(hb.lease_ids().begin(), hb.lease_ids().end()), now);
      return;
    }
    const auto& report = static_cast<const pb::ReportOutcomeRequest&>(message);
    shared->reports[report.lease_id()].push_back(report);
    if (shared->first_report.emplace(report.lease_id(), now).second &&
        shared->workload_ids.count(report.lease_id()) > 0) {
      ++shared->workloads_reported;
      shared->last_outcome = now;
    }
    shared->Named(report.agent_id(), {report.lease_id()}, now);
  });

  std::vector<std::unique_ptr<AgentProcess>> agents;
  for (int i = 0; i < options.agents; ++i) {
    AgentProcess::Options o;
    o.control_plane = cp->target();
    o.agent_id = absl::StrCat("chaos-", i);
    o.max_sessions = options.capacity;
    auto agent = std::make_unique<AgentProcess>(o);
    const std::string policy_dir = agent->dir() + "/policies";
    mkdir(policy_dir.c_str(), 0755);
    std::ofstream(policy_dir + "/file.textproto") << policy;
    agent->options().config_lines.push_back("policy_dir: \"" + policy_dir + "\"");
    if (!agent->Start()) return absl::InternalError("agent " + o.agent_id + " did not start:\n" + agent->Log());
    agents.push_back(std::move(agent));
  }

  std::mt19937_64 rng(options.seed);
  for (int i = 0; i < options.leases; ++i) result.workloads.push_back(MakeWorkload(i, options.mix, rng));
  {
    std::lock_guard lock(shared->mu);
    result.started = ChaosClock::now();
    for (ChaosWorkload& w : result.workloads) {
      w.lease_id = cp->Enqueue(w.request);
      shared->workload_ids.insert(w.lease_id);
    }
  }
  Progress(options, absl::StrCat(options.leases, " leases enqueued for ", options.agents, " agents of capacity ",
                                 options.capacity));

  auto reported = [&shared] {
    std::lock_guard lock(shared->mu);
    return shared->workloads_reported;
  };

  // The outages: the i-th once (i+1)/(n+1) of the leases have an outcome.
  std::jthread outager([&] {
    const size_t n = options.outages.size();
    for (size_t i = 0; i < n; ++i) {
      const size_t threshold = static_cast<size_t>(options.leases) * (i + 1) / (n + 1);
      while (reported() < threshold) {
        if (!shared->Sleep(milliseconds(50))) return;
      }
      cp->Stop();
      Progress(options, absl::StrCat("control plane down for ", options.outages[i].count(), " ms at ", reported(),
                                     " outcomes"));
      shared->Sleep(options.outages[i]);
      absl::Status up = cp->Restart();
      for (int attempt = 0; !up.ok() && attempt < 100; ++attempt) {
        std::this_thread::sleep_for(milliseconds(100));
        up = cp->Restart();
      }
      if (!up.ok()) Progress(options, "the control plane did not come back: " + up.ToString());
      ++result.outages;
    }
  });

  // The killer: while work is queued, SIGKILL a random agent every [kill_min, kill_max] and restart it on
  // its state dir. It runs on this thread, which outlives the run: an agent dies with the thread that
  // started it (SpawnLogged's PR_SET_PDEATHSIG is per thread).
  std::string killer_error;
  auto killer = [&] {
    if (options.kill_max.count() <= 0) {
      // No kills: wait the same way, for nothing to be queued (or for progress to stop for `settle`).
      size_t seen = reported();
      ChaosClock::time_point progress = ChaosClock::now();
      while (!cp->WaitFor([&] { return cp->queued() == 0; }, milliseconds(1000)) &&
             ChaosClock::now() - progress < options.settle) {
        if (reported() != seen) {
          seen = reported();
          progress = ChaosClock::now();
        }
      }
      return;
    }
    std::mt19937_64 krng(options.seed * 7919 + 1);
    int kills = 0;
    size_t progress_seen = reported();
    ChaosClock::time_point progress_at = ChaosClock::now();
    // Kills are spaced from kill to kill (a restart's own time is inside the interval).
    ChaosClock::time_point last_kill = ChaosClock::now();
    while (true) {
      const int64_t span = options.kill_max.count() - options.kill_min.count();
      const milliseconds interval(options.kill_min.count() +
                                  (span > 0 ? static_cast<int64_t>(krng() % (span + 1)) : 0));
      const auto wait = std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(
                                                      last_kill + interval - ChaosClock::now()));
      if (!shared->Sleep(wait) || cp->queued() == 0) return;
      // Work that stays queued while no outcome arrives (e.g. every slot of an agent pinned by leases it lost)
      // ends the kills too: the settle deadline decides what is missing.
      if (reported() != progress_seen) {
        progress_seen = reported();
        progress_at = ChaosClock::now();
      } else if (ChaosClock::now() - progress_at > kStall) {
        Progress(options, absl::StrCat("no outcome for ", kStall.count(), " ms with ", cp->queued(),
                                       " grants queued; no more kills"));
        return;
      }
      const size_t a = krng() % agents.size();
      AgentProcess& agent = *agents[a];
      const std::string agent_id = agent.options().agent_id;
      ChaosRestart r;
      r.agent_id = agent_id;
      ++kills;
      if (options.kill_after_grant_every > 0 && kills % options.kill_after_grant_every == 0) {
        // Right after the double granted this agent a lease (its outstanding count rose): the grant is in
        // flight or being journaled.
        int low = INT32_MAX;
        r.after_grant = cp->WaitFor([&] {
          const int outstanding = cp->Agents()[agent_id].outstanding;
          low = std::min(low, outstanding);
          return outstanding > low;
        }, milliseconds(1000));
      }
      last_kill = ChaosClock::now();
      {
        std::lock_guard lock(shared->mu);
        auto cur = shared->current_restart.find(agent_id);
        if (cur != shared->current_restart.end()) shared->restarts[cur->second].next_kill = ChaosClock::now();
        shared->current_restart.erase(agent_id);
      }
      if (result.seen_running_cgroups == 0 || result.seen_running_jail_processes == 0) {
        // The leftover scan must be able to see sessions: count what it finds while they run.
        const HostState now = Snapshot();
        for (const std::string& c : now.cgroups) result.seen_running_cgroups += before.cgroups.count(c) == 0;
        for (const std::string& p : now.jail_processes) {
          result.seen_running_jail_processes += before.jail_processes.count(p) == 0;
        }
      }
      agent.Kill9();
      r.killed = ChaosClock::now();
      // What the double believes the dead agent holds.
      for (const ControlPlaneDouble::LeaseView& l : cp->Leases()) {
        if (l.agent_id == agent_id && !l.outcome.has_value() && l.grants > 0) r.held.insert(l.lease_id);
      }
      r.restarted = ChaosClock::now();
      {
        std::lock_guard lock(shared->mu);
        shared->restarts.push_back(r);
        shared->current_restart[agent_id] = shared->restarts.size() - 1;
      }
      bool up = false;
      for (int attempt = 0; attempt < 3 && !up; ++attempt) {
        up = agent.Start();
        if (!up) {
          std::lock_guard lock(shared->mu);
          shared->restarts.back().start_failed = true;
          agent.Kill9();
        }
      }
      if (!up) {
        killer_error = agent_id + " did not start again:\n" + agent.Log();
        return;
      }
      // The leases it completed and reported last in its earlier life, granted to it again.
      std::vector<std::string> again;
      {
        std::lock_guard lock(shared->mu);
        std::vector<std::pair<ChaosClock::time_point, std::string>> candidates;
        for (const auto& [id, reports] : shared->reports) {
          const pb::ReportOutcomeRequest& first = reports.front();
          const ChaosClock::time_point at = shared->first_report[id];
          if (first.agent_id() == agent_id && first.outcome().status() == pb::Outcome::COMPLETED && at < r.killed &&
              std::find(result.regranted.begin(), result.regranted.end(), id) == result.regranted.end()) {
            candidates.emplace_back(at, id);
          }
        }
        std::sort(candidates.rbegin(), candidates.rend());
        for (size_t i = 0; i < candidates.size() && static_cast<int>(i) < options.regrants_per_restart; ++i) {
          again.push_back(candidates[i].second);
          result.regranted.push_back(candidates[i].second);
        }
      }
      for (const std::string& id : again) cp->GrantAgainTo(id, agent_id);
      Progress(options, absl::StrCat("killed ", agent_id, r.after_grant ? " just after a grant" : "", " holding ", r.held.size(), ", restarted in ",
                                     std::chrono::duration_cast<milliseconds>(ChaosClock::now() - r.restarted).count(),
                                     " ms; ", reported(), " outcomes so far"));
    }
  };
  killer();
  // The tail runs without kills: nothing is queued any more.

  // Everything has an outcome and nothing is queued (a re-grant waiting for its agent).
  const auto done = [&] { return reported() == static_cast<size_t>(options.leases) && cp->queued() == 0; };
  if (!killer_error.empty()) {
    {
      std::lock_guard lock(shared->mu);
      shared->stop = true;
    }
    shared->cv.notify_all();
    outager.join();
    return absl::InternalError(killer_error);
  }
  const ChaosClock::time_point settle_deadline = ChaosClock::now() + options.settle;
  while (!done() && ChaosClock::now() < settle_deadline) {
    cp->WaitFor(done, std::chrono::duration_cast<milliseconds>(settle_deadline - ChaosClock::now()));
  }
  {
    // An outage still waiting for its threshold (outcomes that never came) does not happen.
    std::lock_guard lock(shared->mu);
    shared->stop = true;
  }
  shared->cv.notify_all();
  outager.join();
  (void)cp->Restart();  // an outage cut short by the stop
  while (!done() && ChaosClock::now() < settle_deadline) {
    cp->WaitFor(done, std::chrono::duration_cast<milliseconds>(settle_deadline - ChaosClock::now()));
  }
  result.settled = done();
  Progress(options, absl::StrCat(result.settled ? "settled: " : "deadline passed: ", reported(), " of ",
                                 options.leases, " leases have an outcome"));

  // Stop the agents (a drain: anything still running finishes and is reported), then look at what is left.
  for (auto& agent : agents) {
    const int status = agent->Terminate(milliseconds(60000));
    if (status == -1) agent->Kill9();
    result.terminate_status[agent->options().agent_id] = status;
  }
  cp->OnRequest({});
  {
    std::lock_guard lock(shared->mu);
    result.reports = shared->reports;
    result.restarts = shared->restarts;
    result.last_outcome = shared->last_outcome;
  }
  result.leases = cp->Leases();
  for (const auto& agent : agents) result.agent_logs[agent->options().agent_id] = agent->Log();
  std::istringstream lines(ReadAll(evidence));
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty()) ++result.runs[line];
  }
  std::set<std::string> sessions;
  for (const ControlPlaneDouble::LeaseView& l : result.leases) {
    if (!l.session_id.empty()) sessions.insert(l.session_id);
  }
  for (const auto& [id, reports] : result.reports) {
    for (const pb::ReportOutcomeRequest& r : reports) {
      if (!r.session_id().empty()) sessions.insert(r.session_id());
    }
  }
  std::vector<std::string> ours = {root};
  for (const auto& agent : agents) ours.push_back(agent->dir());
  // The agents are gone; what they removed on the way out is gone too. Poll briefly for the kernel to finish
  // tearing down (a cgroup is removable only once its last process is reaped).
  const ChaosClock::time_point leftover_deadline = ChaosClock::now() + milliseconds(10000);
  do {
    result.leftovers = NewSince(before, Snapshot(), sessions, ours);
    if (result.leftovers.empty()) break;
    std::this_thread::sleep_for(milliseconds(100));
  } while (ChaosClock::now() < leftover_deadline);
  return result;
}

std::map<std::string, std::vector<std::string>> CheckChaos(const ChaosResult& result) {
  std::map<std::string, std::vector<std::string>> v;
  for (const char* key : {"one_outcome", "run_twice", "lost", "exit_code", "unexpected", "restart_and_completed",
                          "events", "unknown", "leftovers"}) {
    v[key];
  }
  std::map<std::string, const ControlPlaneDouble::LeaseView*> views;
  for (const ControlPlaneDouble::LeaseView& l : result.leases) views[l.lease_id] = &l;
  const bool evidence = std::any_of(result.workloads.begin(), result.workloads.end(),
                                    [](const ChaosWorkload& w) { return w.kind != ChaosWorkload::Kind::kTrue; });

  for (const auto& [token, n] : result.runs) {
    if (n > 1) v["run_twice"].push_back(absl::StrCat(token, " ran ", n, " times"));
  }
  for (const ChaosWorkload& w : result.workloads) {
    const std::string& id = w.lease_id;
    auto found = result.reports.find(id);
    auto view = views.find(id);
    const int runs = result.runs.count(w.token) > 0 ? result.runs.at(w.token) : 0;
    const std::string who = absl::StrCat(id, " (", w.token, ", granted ",
                                         view != views.end() ? view->second->grants : 0, "x, last to ",
                                         view != views.end() ? view->second->agent_id : "?", ")");
    if (found == result.reports.end() || view == views.end() || !view->second->outcome.has_value()) {
      v["one_outcome"].push_back(who + ": no outcome");
      std::string when;
      if (view != views.end() && view->second->grants > 0) {
        // The kill of its agent that came next after the grant, if any (issue 17 item 4: granted just before).
        std::optional<ChaosClock::duration> before_kill;
        for (const ChaosRestart& r : result.restarts) {
          if (r.agent_id != view->second->agent_id || r.killed < view->second->first_granted) continue;
          const ChaosClock::duration d = r.killed - view->second->first_granted;
          if (!before_kill || d < *before_kill) before_kill = d;
        }
        when = before_kill ? absl::StrCat("; first granted ",
                                          std::chrono::duration_cast<milliseconds>(*before_kill).count(),
                                          " ms before ", view->second->agent_id, " was killed")
                           : "; its agent was not killed after the grant";
      }
      v["lost"].push_back(absl::StrCat(who, ": no outcome; ran ", runs, " times", when));
      continue;
    }
    const ControlPlaneDouble::LeaseView& lease = *view->second;
    const std::vector<pb::ReportOutcomeRequest>& reports = found->second;
    // Every report says the same thing.
    bool restart = false, completed = false;
    for (const pb::ReportOutcomeRequest& r : reports) {
      const pb::Outcome& o = r.outcome();
      const pb::Outcome& first = reports.front().outcome();
      if (o.status() != first.status() || o.reason() != first.reason() || o.has_exit_code() != first.has_exit_code() ||
          o.exit_code() != first.exit_code() || o.has_signal() != first.has_signal() || o.signal() != first.signal() ||
          r.session_id() != reports.front().session_id()) {
        v["one_outcome"].push_back(absl::StrCat(who, ": reports disagree: ", reports.front().ShortDebugString(),
                                                " / ", r.ShortDebugString()));
      }
      restart |= o.status() == pb::Outcome::FAILED && o.reason() == "agent_restart";
      completed |= o.status() == pb::Outcome::COMPLETED;
    }
    if (restart && completed) v["restart_and_completed"].push_back(who);

    const pb::ReportOutcomeRequest& report = *lease.outcome;
    const pb::Outcome& outcome = report.outcome();
    if (outcome.status() == pb::Outcome::COMPLETED) {
      if (evidence && runs == 0) v["unexpected"].push_back(who + ": COMPLETED but the workload never ran");
      if (!outcome.has_exit_code() || outcome.exit_code() != w.expected_exit) {
        v["exit_code"].push_back(absl::StrCat(who, ": exit ", outcome.has_exit_code() ? outcome.exit_code() : -1,
                                              ", expected ", w.expected_exit));
      }
      std::string out, read_file;
      bool dropped = false;
      for (const pb::Event& e : lease.events) {
        if (e.has_output() && e.output().stream() == pb::STDOUT && e.output().call_id() == "start-1") {
          out += e.output().data();
          dropped |= e.output().dropped_bytes() > 0;
        }
        if (e.has_tool_call_finished() && e.tool_call_finished().call_id() == "start-3" &&
            e.tool_call_finished().has_result()) {
          read_file = e.tool_call_finished().result().data();
        }
      }
      if (w.expected_stdout && (dropped || out != *w.expected_stdout)) {
        v["exit_code"].push_back(absl::StrCat(who, ": stdout of ", out.size(), " bytes", dropped ? " (dropped)" : "",
                                              ", expected ", w.expected_stdout->size(), " bytes exactly"));
      }
      if (w.expected_read_file && read_file != *w.expected_read_file) {
        v["exit_code"].push_back(absl::StrCat(who, ": read_file gave ", read_file.size(), " bytes, expected ",
                                              w.expected_read_file->size()));
      }
    } else if (outcome.status() == pb::Outcome::FAILED && outcome.reason() == "agent_restart") {
      // Only an agent that was killed after the lease was granted may say so.
      bool killed = false;
      for (const ChaosRestart& r : result.restarts) {
        killed |= r.agent_id == report.agent_id() && r.killed > lease.first_granted;
      }
      if (!killed) {
        v["unexpected"].push_back(absl::StrCat(who, ": agent_restart from ", report.agent_id(),
                                               ", which was not killed after the grant"));
      }
    } else {
      v["unexpected"].push_back(who + ": " + outcome.ShortDebugString());
    }

    // Events: seq 1..n, each once, of this session; nothing the double counted as a gap; the final seq.
    bool ok = lease.gaps == 0;
    std::string why = lease.gaps == 0 ? "" : absl::StrCat(lease.gaps, " gaps counted; ");
    for (size_t i = 0; i < lease.events.size(); ++i) {
      if (lease.events[i].seq() != i + 1) {
        ok = false;
        absl::StrAppend(&why, "event ", i, " has seq ", lease.events[i].seq(), "; ");
        break;
      }
      if (!report.session_id().empty() && lease.events[i].session_id() != report.session_id()) {
        ok = false;
        absl::StrAppend(&why, "seq ", i + 1, " is of session ", lease.events[i].session_id(), "; ");
        break;
      }
    }
    if (outcome.status() == pb::Outcome::COMPLETED) {
      if (report.last_seq() != lease.events.size() || lease.events.empty() || !lease.events.back().has_outcome()) {
        ok = false;
        absl::StrAppend(&why, "last_seq ", report.last_seq(), " with ", lease.events.size(),
                        " events (the last must be the outcome)");
      }
    }
    if (!ok) v["events"].push_back(who + ": " + why);
  }
  std::set<std::string> ours;
  for (const ChaosWorkload& w : result.workloads) ours.insert(w.lease_id);
  for (const auto& [id, reports] : result.reports) {
    if (ours.count(id) == 0) v["unknown"].push_back(absl::StrCat(id, ": ", reports.size(), " reports"));
  }
  std::istringstream left(result.leftovers);
  for (std::string line; std::getline(left, line);) v["leftovers"].push_back(line);
  for (const auto& [agent, status] : result.terminate_status) {
    if (status != 0) v["leftovers"].push_back(absl::StrCat(agent, " exited ", status, " on SIGTERM"));
  }
  return v;
}

std::vector<double> RestartToReportedMs(const ChaosResult& result, int* incomplete) {
  std::vector<double> out;
  *incomplete = 0;
  for (const ChaosRestart& r : result.restarts) {
    if (r.held.empty()) continue;  // nothing to report: not a measurement
    if (r.reported.size() < r.held.size()) {
      ++*incomplete;
      continue;
    }
    ChaosClock::time_point last = r.restarted;
    for (const auto& [id, t] : r.reported) last = std::max(last, t);
    out.push_back(std::chrono::duration<double, std::milli>(last - r.restarted).count());
  }
  return out;
}

}  // namespace sbx::testing
