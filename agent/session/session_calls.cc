// Session's tool calls: starting one (once per idempotency key), its approval gate, running it (an exec's
// plumbing to sandbox-init, the file tools, the driver calls), controlling a running exec, and its end.
#include <signal.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/session/session.h"
#include "base/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxReadFileBytes = 1 << 20;

pb::FileInfo ToProto(const sandbox::FileInfo& info) {
  pb::FileInfo out;
  out.set_name(info.name);
  switch (info.type) {
    case sandbox::FileInfo::Type::kFile: out.set_type(pb::FileInfo::REGULAR); break;
    case sandbox::FileInfo::Type::kDirectory: out.set_type(pb::FileInfo::DIRECTORY); break;
    case sandbox::FileInfo::Type::kSymlink: out.set_type(pb::FileInfo::SYMLINK); break;
    case sandbox::FileInfo::Type::kOther: out.set_type(pb::FileInfo::OTHER); break;
  }
  out.set_size(info.size);
  out.set_mode(info.mode);
  out.set_mtime_unix_ns(info.mtime_ns);
  out.set_symlink_target(info.symlink_target);
  return out;
}

// An exec call as sandbox-init's spec: the policy's environment with the request's variables on top, and a
// timeout within the session's remaining wall time.
sandbox::ExecSpec ExecSpecOf(const pb::Exec& exec, const std::vector<sandbox::EnvVar>& policy_env,
                             Clock::time_point expires) {
  sandbox::ExecSpec spec;
  spec.argv.assign(exec.argv().begin(), exec.argv().end());
  if (!exec.env().empty()) {
    // The policy's environment, with the request's variables on top.
    std::map<std::string, std::string> env;
    for (const sandbox::EnvVar& var : policy_env) env[var.name] = var.value;
    for (const auto& [k, v] : exec.env()) env[k] = v;
    for (const auto& [k, v] : env) spec.env.push_back(k + "=" + v);
  }
  spec.cwd = exec.cwd();
  spec.pty = exec.pty();
  if (exec.rows() > 0) spec.rows = exec.rows();
  if (exec.cols() > 0) spec.cols = exec.cols();
  const auto remaining =
      std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(expires - Clock::now()).count());
  spec.timeout_ms = exec.timeout_ms() > 0 ? std::min<uint64_t>(exec.timeout_ms(), remaining) : remaining;
  spec.stdin_open = exec.stdin_open() || !exec.stdin().empty();
  return spec;
}

// An exec's end as its result; `over_limit`: it was killed for its output.
absl::StatusOr<pb::ToolResult> ExecResultOf(const absl::StatusOr<sandbox::ExecEnd>& end, bool over_limit,
                                            uint64_t max_output_bytes) {
  if (over_limit) {
    return absl::ResourceExhaustedError(absl::StrCat("output: the command wrote more than the policy's output_max_bytes (",
                                                     max_output_bytes, "); it was killed"));
  }
  if (!end.ok()) return end.status();
  if (end->exec_errno != 0) {
    return absl::Status(end->exec_errno == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kPermissionDenied,
                        absl::StrCat("cannot execute the command: ", strerror(end->exec_errno)));
  }
  pb::ToolResult r;
  pb::ExecResult* e = r.mutable_exec();
  if (end->exit_code >= 0) e->set_exit_code(end->exit_code);
  if (end->signal > 0) e->set_signal(end->signal);
  e->set_timed_out(end->timed_out);
  return r;
}

// A call that only says it is done, or its error.
absl::StatusOr<pb::ToolResult> DoneOr(const absl::Status& s) {
  if (!s.ok()) return s;
  pb::ToolResult r;
  r.set_done(true);
  return r;
}

}  // namespace

absl::StatusOr<uint64_t> Session::StartCall(const std::string& call_id, const pb::ToolCall& call) {
  if (ended_ || events_.closed()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  }
  if (call.tool_case() == pb::ToolCall::TOOL_NOT_SET) {
    return absl::InvalidArgumentError("call: no tool given (exec, write_file, read_file, ...)");
  }
  // The documented cap (session.proto), in every front end: the local API, fleet commands and sandboxctl all
  // come through here. A larger file goes through Upload, which streams it.
  if (call.has_write_file() && call.write_file().data().size() > kMaxWriteFileBytes) {
    return absl::InvalidArgumentError(absl::StrCat("write_file.data: ", call.write_file().data().size(),
                                                   " bytes, over the limit of ", kMaxWriteFileBytes,
                                                   " bytes (1 MiB); larger files go through Upload"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (running_execs_.count(call_id) != 0) {
      return absl::AlreadyExistsError(absl::StrCat("call ", call_id, " is already running"));
    }
    last_call_id_ = call_id;
  }
  Touch();
  pb::Event started;
  started.mutable_tool_call_started()->set_call_id(call_id);
  *started.mutable_tool_call_started()->mutable_call() = call;
  if (call.has_write_file()) started.mutable_tool_call_started()->mutable_call()->mutable_write_file()->clear_data();
  const uint64_t seq = events_.Append(std::move(started));
  if (seq == 0) return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));

  // A gate (policy approvals): the call waits for a person without holding this thread; its HumanRequest
  // follows tool_call_started in the log, and the decision runs it or finishes it (OnGateDecided).
  std::optional<GateAsk> gate = gates_->ForCall(call_id, call, [this](const std::string& origin) {
    absl::MutexLock lock(&mu_);
    return origins_.count(origin) == 0;
  });
  if (gate) {
    {
      absl::MutexLock lock(&mu_);
      gated_waiting_.insert(call_id);
    }
    approvals_->Ask(std::move(*gate), [this, call_id, call](const pb::HumanDecision& d) {
      OnGateDecided(call_id, call, d);
    });
    return seq;
  }
  return RunCall(call_id, call, seq);
}

void Session::OnGateDecided(const std::string& call_id, const pb::ToolCall& call, const pb::HumanDecision& d) {
  {
    absl::MutexLock lock(&mu_);
    gated_waiting_.erase(call_id);
    calls_changed_.SignalAll();
  }
  switch (d.decision()) {
    case pb::HumanDecision::APPROVE:
    case pb::HumanDecision::ANSWER: {
      absl::MutexLock lock(&approved_.mu);
      if (!approved_.thread.joinable()) approved_.thread = std::jthread([this] { RunApproved(); });
      approved_.queue.emplace_back(call_id, call);
      approved_.cv.SignalAll();
      return;
    }
    default:
      FinishCall(call_id, DecisionStatus(d));
      return;
  }
}

absl::Status Session::AwaitTransferApproval(std::string_view kind, const std::string& path, std::string_view detail,
                                            const std::function<bool()>& gone, const std::string& call_id) {
  std::optional<GateAsk> gate = gates_->ForTransfer(kind, path, detail);
  if (!gate) return absl::OkStatus();
  if (!call_id.empty()) gate->call_id = call_id;
  auto decided = std::make_shared<std::promise<pb::HumanDecision>>();
  std::future<pb::HumanDecision> decision = decided->get_future();
  const std::string id = approvals_->Ask(std::move(*gate), [decided](const pb::HumanDecision& d) { decided->set_value(d); });
  // NOTE: the decision is waited on itself; `gone` (a gRPC client's cancellation, which has no fd or
  // callback on a synchronous server) is what is looked at every 100 ms.
  while (decision.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
    if (gone()) approvals_->Cancel(id, "the client went away");  // decides it: the next wait returns
  }
  return DecisionStatus(decision.get());
}

void Session::RunApproved() {
  approved_.mu.Lock();
  for (;;) {
    while (approved_.queue.empty() && !approved_.stop) approved_.cv.Wait(&approved_.mu);
    if (approved_.queue.empty()) break;  // stopped with nothing left
    auto [call_id, call] = std::move(approved_.queue.front());
    approved_.queue.pop_front();
    const bool stop = approved_.stop;
    approved_.mu.Unlock();
    if (stop || ended_ || events_.closed()) {
      FinishCall(call_id, absl::CancelledError("canceled: the session ended before the approved call ran"));
    } else {
      // NOTE: the call's tool_call_started is in the log already; the seq is only returned, not used.
      (void)RunCall(call_id, call, 0);
    }
    approved_.mu.Lock();
  }
  approved_.mu.Unlock();
}

absl::StatusOr<uint64_t> Session::RunCall(const std::string& call_id, const pb::ToolCall& call, uint64_t seq) {
  if (call.has_browser() && call.browser().has_navigate()) {
    absl::MutexLock lock(&mu_);
    origins_.insert(OriginOf(call.browser().navigate().url()));
  }
  switch (call.tool_case()) {
    case pb::ToolCall::kExec:
      RunExec(call_id, call.exec());
      return seq;
    case pb::ToolCall::kDesktop:
    case pb::ToolCall::kComputer:
    case pb::ToolCall::kBrowser:
      RunDriverCall(call_id, call);
      return seq;
    case pb::ToolCall::kWriteFile: {
      const pb::WriteFile& w = call.write_file();
      FinishCall(call_id, DoneOr(init_->WriteFile(w.path(), w.data(), 0, /*truncate=*/true,
                                                  w.mode() != 0 ? w.mode() : 0644)));
      return seq;
    }
    case pb::ToolCall::kReadFile:
    case pb::ToolCall::kListFiles:
    case pb::ToolCall::kStat:
      FinishCall(call_id, RunFileQuery(call));
      return seq;
    case pb::ToolCall::kRemove:
      FinishCall(call_id, DoneOr(init_->Remove(call.remove().path(), call.remove().recursive())));
      return seq;
    case pb::ToolCall::kMkdir:
      FinishCall(call_id, DoneOr(init_->Mkdir(call.mkdir().path(), call.mkdir().parents())));
      return seq;
    case pb::ToolCall::TOOL_NOT_SET:
      break;
  }
  return seq;
}

void Session::RunExec(const std::string& call_id, const pb::Exec& exec) {
  if (exec.argv().empty()) {
    FinishCall(call_id, absl::InvalidArgumentError("exec.argv: empty"));
    return;
  }
  const sandbox::ExecSpec spec = ExecSpecOf(exec, options_.env, expires_);
  {
    absl::MutexLock lock(&mu_);
    running_execs_[call_id] = 0;  // a placeholder until the client's id is known
  }
  // The policy's output budget for one command: past it the command is killed (on the agent's timer: this
  // callback runs on the client's reader and must not block on it).
  auto output_total = std::make_shared<uint64_t>(0);
  auto over_limit = std::make_shared<bool>(false);
  auto on_output = [this, call_id, output_total, over_limit](sandbox::OutputStream stream, std::string data,
                                                             uint64_t offset) {
    Touch();
    *output_total += data.size();
    if (*over_limit) return;
    if (*output_total > options_.max_output_bytes) {
      *over_limit = true;
      RequestKill(call_id);
      return;
    }
    // Coalesced into chunks by the log (EventLog::AppendOutput): one write is not one event.
    events_.AppendOutput(call_id, stream == sandbox::OutputStream::kStdout ? pb::STDOUT : pb::STDERR, offset,
                         std::move(data));
  };
  auto on_end = [this, call_id, over_limit](absl::StatusOr<sandbox::ExecEnd> end) {
    FinishCall(call_id, ExecResultOf(end, *over_limit, options_.max_output_bytes));
  };
  // NOTE: mu_ is not held here: the client may report the end (FinishCall takes mu_) at any time.
  absl::StatusOr<uint64_t> id = init_->StartExec(spec, on_output, on_end);
  if (!id.ok()) {
    FinishCall(call_id, id.status());
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = running_execs_.find(call_id);
    if (it != running_execs_.end()) it->second = *id;
  }
  if (!exec.stdin().empty()) (void)init_->WriteStdin(*id, exec.stdin(), /*eof=*/!exec.stdin_open());
}

absl::StatusOr<pb::ToolResult> Session::RunFileQuery(const pb::ToolCall& call) {
  pb::ToolResult r;
  if (call.has_list_files()) {
    ASSIGN_OR_RETURN(std::vector<sandbox::FileInfo> list, init_->ListFiles(call.list_files().path()));
    for (const sandbox::FileInfo& info : list) *r.mutable_listing()->add_entries() = ToProto(info);
    return r;
  }
  if (call.has_stat()) {
    ASSIGN_OR_RETURN(sandbox::FileInfo info, init_->Stat(call.stat().path()));
    *r.mutable_info() = ToProto(info);
    return r;
  }
  const pb::ReadFile& rf = call.read_file();
  const uint64_t want = rf.length() == 0 ? kMaxReadFileBytes : std::min<uint64_t>(rf.length(), kMaxReadFileBytes);
  std::string data;
  while (data.size() < want) {
    const uint64_t chunk = std::min<uint64_t>(want - data.size(), sandbox::InitClient::kMaxChunkBytes);
    ASSIGN_OR_RETURN(std::string part, init_->ReadFile(rf.path(), rf.offset() + data.size(), chunk));
    data += part;
    if (part.size() < chunk) break;
  }
  r.set_data(std::move(data));
  return r;
}

void Session::RunDriverCall(const std::string& call_id, const pb::ToolCall& call) {
  absl::StatusOr<pb::ToolResult> result = call.has_desktop()    ? RunDesktop(call_id, call.desktop())
                                          : call.has_computer() ? RunComputer(call_id, call.computer())
                                                                : RunBrowser(call_id, call.browser());
  FinishCall(call_id, result);
  if (result.status().code() != absl::StatusCode::kUnavailable || !init_->healthy()) return;
  // The display died under the session (Xvfb killed from inside), or Chromium did (killed from inside, or
  // crashed for good): the session cannot go on, and ends saying so.
  if (call.has_browser() && options_.kind == pb::BROWSER) {
    End(pb::Outcome::FAILED, "browser_lost", std::string(result.status().message()));
  } else if (!call.has_browser() && options_.kind == pb::DESKTOP) {
    End(pb::Outcome::FAILED, "display_lost", std::string(result.status().message()));
  }
}

void Session::FinishCall(const std::string& call_id, const absl::StatusOr<pb::ToolResult>& result) {
  Touch();
  pb::Event event;
  pb::ToolCallFinished* finished = event.mutable_tool_call_finished();
  finished->set_call_id(call_id);
  if (result.ok()) {
    *finished->mutable_result() = *result;
  } else {
    finished->mutable_error()->set_code(static_cast<int>(result.status().code()));
    finished->mutable_error()->set_message(std::string(result.status().message()));
  }
  events_.Append(std::move(event));
  absl::MutexLock lock(&mu_);
  running_execs_.erase(call_id);
  calls_changed_.SignalAll();
}

absl::StatusOr<std::pair<std::string, uint64_t>> Session::StartCallOnce(const std::string& key,
                                                                        const std::string& new_call_id,
                                                                        const pb::ToolCall& call) {
  if (key.empty()) {
    ASSIGN_OR_RETURN(uint64_t seq, StartCall(new_call_id, call));
    return std::make_pair(new_call_id, seq);
  }
  std::string body;
  call.SerializeToString(&body);
  absl::MutexLock lock(&idempotent_mu_);
  auto it = idempotent_calls_.find(key);
  if (it != idempotent_calls_.end()) {
    if (it->second.body != body) {
      return absl::AbortedError(absl::StrCat("idempotency_key '", key, "' was used for a different call"));
    }
    return std::make_pair(it->second.call_id, it->second.seq);
  }
  ASSIGN_OR_RETURN(uint64_t seq, StartCall(new_call_id, call));
  idempotent_calls_[key] = IdempotentCall{std::move(body), new_call_id, seq, IdempotentCall::Upload::kNone, {}};
  return std::make_pair(new_call_id, seq);
}

void Session::RequestKill(const std::string& call_id) {
  absl::MutexLock lock(&mu_);
  if (kills_closed_) return;
  timer_->Now(this, [this, call_id] {
    ExecControl kill;
    kill.signal = SIGKILL;
    (void)ControlExec(call_id, kill);
  });
}

absl::Status Session::ControlExec(const std::string& call_id, const ExecControl& control) {
  uint64_t id;
  {
    absl::MutexLock lock(&mu_);
    auto it = running_execs_.find(call_id);
    if (it == running_execs_.end() || it->second == 0) {
      return absl::FailedPreconditionError(absl::StrCat("call ", call_id, " is not running"));
    }
    id = it->second;
  }
  Touch();
  if (!control.stdin_data.empty() || control.stdin_eof) {
    RETURN_IF_ERROR(init_->WriteStdin(id, control.stdin_data, control.stdin_eof));
  }
  if (control.rows > 0 && control.cols > 0) RETURN_IF_ERROR(init_->Resize(id, control.rows, control.cols));
  if (control.signal > 0) RETURN_IF_ERROR(init_->Signal(id, control.signal));
  return absl::OkStatus();
}

std::string Session::LastCallId() const {
  absl::MutexLock lock(&mu_);
  return last_call_id_;
}

}  // namespace sbx::agent
