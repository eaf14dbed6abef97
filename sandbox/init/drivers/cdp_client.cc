// The external CDP client: CdpMux's rules and routing, and the Browser's side of the client's connection
// (its input and output, carried by whoever holds the browser).
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/cdp_internal.h"

namespace sbx::init {

namespace {

json ErrorAnswer(const json& id, const std::string& message) {
  return {{"id", id}, {"error", {{"code", -32000}, {"message", message}}}};
}

}  // namespace

CdpMux::FromClientResult CdpMux::FromClient(std::string_view text) {
  FromClientResult out;
  json message = json::parse(text.begin(), text.end(), nullptr, false);
  if (message.is_discarded() || !message.is_object() || TooDeep(message, kMaxDepth)) {
    out.to_client = ErrorAnswer(0, "the message is not a JSON object");
    return out;
  }
  const json* id = Field(message, "id");
  if (id == nullptr || !id->is_number_integer()) {
    out.to_client = ErrorAnswer(0, "a command needs an integer \"id\"");
    return out;
  }
  const json client_id = *id;
  const std::string method = Str(message, "method");
  if (method.empty()) {
    out.to_client = ErrorAnswer(client_id, "a command needs a \"method\"");
    return out;
  }
  const std::string session = Str(message, "sessionId");
  static const json kEmpty = json::object();
  const json* params_p = Field(message, "params");
  const json& params = params_p != nullptr ? *params_p : kEmpty;
  // An answer given here carries the command's sessionId, as Chromium's do: clients route answers by it.
  auto answer = [&](json a) {
    if (!session.empty()) a["sessionId"] = session;
    return a;
  };
  auto refuse = [&](const std::string& why) {
    out.to_client = answer(ErrorAnswer(client_id, method + " is refused in this sandbox: " + why));
    return out;
  };
  if (!driver_session_.empty() && session == driver_session_) {
    return refuse("that session is the sandbox's own driver");
  }
  if (method == "Browser.close") {
    // The session's browser goes on: only this connection ends.
    out.to_client = answer(json{{"id", client_id}, {"result", json::object()}});
    out.close = true;
    return out;
  }
  if (const std::string why = Refusal(method, session, params); !why.empty()) return refuse(why);
  if (method == "Browser.setDownloadBehavior" || method == "Page.setDownloadBehavior") {
    const std::string behavior = Str(params, "behavior");
    if (behavior == "allow" || behavior == "allowAndName") {
      if (download_dir_.empty()) return refuse("downloads are off in this session");
      // The client's path is one of its own machine; the files stay in the jail's download directory.
      message["params"]["downloadPath"] = download_dir_;
    } else if (Field(params, "downloadPath") != nullptr) {
      message["params"].erase("downloadPath");
    }
  }
  if (pending_.size() >= kMaxInFlight) {
    out.to_client = answer(ErrorAnswer(client_id, "too many commands awaiting answers (" + std::to_string(kMaxInFlight) + ")"));
    return out;
  }
  const int64_t internal = next_id_++;
  if (next_id_ >= kCleanupIdBase) next_id_ = kClientIdBase;
  pending_[internal] = Pending{client_id, method};
  message["id"] = internal;
  out.to_browser = std::move(message);
  return out;
}

std::string CdpMux::Refusal(const std::string& method, const std::string& session, const json& params) const {
  if (method == "Browser.crash" || method == "Browser.crashGpuProcess") {
    return "it would take the session's browser down";
  }
  if (method == "Target.setRemoteLocations" || method.rfind("Tethering.", 0) == 0) {
    return "it would reach other hosts or open a port inside the jail";
  }
  if (method == "Target.exposeDevToolsProtocol") return "it would hand the protocol to a page's script";
  if (method == "Target.closeTarget" && Str(params, "targetId") == driver_target_ && !driver_target_.empty()) {
    return "that page is the session's own (its browser tool calls use it)";
  }
  if (method == "Page.close") {
    auto it = sessions_.find(session);
    if (it != sessions_.end() && it->second == driver_target_ && !driver_target_.empty()) {
      return "that page is the session's own (its browser tool calls use it)";
    }
  }
  if (method == "Target.detachFromTarget" && !driver_session_.empty() &&
      Str(params, "sessionId") == driver_session_) {
    return "that session is the sandbox's own driver";
  }
  return "";
}

CdpMux::Route CdpMux::FromBrowser(json* message) {
  if (const json* id = Field(*message, "id"); id != nullptr && id->is_number_integer()) {
    const int64_t got = id->get<int64_t>();
    if (got < kClientIdBase) return Route::kDriver;
    auto it = pending_.find(got);
    if (it == pending_.end()) return Route::kDrop;  // our cleanup's, or a stale one
    const Pending p = std::move(it->second);
    pending_.erase(it);
    (*message)["id"] = p.client_id;
    if (const json* result = Field(*message, "result")) {
      if (p.method == "Target.attachToTarget" || p.method == "Target.attachToBrowserTarget") {
        const std::string sid = Str(*result, "sessionId");
        if (!sid.empty() && sid != driver_session_ && sessions_.size() < 100000) sessions_.emplace(sid, "");
      } else if (p.method == "Target.createTarget") {
        const std::string tid = Str(*result, "targetId");
        if (!tid.empty() && created_targets_.size() < 100000) created_targets_.insert(tid);
      } else if (p.method == "Target.createBrowserContext") {
        const std::string cid = Str(*result, "browserContextId");
        if (!cid.empty() && created_contexts_.size() < 100000) created_contexts_.insert(cid);
      }
    }
    return Route::kClient;
  }
  const std::string method = Str(*message, "method");
  const std::string session = Str(*message, "sessionId");
  if (const json* params = Field(*message, "params")) {
    if (method == "Target.attachedToTarget") {
      const std::string sid = Str(*params, "sessionId");
      const json* info = Field(*params, "targetInfo");
      if (!sid.empty() && sid != driver_session_ && sessions_.size() < 100000) {
        sessions_[sid] = info != nullptr ? Str(*info, "targetId") : "";
      }
    } else if (method == "Target.detachedFromTarget") {
      sessions_.erase(Str(*params, "sessionId"));
    } else if (method == "Target.targetDestroyed") {
      created_targets_.erase(Str(*params, "targetId"));
    }
  }
  if (session.empty()) {
    // The driver's own attachment is none of the client's business.
    if (method == "Target.attachedToTarget" || method == "Target.detachedFromTarget") {
      if (const json* params = Field(*message, "params"); params != nullptr && Str(*params, "sessionId") == driver_session_) {
        return Route::kDriver;
      }
    }
    return Route::kBoth;
  }
  return session == driver_session_ ? Route::kDriver : Route::kClient;
}

std::vector<json> CdpMux::Disconnect() {
  std::vector<json> out;
  auto add = [&](const char* method, json params) {
    out.push_back({{"id", next_cleanup_id_++}, {"method", method}, {"params", std::move(params)}});
    if (next_cleanup_id_ >= int64_t{0x7fffffff}) next_cleanup_id_ = kCleanupIdBase;
  };
  for (const auto& [sid, target] : sessions_) add("Target.detachFromTarget", {{"sessionId", sid}});
  for (const std::string& tid : created_targets_) {
    if (tid != driver_target_) add("Target.closeTarget", {{"targetId", tid}});
  }
  for (const std::string& cid : created_contexts_) add("Target.disposeBrowserContext", {{"browserContextId", cid}});
  sessions_.clear();
  created_targets_.clear();
  created_contexts_.clear();
  pending_.clear();
  return out;
}

bool Browser::ClientOpen(std::string* error) {
  base::MutexLock lock(client_mu_);
  if (client_connected_) {
    *error = "a CDP client is already connected to this browser (one at a time)";
    return false;
  }
  client_connected_ = true;
  client_out_ = ClientOutput{};
  client_inbox_.push_back(ClientInputItem{true, false, {}, {}});
  const uint64_t one = 1;
  ssize_t unused = write(client_input_fd_, &one, sizeof(one));
  (void)unused;
  return true;
}

void Browser::ClientInput(std::string data, bool close) {
  base::MutexLock lock(client_mu_);
  if (!client_connected_) return;
  if (client_inbox_bytes_ + data.size() > kMaxClientMessageBytes + (1 << 20)) {
    // The browser is not taking what the client sends: cut it off.
    client_inbox_.push_back(ClientInputItem{false, true, {}, "the CDP client sent more than the browser took in"});
  } else {
    client_inbox_bytes_ += data.size();
    client_inbox_.push_back(ClientInputItem{false, close, std::move(data), {}});
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_input_fd_, &one, sizeof(one));
  (void)unused;
}

Browser::ClientOutput Browser::TakeClientOutput() {
  uint64_t count = 0;
  ssize_t unused = read(client_event_fd_, &count, sizeof(count));
  (void)unused;
  base::MutexLock lock(client_mu_);
  ClientOutput out = std::move(client_out_);
  client_out_ = ClientOutput{};
  if (out.ended) client_connected_ = false;
  return out;
}

void Browser::PushClient(const json& message) {
  std::string text = message.dump(-1, ' ', false, json::error_handler_t::replace);
  bool cut = false;
  {
    base::MutexLock lock(client_mu_);
    if (client_out_.ended) return;
    if (client_out_.data.size() + text.size() > kMaxClientBacklogBytes) {
      cut = true;
    } else {
      client_out_.data.append(text);
      client_out_.data.push_back('\0');
    }
  }
  if (cut) {
    EndClient("the CDP client fell behind: over " + std::to_string(kMaxClientBacklogBytes >> 20) +
              " MiB of messages waited for it");
    return;
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_event_fd_, &one, sizeof(one));
  (void)unused;
}

void Browser::PushClientEnd(const std::string& error) {
  {
    base::MutexLock lock(client_mu_);
    if (client_out_.ended || !client_connected_) return;
    client_out_.ended = true;
    client_out_.error = error;
    client_inbox_.clear();
    client_inbox_bytes_ = 0;
  }
  const uint64_t one = 1;
  ssize_t unused = write(client_event_fd_, &one, sizeof(one));
  (void)unused;
}

void Browser::EndClient(const std::string& error) {
  if (mux_) {
    std::vector<json> cleanup = mux_->Disconnect();
    mux_.reset();
    client_in_.clear();
    std::string e;
    for (const json& command : cleanup) {
      if (gone_ || !Send(command, NowMs() + kInputTimeoutMs, &e)) break;
    }
  }
  PushClientEnd(error);
}

void Browser::FlushClientInput() {
  if (flushing_) return;  // Send pumps while Chromium is not reading: no recursion
  flushing_ = true;
  if (client_input_fd_ >= 0) {
    uint64_t count = 0;
    ssize_t unused = read(client_input_fd_, &count, sizeof(count));
    (void)unused;
  }
  for (;;) {
    ClientInputItem item;
    {
      base::MutexLock lock(client_mu_);
      if (client_inbox_.empty()) break;
      item = std::move(client_inbox_.front());
      client_inbox_.pop_front();
      client_inbox_bytes_ -= std::min(client_inbox_bytes_, item.data.size());
    }
    if (item.open) {
      if (mux_) EndClient("");  // a previous client's leftovers
      {
        base::MutexLock lock(client_mu_);
        client_connected_ = true;
        client_out_ = ClientOutput{};
      }
      mux_.emplace(session_id_, target_id_, download_dir_);
      client_in_.clear();
      continue;
    }
    if (!mux_) continue;
    client_in_.append(item.data);
    size_t start = 0;
    bool closed = false;
    for (;;) {
      const size_t nul = client_in_.find('\0', start);
      if (nul == std::string::npos) break;
      CdpMux::FromClientResult r = mux_->FromClient(std::string_view(client_in_).substr(start, nul - start));
      start = nul + 1;
      if (r.to_client) PushClient(*r.to_client);
      std::string e;
      if (r.to_browser && !Send(*r.to_browser, NowMs() + kInputTimeoutMs, &e)) {
        EndClient("sending to the browser: " + e);
        closed = true;
        break;
      }
      if (r.close) {
        EndClient("");
        closed = true;
        break;
      }
    }
    if (closed) continue;
    client_in_.erase(0, start);
    if (client_in_.size() > kMaxClientMessageBytes) {
      EndClient("the CDP client sent a message over " + std::to_string(kMaxClientMessageBytes >> 20) + " MiB");
      continue;
    }
    if (item.close) EndClient(item.error);
  }
  flushing_ = false;
}

void Browser::RelayPump() {
  std::string e;
  FlushClientInput();
  if (!gone_) Pump(NowMs(), &e);
  if (gone_ && mux_) EndClient(GoneMessage());
}


}  // namespace sbx::init
