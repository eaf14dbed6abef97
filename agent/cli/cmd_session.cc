// create, get, list, cancel, delete; approve, reject, answer.
#include <cctype>
#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>

#include "agent/cli/commands.h"

namespace sbx::cli {
namespace {

// The session kind, labels, limits and egress rules of a new session.
bool BuildCreateBasics(const CreateFlags& f, pb::SessionKind kind, pb::CreateRequest* req) {
  req->set_kind(kind);
  req->set_ttl_ms(static_cast<uint64_t>(f.ttl_s * 1000));
  req->set_idle_timeout_ms(static_cast<uint64_t>(f.idle_s * 1000));
  for (const std::string& kv : f.labels) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      fprintf(stderr, "sandboxctl: --label '%s': expected KEY=VALUE\n", kv.c_str());
      return false;
    }
    (*req->mutable_labels())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  req->set_idempotency_key(f.idempotency_key);
  if (f.memory_limit) req->mutable_policy()->mutable_limits()->set_memory_max_bytes(f.memory_limit);
  if (f.pids_limit) req->mutable_policy()->mutable_limits()->set_pids_max(f.pids_limit);
  if (!f.allow.empty() || !f.ask.empty() || !f.egress_default.empty()) {
    pb::EgressRequest* egress = req->mutable_egress();
    egress->mutable_allow()->Add(f.allow.begin(), f.allow.end());
    egress->mutable_ask()->Add(f.ask.begin(), f.ask.end());
    if (f.egress_default == "ask") {
      egress->set_default_(pb::EgressRequest::ASK);
    } else if (!f.egress_default.empty() && f.egress_default != "deny") {
      fprintf(stderr, "sandboxctl: --egress-default '%s': expected deny or ask\n", f.egress_default.c_str());
      return false;
    }
  }
  return true;
}

// The desktop's and the browser's own flags.
bool BuildCreateKindFlags(const CreateFlags& f, pb::SessionKind kind, pb::CreateRequest* req) {
  if (!f.display.empty() || f.window_manager || f.vnc) {
    if (kind != pb::DESKTOP) {
      fprintf(stderr, "sandboxctl: --display, --window-manager and --vnc are for --kind desktop\n");
      return false;
    }
    unsigned w = 0, h = 0;
    if (!f.display.empty() && !ParseSize(f.display, &w, &h)) {
      fprintf(stderr, "sandboxctl: --display '%s': expected WIDTHxHEIGHT, e.g. 1024x768\n", f.display.c_str());
      return false;
    }
    req->mutable_desktop()->set_width(w);
    req->mutable_desktop()->set_height(h);
    req->mutable_desktop()->set_window_manager(f.window_manager);
    req->mutable_desktop()->set_vnc(f.vnc);
  }
  if (!f.storage_state.empty()) {
    if (kind != pb::BROWSER) {
      fprintf(stderr, "sandboxctl: --storage-state is for --kind browser\n");
      return false;
    }
    std::ifstream in(f.storage_state, std::ios::binary);
    if (!in) {
      fprintf(stderr, "sandboxctl: --storage-state '%s': cannot be read\n", f.storage_state.c_str());
      return false;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    req->mutable_browser()->set_storage_state_json(ss.str());
  }
  return true;
}

bool BuildCreate(const CreateFlags& f, pb::CreateRequest* req) {
  pb::SessionKind kind;
  std::string upper = f.kind;
  for (char& c : upper) c = static_cast<char>(toupper(c));
  if (!pb::SessionKind_Parse(upper, &kind) || kind == pb::SESSION_KIND_UNSPECIFIED) {
    fprintf(stderr, "sandboxctl: --kind: '%s' is not file, browser or desktop\n", f.kind.c_str());
    return false;
  }
  return BuildCreateBasics(f, kind, req) && BuildCreateKindFlags(f, kind, req);
}

// get and cancel: an RPC on one session that answers with the session, printed.
template <typename Request, typename Rpc>
int SessionRpc(Ctl& ctl, const std::string& session_id, Rpc rpc) {
  auto ctx = ctl.Context();
  Request req;
  req.set_session_id(session_id);
  pb::Session session;
  grpc::Status status = rpc(ctl.Stub(), ctx.get(), req, &session);
  if (!status.ok()) return RpcError(status, *ctx);
  Print(ctl.g, session, Describe(session));
  return 0;
}

int List(Ctl& ctl, const std::vector<std::string>& selector) {
  auto ctx = ctl.Context();
  pb::ListRequest req;
  for (const std::string& kv : selector) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos) {
      fprintf(stderr, "sandboxctl: --label '%s': expected KEY=VALUE\n", kv.c_str());
      return 2;
    }
    (*req.mutable_label_selector())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  pb::ListResponse resp;
  grpc::Status status = ctl.Stub().List(ctx.get(), req, &resp);
  if (!status.ok()) return RpcError(status, *ctx);
  std::string text;
  for (const pb::Session& s : resp.sessions()) text += Describe(s) + "\n";
  if (!text.empty()) text.pop_back();
  Print(ctl.g, resp, text);
  return 0;
}

// approve / reject / answer: decide a session's human request (Sandboxes.RespondHumanRequest).
struct DecideArgs {
  std::string session_id, request_id, note, text, idempotency_key;
  bool for_session = false;
};

int Decide(Ctl& ctl, const DecideArgs& a, pb::HumanDecision::Decision decision) {
  auto ctx = ctl.Context();
  pb::RespondHumanRequestRequest req;
  req.set_session_id(a.session_id);
  req.set_request_id(a.request_id);
  req.set_decision(decision);
  req.set_scope(a.for_session ? pb::HumanDecision::SESSION : pb::HumanDecision::REQUEST);
  req.set_note(a.note);
  req.set_text(a.text);
  req.set_idempotency_key(a.idempotency_key);
  pb::HumanDecision decided;
  grpc::Status status = ctl.Stub().RespondHumanRequest(ctx.get(), req, &decided);
  if (!status.ok()) return RpcError(status, *ctx);
  Print(ctl.g, decided,
        ForTerminal(decided.request_id()) + ": " + pb::HumanDecision::Decision_Name(decided.decision()) +
            (decided.scope() == pb::HumanDecision::SESSION ? " (for the session)" : ""));
  return 0;
}

void AddDecideCommand(CLI::App& app, Ctl& ctl, const char* name, const char* help,
                      pb::HumanDecision::Decision decision) {
  auto a = std::make_shared<DecideArgs>();
  CLI::App* c = app.add_subcommand(name, help);
  c->add_option("session", a->session_id)->required();
  c->add_option("request", a->request_id, "The request's id (hr-N), from `get` or the session's events")->required();
  if (std::string_view(name) == "answer") {
    c->add_option("text", a->text, "The answer")->required();
  } else {
    c->add_flag("--for-session", a->for_session, "Decide this action for the rest of the session, unasked");
  }
  c->add_option("--note", a->note, "Why (recorded in the decision)");
  c->add_option("--idempotency-key", a->idempotency_key, "Same key + same answer = the recorded decision again");
  ctl.On(c, [&ctl, a, decision] { return Decide(ctl, *a, decision); });
}

}  // namespace

void AddCreateFlags(CLI::App* c, CreateFlags& cf) {
  c->add_option("--kind", cf.kind, "file, browser or desktop");
  c->add_option("--ttl", cf.ttl_s, "Session time to live, seconds");
  c->add_option("--idle-timeout", cf.idle_s, "Idle timeout, seconds");
  c->add_option("--label", cf.labels, "KEY=VALUE")->allow_extra_args(false);
  c->add_option("--idempotency-key", cf.idempotency_key, "Same key + same request = same session");
  c->add_option("--memory-limit", cf.memory_limit, "Bytes (narrows the host policy)");
  c->add_option("--pids-limit", cf.pids_limit, "Processes (narrows the host policy)");
  c->add_option("--display", cf.display, "Desktop: WIDTHxHEIGHT (default 1280x800)");
  c->add_flag("--window-manager", cf.window_manager, "Desktop: run a window manager");
  c->add_flag("--vnc", cf.vnc, "Desktop: allow a live view over VNC");
  c->add_option("--allow", cf.allow, "Egress: a destination rule (HOST[:PORT]) this session may reach; "
                                     "repeatable. Any egress flag replaces the host policy's rules with the "
                                     "session's own, which must lie inside them")
      ->allow_extra_args(false);
  c->add_option("--ask", cf.ask, "Egress: a destination rule held for a human's approval; repeatable")
      ->allow_extra_args(false);
  c->add_option("--egress-default", cf.egress_default,
                "Egress: deny (default) or ask: what happens to a destination no rule names");
  c->add_option("--storage-state", cf.storage_state, "Browser: load a Playwright storageState JSON file");
}

int CreateSession(Ctl& ctl, const CreateFlags& flags, pb::Session* session) {
  pb::CreateRequest req;
  if (!BuildCreate(flags, &req)) return 2;
  auto ctx = ctl.Context();
  grpc::Status status = ctl.Stub().Create(ctx.get(), req, session);
  if (!status.ok()) return RpcError(status, *ctx);
  return 0;
}

int DeleteSession(Ctl& ctl, const std::string& session_id) {
  auto ctx = ctl.Context();
  pb::DeleteRequest req;
  req.set_session_id(session_id);
  pb::DeleteResponse resp;
  grpc::Status status = ctl.Stub().Delete(ctx.get(), req, &resp);
  if (!status.ok()) return RpcError(status, *ctx);
  return 0;
}

void AddSessionCommands(CLI::App& app, Ctl& ctl) {
  auto cf = std::make_shared<CreateFlags>();
  CLI::App* create = app.add_subcommand("create", "Create a session; prints its id");
  AddCreateFlags(create, *cf);
  ctl.On(create, [&ctl, cf] {
    pb::Session session;
    if (const int rc = CreateSession(ctl, *cf, &session); rc != 0) return rc;
    Print(ctl.g, session, session.id());
    return 0;
  });
  auto session_id = std::make_shared<std::string>();
  CLI::App* get = app.add_subcommand("get", "Show a session");
  get->add_option("session", *session_id)->required();
  ctl.On(get, [&ctl, session_id] {
    return SessionRpc<pb::GetRequest>(ctl, *session_id, [](auto& stub, auto* ctx, const auto& req, auto* resp) {
      return stub.Get(ctx, req, resp);
    });
  });
  auto selector = std::make_shared<std::vector<std::string>>();
  CLI::App* list = app.add_subcommand("list", "List sessions");
  list->add_option("--label", *selector, "KEY=VALUE (all must match)")->allow_extra_args(false);
  ctl.On(list, [&ctl, selector] { return List(ctl, *selector); });
  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a session");
  cancel->add_option("session", *session_id)->required();
  ctl.On(cancel, [&ctl, session_id] {
    return SessionRpc<pb::CancelRequest>(ctl, *session_id, [](auto& stub, auto* ctx, const auto& req, auto* resp) {
      return stub.Cancel(ctx, req, resp);
    });
  });
  CLI::App* del = app.add_subcommand("delete", "Delete a session");
  del->add_option("session", *session_id)->required();
  ctl.On(del, [&ctl, session_id] { return DeleteSession(ctl, *session_id); });
}

void AddDecideCommands(CLI::App& app, Ctl& ctl) {
  AddDecideCommand(app, ctl, "approve", "Approve a human request: approve SESSION REQUEST", pb::HumanDecision::APPROVE);
  AddDecideCommand(app, ctl, "reject", "Reject a human request: reject SESSION REQUEST", pb::HumanDecision::REJECT);
  AddDecideCommand(app, ctl, "answer", "Answer a question: answer SESSION REQUEST TEXT", pb::HumanDecision::ANSWER);
}

}  // namespace sbx::cli
