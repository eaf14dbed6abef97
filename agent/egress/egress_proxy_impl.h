// EgressProxy::Impl: the proxy's event loop and its connections (egress_proxy.h). Internal to agent/egress:
// the loop and the connection lifecycle are in egress_proxy.cc, the rule decision, the ask gate and connecting
// in egress_decide.cc, the relay in egress_relay.cc. Every member function but stats() runs on the event loop
// thread, apart from ResolveLoop (the resolver threads) and the construction and destruction.
#ifndef SBX_AGENT_EGRESS_EGRESS_PROXY_IMPL_H_
#define SBX_AGENT_EGRESS_EGRESS_PROXY_IMPL_H_

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "agent/egress/egress_proxy.h"
#include "net/http1_parser.h"

namespace sbx::agent::egress_internal {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using http1::BodyFramer;
using http1::Request;

constexpr size_t kRelayBufferBytes = 64 << 10;     // per direction
constexpr auto kLinger = std::chrono::seconds(1);  // to write an answer and drain the client after it
constexpr auto kAcceptPause = milliseconds(100);   // after accept fails for lack of fds or memory
constexpr uint64_t kListenTag = 0;
constexpr uint64_t kWakeTag = 1;
constexpr int kMaxAcceptsPerWake = 64;

// Bytes waiting to be written, consumed from the front.
class Buffer {
 public:
  size_t size() const { return data_.size() - off_; }
  bool empty() const { return size() == 0; }
  std::string_view view() const { return std::string_view(data_).substr(off_); }
  void Append(std::string_view s) { data_.append(s.data(), s.size()); }
  void Consume(size_t n) {
    off_ += n;
    if (off_ == data_.size()) {
      Clear();
    } else if (off_ >= kRelayBufferBytes) {
      data_.erase(0, off_);
      off_ = 0;
    }
  }
  void Clear() {
    data_.clear();
    off_ = 0;
  }

 private:
  std::string data_;
  size_t off_ = 0;
};

enum class Phase {
  kHeader,      // reading the request header
  kResolving,   // a resolver thread has the name
  kAsking,      // held for a human: the ask hook has the question (no timer, no upstream)
  kConnecting,  // non-blocking connect to addresses[next_address]
  kRelay,       // bytes flow both ways
  kFinish,      // writing the proxy's own answer, then draining the client until EOF or the deadline
};

// One client connection and its upstream. Owned by the event loop.
struct Conn {
  uint64_t id = 0;
  UniqueFd client, upstream;
  uint32_t client_events = 0, upstream_events = 0;  // registered with epoll; 0: not registered
  Phase phase = Phase::kHeader;
  Clock::time_point deadline;  // its entry in timers_
  Clock::time_point last_activity;
  std::string head;     // kHeader: the bytes read so far
  Buffer up, down;      // client -> upstream; upstream -> client (or the proxy's own answer)
  size_t down_own = 0;  // bytes at the front of `down` that the proxy wrote (the 200), not counted
  bool client_eof = false, upstream_eof = false, upstream_shut = false, client_shut = false;
  Request req;
  std::string destination;                  // "host:port" once known
  std::string request_line;                 // plain HTTP: the client's request line (Printable), for a question
  std::string rule;                         // the rule that decided, once one did (audits)
  uint64_t question = 0;                    // kAsking: the question it waits on
  std::vector<sockaddr_storage> addresses;  // checked, port set
  size_t next_address = 0;
  std::string connect_error;
  bool tunnel_checked = false;    // the nested-CONNECT check has passed
  bool response_started = false;  // an upstream byte arrived
  BodyFramer body;
  bool dead = false;
};

enum class Action { kDenied, kNested, kBadRequest, kFailed, kRejected, kTimedOut };

// The audit action of a refusal ("egress_denied", ...).
const char* ActionName(Action a);

inline bool Transient(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

// Where the ask hook's answers land, from any thread. Shared with every `done` the hook holds, so an answer
// that comes after the proxy is gone finds `closed` and goes nowhere (the eventfd is written only while the
// proxy is alive: `closed` is set under `mu` before the fd is closed).
struct AskInbox {
  absl::Mutex mu;
  bool closed ABSL_GUARDED_BY(mu) = false;
  int wake_fd = -1;  // the loop's eventfd; not owned
  std::deque<std::pair<uint64_t, EgressAnswer>> answers ABSL_GUARDED_BY(mu);  // question id, answer

  void Post(uint64_t question, EgressAnswer answer) {
    absl::MutexLock lock(&mu);
    if (closed) return;
    answers.emplace_back(question, std::move(answer));
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof(one));
  }
  bool Has(uint64_t question) {
    absl::MutexLock lock(&mu);
    return std::any_of(answers.begin(), answers.end(), [&](const auto& a) { return a.first == question; });
  }
};

// One question to the ask hook and the connections waiting on it.
struct Question {
  std::string key;          // destination + "\n" + rule
  std::string destination;
  std::string rule;
  std::string call_id;
  std::string request_id;
  std::vector<uint64_t> conns;
};

}  // namespace sbx::agent::egress_internal

namespace sbx::agent {

class EgressProxy::Impl {
 public:
  using Action = egress_internal::Action;
  using AskInbox = egress_internal::AskInbox;
  using Clock = egress_internal::Clock;
  using Conn = egress_internal::Conn;
  using Question = egress_internal::Question;

  Impl(UniqueFd listen, UniqueFd epoll, UniqueFd wake, EgressProxyOptions options);
  ~Impl();
  void StartThreads();
  Stats stats() const;

 private:
  struct Resolved {
    uint64_t id;
    absl::StatusOr<std::vector<sockaddr_storage>> result;
  };

  // ---- threads

  void Wake();
  void ResolveLoop(std::stop_token stop);
  bool ResolverHasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(resolve_mu_) {
    return !jobs_.empty() || resolvers_stopping_;
  }
  void CancelResolve(uint64_t id);
  void Run(std::stop_token stop);
  void Dispatch(uint64_t tag, uint32_t events);

  // ---- connection lifecycle

  void Accept();
  void Overloaded(UniqueFd client);
  void Close(Conn& c);
  void ResetUpstream(Conn& c);
  void SetDeadline(Conn& c, Clock::time_point when);
  void Audit(const Conn* c, const char* action, std::string destination, std::string detail);
  void Emit(EgressAudit a);

  // Ends the request with the proxy's own answer (or, once upstream bytes reached the client, just closes),
  // audited as `action`.
  void Respond(Conn& c, int status, Action action, std::string detail);
  void OnTimeout(Conn& c, Clock::time_point now);

  // ---- request header

  void ReadHead(Conn& c);

  // ---- decision and connect

  void BeginResolve(Conn& c);
  void ProcessResolved();

  // The host's own networks, re-read when older than kHostAddressesMaxAge (interfaces and addresses come and
  // go; a netlink dump per decision is cheap, this bounds it under a flood of requests).
  const absl::StatusOr<std::vector<IpNetwork>>& HostNetworks();
  void Decide(Conn& c, const std::vector<sockaddr_storage>& resolved);
  void StartConnect(Conn& c);

  // egress_allowed, once per destination and tool call (see the header).
  void AuditAllowed(const Conn& c);

  // ---- the ask gate

  // Holds `c` for a human: joins the open question about its destination and rule, or asks a new one.
  void Hold(Conn& c);

  // `c` (held) is going away: when nobody else waits on its question, the question is withdrawn.
  void Withdraw(const Conn& c);
  void ProcessAnswers();
  void AnswerQuestion(const Question& q, const EgressAnswer& answer);
  void TryConnect(Conn& c);
  void FinishConnect(Conn& c);
  void Connected(Conn& c);

  // ---- relay

  // The first client bytes in a tunnel must not be a CONNECT request (see the header).
  void CheckTunnel(Conn& c);
  bool ForwardAllowed(const Conn& c) const { return !c.req.connect || c.tunnel_checked; }

  void ReadClient(Conn& c);
  void WriteUpstream(Conn& c);
  void ReadUpstream(Conn& c);
  void UpstreamFailed(Conn& c, int err);
  void WriteClient(Conn& c);
  void DrainClient(Conn& c);

  // Moves what can move without waiting, passes half-closes on, ends finished connections, and updates the
  // epoll interest. Called after every event on a connection.
  void Pump(Conn& c);
  void Pump2(Conn& c);
  void UpdateInterest(Conn& c);

  // Registers `fd` for `wanted` (level-triggered). An fd with nothing wanted is taken out of the set, so a
  // hang-up the loop cannot act on yet does not wake it over and over.
  void SetInterest(const UniqueFd& fd, uint64_t tag, uint32_t* current, uint32_t wanted);

  const EgressProxyOptions options_;
  const EgressPolicy policy_;
  UniqueFd listen_, epoll_, wake_;

  // Event loop thread only.
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::vector<uint64_t> dead_;  // closed during this iteration; erased at its end
  std::set<std::pair<Clock::time_point, uint64_t>> timers_;
  uint64_t next_id_ = 1;  // tags: id << 1 | side, so ids from 1 never collide with kListenTag/kWakeTag
  bool accept_paused_ = false;
  Clock::time_point accept_resume_;
  bool overload_audited_ = false;
  std::vector<char> scratch_;
  absl::StatusOr<std::vector<IpNetwork>> host_networks_ = std::vector<IpNetwork>{};
  std::optional<EgressPolicy> ceiling_;  // the host's rules over a request's (options_.ceiling)
  std::set<std::string> allowed_audited_;  // "destination\ncall id" pairs audited as egress_allowed
  std::map<uint64_t, Question> questions_;  // open questions to the ask hook, by id
  std::map<std::string, uint64_t> question_by_key_;
  uint64_t next_question_ = 1;
  const std::shared_ptr<AskInbox> inbox_ = std::make_shared<AskInbox>();
  std::optional<Clock::time_point> host_networks_read_;  // nullopt: never read

  // The resolver threads' queue: jobs in, results out (the loop is woken through wake_ for each result).
  absl::Mutex resolve_mu_;
  std::deque<std::pair<uint64_t, std::string>> jobs_ ABSL_GUARDED_BY(resolve_mu_);
  std::deque<Resolved> resolved_ ABSL_GUARDED_BY(resolve_mu_);
  bool resolvers_stopping_ ABSL_GUARDED_BY(resolve_mu_) = false;  // set by ~Impl: the resolvers return

  std::atomic<uint64_t> allowed_{0}, denied_{0}, failed_{0}, bad_requests_{0}, overloaded_{0}, bytes_up_{0},
      bytes_down_{0}, active_{0}, asked_{0}, approved_{0}, rejected_{0};

  std::vector<std::jthread> resolvers_;
  std::jthread loop_;
};

}  // namespace sbx::agent

#endif  // SBX_AGENT_EGRESS_EGRESS_PROXY_IMPL_H_
