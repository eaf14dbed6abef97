#include "agent/session.h"

#include <signal.h>

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "sandbox/status.h"

namespace sbx::agent {
namespace {

namespace pb = ::duvo::sandbox::v1;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kMaxReadFileBytes = 1 << 20;
// Output a session's event log keeps once clients have it (or its call ended): enough for a reconnect.
constexpr uint64_t kRetainedOutputBytes = 64ull << 20;

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

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

}  // namespace

absl::StatusOr<std::shared_ptr<Session>> Session::Start(const sandbox::Policy& policy, Options options) {
  const auto start = Clock::now();
  sandbox::JailOptions jail_options;
  jail_options.serve = true;
  jail_options.init_path = options.init_path;
  jail_options.cgroups = options.cgroups;
  jail_options.name = absl::StrCat("session-", options.id);
  jail_options.warnings = options.warnings;
  jail_options.pids_poll_interval = std::chrono::milliseconds(250);
  if (options.launcher == nullptr) return absl::InternalError("session: no jail launcher");
  ASSIGN_OR_RETURN(std::unique_ptr<sandbox::Jail> jail, options.launcher->Start(policy, jail_options));
  auto init = std::make_unique<sandbox::InitClient>(jail->TakeControlFd());
  std::shared_ptr<Session> session(new Session(std::move(options), std::move(jail), std::move(init)));

  pb::Event started;
  started.mutable_session_started()->set_kind(session->options_.kind);
  started.mutable_session_started()->set_start_latency_us(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count());
  session->events_.Append(std::move(started));
  if (session->options_.metrics != nullptr) {
    session->options_.metrics->SessionStarted(std::chrono::duration<double>(Clock::now() - start).count());
  }
  session->killer_ = std::jthread([raw = session.get()](std::stop_token stop) { raw->RunKiller(stop); });
  session->watcher_ = std::jthread([raw = session.get()] { raw->WatchJail(); });
  return session;
}

Session::Session(Options options, std::unique_ptr<sandbox::Jail> jail, std::unique_ptr<sandbox::InitClient> init)
    : options_(std::move(options)),
      created_(Clock::now()),
      created_unix_ms_(UnixMs()),
      expires_(created_ + options_.ttl),
      events_(options_.id, kRetainedOutputBytes),
      jail_(std::move(jail)),
      init_(std::move(init)) {
  Touch();
}

Session::~Session() {
  End(pb::Outcome::CANCELED, "canceled", "the session was deleted");
  if (watcher_.joinable()) watcher_.join();
  killer_.request_stop();
  if (killer_.joinable()) killer_.join();
  init_.reset();  // after the watcher and the killer: joins the client's reader thread
  jail_.reset();  // kills what is left, removes the cgroup
}

void Session::Touch() {
  last_used_ns_.store(Clock::now().time_since_epoch().count());
}

Clock::time_point Session::last_used() const {
  return Clock::time_point(Clock::duration(last_used_ns_.load()));
}

bool Session::Matches(const std::map<std::string, std::string>& selector) const {
  for (const auto& [key, value] : selector) {
    auto it = options_.labels.find(key);
    if (it == options_.labels.end() || it->second != value) return false;
  }
  return true;
}

bool Session::busy() const {
  std::lock_guard lock(mu_);
  return !running_execs_.empty();
}

pb::Session Session::Describe() const {
  pb::Session out;
  out.set_id(options_.id);
  out.set_kind(options_.kind);
  out.set_state(ended_ ? pb::ENDED : pb::RUNNING);
  for (const auto& [k, v] : options_.labels) (*out.mutable_labels())[k] = v;
  out.set_created_unix_ms(created_unix_ms_);
  out.set_expires_unix_ms(created_unix_ms_ + options_.ttl.count());
  out.set_last_seq(events_.last_seq());
  std::lock_guard lock(mu_);
  if (ended_) *out.mutable_outcome() = outcome_;
  return out;
}

void Session::End(pb::Outcome::Status status, const std::string& reason, const std::string& message,
                  std::optional<int> exit_code) {
  {
    std::lock_guard lock(mu_);
    if (ended_ || end_status_ != pb::Outcome::STATUS_UNSPECIFIED) return;
    end_status_ = status;
    end_reason_ = reason;
    end_message_ = message;
    end_exit_code_ = exit_code;
  }
  jail_->Kill();
}

void Session::WatchJail() {
  const sandbox::RunResult result = jail_->Wait(-1);
  // init is gone, so the client's connection fails and every running call finishes with an error: give its
  // reader thread a moment to post those before the outcome closes the log.
  for (int i = 0; i < 200 && busy(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));

  pb::Outcome outcome;
  pb::Usage* usage = outcome.mutable_usage();
  usage->set_wall_ms(result.usage.wall_ms);
  usage->set_cpu_user_ms(result.usage.cpu_user_ms);
  usage->set_cpu_sys_ms(result.usage.cpu_sys_ms);
  usage->set_max_memory_bytes(result.usage.max_memory_bytes);
  {
    std::lock_guard lock(mu_);
    if (end_status_ != pb::Outcome::STATUS_UNSPECIFIED) {
      outcome.set_status(end_status_);
      outcome.set_reason(end_reason_);
      outcome.set_message(end_message_);
      if (end_exit_code_) outcome.set_exit_code(*end_exit_code_);
    } else {
      switch (result.reason) {
        case sandbox::RunReason::kTimeLimit:
          outcome.set_status(pb::Outcome::FAILED);
          outcome.set_reason("ttl_expired");
          outcome.set_message(absl::StrCat("the session's ttl of ", options_.ttl.count(), " ms passed"));
          break;
        case sandbox::RunReason::kMemoryLimit:
        case sandbox::RunReason::kPidsLimit:
        case sandbox::RunReason::kSeccompViolation:
          outcome.set_status(pb::Outcome::FAILED);
          outcome.set_reason(std::string(sandbox::RunReasonName(result.reason)));
          outcome.set_message(result.message);
          break;
        default:
          // sandbox-init itself ended (killed from inside the jail, or crashed): the jail is gone.
          outcome.set_status(pb::Outcome::FAILED);
          outcome.set_reason("jail_exited");
          outcome.set_message(absl::StrCat("sandbox-init ended (",
                                           result.signal > 0 ? absl::StrCat("signal ", result.signal)
                                                             : absl::StrCat("exit ", result.exit_code),
                                           ")"));
      }
      if (result.exit_code >= 0) outcome.set_exit_code(result.exit_code);
      if (result.signal > 0) outcome.set_signal(result.signal);
    }
    outcome_ = outcome;
  }
  if (options_.metrics != nullptr) {
    options_.metrics->Outcome(absl::AsciiStrToLower(pb::Outcome::Status_Name(outcome.status())), outcome.reason());
  }
  pb::Event event;
  *event.mutable_outcome() = outcome;
  events_.Append(std::move(event));
  ended_ = true;
  events_.Close();
}

absl::StatusOr<uint64_t> Session::StartCall(const std::string& call_id, const pb::ToolCall& call) {
  if (ended_ || events_.closed()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));
  }
  if (call.tool_case() == pb::ToolCall::TOOL_NOT_SET) {
    return absl::InvalidArgumentError("call: no tool given (exec, write_file, read_file, ...)");
  }
  {
    std::lock_guard lock(mu_);
    if (running_execs_.count(call_id) != 0) {
      return absl::AlreadyExistsError(absl::StrCat("call ", call_id, " is already running"));
    }
  }
  Touch();
  pb::Event started;
  started.mutable_tool_call_started()->set_call_id(call_id);
  *started.mutable_tool_call_started()->mutable_call() = call;
  if (call.has_write_file()) started.mutable_tool_call_started()->mutable_call()->mutable_write_file()->clear_data();
  const uint64_t seq = events_.Append(std::move(started));
  if (seq == 0) return absl::FailedPreconditionError(absl::StrCat("session ", options_.id, " has ended"));

  switch (call.tool_case()) {
    case pb::ToolCall::kExec: {
      const pb::Exec& exec = call.exec();
      if (exec.argv().empty()) {
        FinishCall(call_id, absl::InvalidArgumentError("exec.argv: empty"));
        return seq;
      }
      sandbox::ExecSpec spec;
      spec.argv.assign(exec.argv().begin(), exec.argv().end());
      if (!exec.env().empty()) {
        // The policy's environment, with the request's variables on top.
        std::map<std::string, std::string> env;
        for (const sandbox::EnvVar& var : options_.env) env[var.name] = var.value;
        for (const auto& [k, v] : exec.env()) env[k] = v;
        for (const auto& [k, v] : env) spec.env.push_back(k + "=" + v);
      }
      spec.cwd = exec.cwd();
      spec.pty = exec.pty();
      if (exec.rows() > 0) spec.rows = exec.rows();
      if (exec.cols() > 0) spec.cols = exec.cols();
      const auto remaining =
          std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(expires_ - Clock::now()).count());
      spec.timeout_ms = exec.timeout_ms() > 0 ? std::min<uint64_t>(exec.timeout_ms(), remaining) : remaining;
      spec.stdin_open = exec.stdin_open() || !exec.stdin().empty();
      {
        std::lock_guard lock(mu_);
        running_execs_[call_id] = 0;  // a placeholder until the client's id is known
      }
      // The policy's output budget for one command: past it the command is killed (from the killer thread:
      // this callback runs on the client's reader and must not block on it).
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
        pb::Event event;
        pb::Output* out = event.mutable_output();
        out->set_call_id(call_id);
        out->set_stream(stream == sandbox::OutputStream::kStdout ? pb::STDOUT : pb::STDERR);
        out->set_data(std::move(data));
        out->set_offset(offset);
        events_.Append(std::move(event));
      };
      auto on_end = [this, call_id, over_limit](absl::StatusOr<sandbox::ExecEnd> end) {
        absl::StatusOr<pb::ToolResult> result;
        if (*over_limit) {
          result = absl::ResourceExhaustedError(
              absl::StrCat("output: the command wrote more than the policy's output_max_bytes (",
                           options_.max_output_bytes, "); it was killed"));
        } else if (!end.ok()) {
          result = end.status();
        } else if (end->exec_errno != 0) {
          result = absl::Status(end->exec_errno == ENOENT ? absl::StatusCode::kNotFound
                                                          : absl::StatusCode::kPermissionDenied,
                                absl::StrCat("cannot execute the command: ", strerror(end->exec_errno)));
        } else {
          pb::ToolResult r;
          pb::ExecResult* e = r.mutable_exec();
          if (end->exit_code >= 0) e->set_exit_code(end->exit_code);
          if (end->signal > 0) e->set_signal(end->signal);
          e->set_timed_out(end->timed_out);
          result = r;
        }
        FinishCall(call_id, result);
      };
      // NOTE: mu_ is not held here: the client may report the end (FinishCall takes mu_) at any time.
      absl::StatusOr<uint64_t> id = init_->StartExec(spec, on_output, on_end);
      if (!id.ok()) {
        FinishCall(call_id, id.status());
        return seq;
      }
      {
        std::lock_guard lock(mu_);
        auto it = running_execs_.find(call_id);
        if (it != running_execs_.end()) it->second = *id;
      }
      if (!exec.stdin().empty()) (void)init_->WriteStdin(*id, exec.stdin(), /*eof=*/!exec.stdin_open());
      return seq;
    }
    case pb::ToolCall::kWriteFile: {
      const pb::WriteFile& w = call.write_file();
      absl::Status s = init_->WriteFile(w.path(), w.data(), 0, /*truncate=*/true, w.mode() != 0 ? w.mode() : 0644);
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kReadFile: {
      const pb::ReadFile& rf = call.read_file();
      const uint64_t want = rf.length() == 0 ? kMaxReadFileBytes : std::min<uint64_t>(rf.length(), kMaxReadFileBytes);
      std::string data;
      absl::Status s;
      while (data.size() < want) {
        const uint64_t chunk = std::min<uint64_t>(want - data.size(), sandbox::InitClient::kMaxChunkBytes);
        absl::StatusOr<std::string> part = init_->ReadFile(rf.path(), rf.offset() + data.size(), chunk);
        if (!part.ok()) {
          s = part.status();
          break;
        }
        data += *part;
        if (part->size() < chunk) break;
      }
      pb::ToolResult r;
      r.set_data(std::move(data));
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kListFiles: {
      absl::StatusOr<std::vector<sandbox::FileInfo>> list = init_->ListFiles(call.list_files().path());
      if (!list.ok()) {
        FinishCall(call_id, list.status());
        return seq;
      }
      pb::ToolResult r;
      for (const sandbox::FileInfo& info : *list) *r.mutable_listing()->add_entries() = ToProto(info);
      FinishCall(call_id, r);
      return seq;
    }
    case pb::ToolCall::kStat: {
      absl::StatusOr<sandbox::FileInfo> info = init_->Stat(call.stat().path());
      if (!info.ok()) {
        FinishCall(call_id, info.status());
        return seq;
      }
      pb::ToolResult r;
      *r.mutable_info() = ToProto(*info);
      FinishCall(call_id, r);
      return seq;
    }
    case pb::ToolCall::kRemove: {
      absl::Status s = init_->Remove(call.remove().path(), call.remove().recursive());
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::kMkdir: {
      absl::Status s = init_->Mkdir(call.mkdir().path(), call.mkdir().parents());
      pb::ToolResult r;
      r.set_done(true);
      FinishCall(call_id, s.ok() ? absl::StatusOr<pb::ToolResult>(r) : s);
      return seq;
    }
    case pb::ToolCall::TOOL_NOT_SET:
      break;
  }
  return seq;
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
  std::lock_guard lock(mu_);
  running_execs_.erase(call_id);
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
  std::lock_guard lock(idempotent_mu_);
  auto it = idempotent_calls_.find(key);
  if (it != idempotent_calls_.end()) {
    if (it->second.body != body) {
      return absl::AbortedError(absl::StrCat("idempotency_key '", key, "' was used for a different call"));
    }
    return std::make_pair(it->second.call_id, it->second.seq);
  }
  ASSIGN_OR_RETURN(uint64_t seq, StartCall(new_call_id, call));
  idempotent_calls_[key] = IdempotentCall{std::move(body), new_call_id, seq};
  return std::make_pair(new_call_id, seq);
}

void Session::RequestKill(const std::string& call_id) {
  {
    std::lock_guard lock(kill_mu_);
    kill_queue_.push_back(call_id);
  }
  kill_cv_.notify_one();
}

void Session::RunKiller(std::stop_token stop) {
  for (;;) {
    std::string call_id;
    {
      std::unique_lock lock(kill_mu_);
      if (!kill_cv_.wait(lock, stop, [this] { return !kill_queue_.empty(); })) return;
      call_id = std::move(kill_queue_.front());
      kill_queue_.pop_front();
    }
    ExecControl kill;
    kill.signal = SIGKILL;
    (void)ControlExec(call_id, kill);
  }
}

absl::Status Session::ControlExec(const std::string& call_id, const ExecControl& control) {
  uint64_t id;
  {
    std::lock_guard lock(mu_);
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

}  // namespace sbx::agent
