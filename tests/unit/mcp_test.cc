// The MCP server's JSON-RPC core (agent/mcp/mcp_server.h) against a fake Sandboxes service on an in-process
// gRPC server (no jail): framing errors, version negotiation, batches per version, unknown methods and tools,
// argument checks, progress, cancellation; and the HTTP request-head parser and Origin check (mcp_http.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "net/loopback_guard.h"
#include "agent/mcp/mcp_http.h"
#include "agent/mcp/mcp_server.h"
#include "agent/mcp/mcp_tools.h"
#include "duvo/sandbox/v1/sandboxes.grpc.pb.h"
#include "base/unique_fd.h"

namespace sbx::agent::mcp {
namespace {

namespace pb = ::duvo::sandbox::v1;
using json = nlohmann::json;
using ::sbx::UniqueFd;

// Sessions are ids; an exec of "sleep" streams one output chunk and waits for a signal; any other exec
// prints its argv joined and exits 0.
class FakeSandboxes final : public pb::Sandboxes::Service {
 public:
  grpc::Status Create(grpc::ServerContext*, const pb::CreateRequest* req, pb::Session* resp) override {
    ++creates;
    resp->set_id("s-" + std::to_string(creates.load()));
    return grpc::Status::OK;
  }
  grpc::Status Delete(grpc::ServerContext*, const pb::DeleteRequest* req, pb::DeleteResponse*) override {
    deleted = req->session_id();
    return grpc::Status::OK;
  }
  grpc::Status Call(grpc::ServerContext* ctx, grpc::ServerReaderWriter<pb::Event, pb::CallRequest>* stream) override {
    pb::CallRequest first;
    if (!stream->Read(&first)) return grpc::Status(grpc::INVALID_ARGUMENT, "no first message");
    uint64_t seq = 10;
    pb::Event e;
    auto output = [&](const std::string& data) {
      e.Clear();
      e.set_seq(++seq);
      e.mutable_output()->set_stream(pb::STDOUT);
      e.mutable_output()->set_data(data);
      stream->Write(e);
    };
    const pb::Exec& exec = first.call().exec();
    if (first.call().has_computer()) {
      // As the session does: the input as given, an error naming the field, or the text and image.
      computer_input = first.call().computer().input_json();
      const json in = json::parse(computer_input);
      e.Clear();
      e.set_seq(++seq);
      pb::ToolCallFinished* f = e.mutable_tool_call_finished();
      if (in["action"] == "bogus") {
        f->mutable_error()->set_code(grpc::INVALID_ARGUMENT);
        f->mutable_error()->set_message("computer.action: unknown action \"bogus\"");
      } else if (in["action"] == "cursor_position") {
        f->mutable_result()->mutable_computer()->set_text("X=3,Y=4");
      } else {
        f->mutable_result()->mutable_computer()->set_image_base64("iVBORw0K");
        f->mutable_result()->mutable_computer()->set_media_type("image/png");
      }
      stream->Write(e);
      return grpc::Status::OK;
    }
    e.Clear();
    e.set_seq(++seq);
    e.mutable_tool_call_finished()->set_call_id("c1");
    if (exec.argv_size() > 0 && exec.argv(0) == "sleep") {
      output("started\n");
      pb::CallRequest control;
      int signal = 0;
      while (signal == 0 && stream->Read(&control)) signal = control.signal();
      signaled = signal;
      e.set_seq(++seq);
      e.mutable_tool_call_finished()->mutable_result()->mutable_exec()->set_signal(signal);
    } else if (first.call().has_read_file()) {
      e.mutable_tool_call_finished()->mutable_error()->set_code(grpc::NOT_FOUND);
      e.mutable_tool_call_finished()->mutable_error()->set_message("no such file");
    } else {
      std::string joined;
      for (const std::string& a : exec.argv()) joined += a + " ";
      output(joined);
      e.set_seq(++seq);
      e.mutable_tool_call_finished()->mutable_result()->mutable_exec()->set_exit_code(0);
    }
    stream->Write(e);
    return grpc::Status::OK;
  }
  std::atomic<int> creates{0};
  std::atomic<int> signaled{0};
  std::string deleted;
  std::string computer_input;
};

class CollectingEmitter final : public Emitter {
 public:
  void Send(const json& message, uint64_t seq) override {
    std::lock_guard lock(mu);
    messages.push_back(message);
    seqs.push_back(seq);
  }
  size_t size() {
    std::lock_guard lock(mu);
    return messages.size();
  }
  std::mutex mu;
  std::vector<json> messages;
  std::vector<uint64_t> seqs;
};

class McpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    builder.RegisterService(&fake_);
    grpc_server_ = builder.BuildAndStart();
    stub_ = pb::Sandboxes::NewStub(grpc_server_->InProcessChannel(grpc::ChannelArguments()));
    McpServer::Options o;
    o.stub = stub_.get();
    o.create.set_kind(pb::FILE);
    server_ = std::make_unique<McpServer>(std::move(o));
  }
  void TearDown() override {
    server_.reset();
    grpc_server_->Shutdown();
  }
  json Send(const std::string& text, Emitter* emitter = nullptr) {
    std::optional<json> r = server_->HandleText(text, emitter);
    return r ? *r : json();
  }
  void Initialize(const std::string& version) {
    json r = Send(json{{"jsonrpc", "2.0"}, {"id", 0}, {"method", "initialize"},
                       {"params", {{"protocolVersion", version}, {"capabilities", json::object()},
                                   {"clientInfo", {{"name", "t"}, {"version", "1"}}}}}}
                      .dump());
    ASSERT_EQ(r["result"]["protocolVersion"], version) << r;
  }
  json Call(const std::string& tool, const json& args, int id = 5) {
    return Send(json{{"jsonrpc", "2.0"}, {"id", id}, {"method", "tools/call"},
                     {"params", {{"name", tool}, {"arguments", args}}}}
                    .dump());
  }

  FakeSandboxes fake_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<pb::Sandboxes::Stub> stub_;
  std::unique_ptr<McpServer> server_;
};

TEST_F(McpServerTest, MalformedJsonIsParseErrorWithNullId) {
  json r = Send("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ");
  EXPECT_EQ(r["error"]["code"], kParseError);
  EXPECT_TRUE(r["id"].is_null());
  r = Send("\xff\xfe");
  EXPECT_EQ(r["error"]["code"], kParseError);
}

TEST_F(McpServerTest, InvalidRequestsAreMinus32600) {
  EXPECT_EQ(Send(R"({"id": 1, "method": "ping"})")["error"]["code"], kInvalidRequest);         // no jsonrpc
  EXPECT_EQ(Send(R"({"jsonrpc": "2.0", "id": 1, "method": 7})")["error"]["code"], kInvalidRequest);
  EXPECT_EQ(Send(R"({"jsonrpc": "2.0", "id": null, "method": "ping"})")["error"]["code"], kInvalidRequest);
  EXPECT_EQ(Send(R"("just a string")")["error"]["code"], kInvalidRequest);
  EXPECT_EQ(Send(R"({"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]})")["error"]["code"], kInvalidParams);
}

TEST_F(McpServerTest, RequestsBeforeInitializeAreRefusedButPingWorks) {
  EXPECT_EQ(Send(R"({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})")["error"]["code"], kInvalidRequest);
  EXPECT_TRUE(Send(R"({"jsonrpc": "2.0", "id": 2, "method": "ping"})")["result"].is_object());
}

TEST_F(McpServerTest, NegotiatesEachSupportedVersionAndOffersLatestOtherwise) {
  for (const char* v : kProtocolVersions) {
    Initialize(v);
    EXPECT_EQ(server_->protocol_version(), v);
  }
  json r = Send(R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"1999-01-01"}})");
  EXPECT_EQ(r["result"]["protocolVersion"], kLatestProtocolVersion);
  EXPECT_EQ(r["result"]["capabilities"]["tools"]["listChanged"], false);
  r = Send(R"({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}})");
  EXPECT_EQ(r["error"]["code"], kInvalidParams);
}

TEST_F(McpServerTest, UnknownMethodIsMinus32601AndNotificationsGetNoAnswer) {
  Initialize("2025-06-18");
  json r = Send(R"({"jsonrpc":"2.0","id":"x","method":"resources/list"})");
  EXPECT_EQ(r["error"]["code"], kMethodNotFound);
  EXPECT_EQ(r["id"], "x");
  EXPECT_FALSE(server_->HandleText(R"({"jsonrpc":"2.0","method":"notifications/initialized"})", nullptr));
  EXPECT_FALSE(server_->HandleText(R"({"jsonrpc":"2.0","method":"notifications/whatever"})", nullptr));
}

TEST_F(McpServerTest, BatchesOnlyWhereTheVersionHasThem) {
  const std::string batch = R"([{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},
                               {"jsonrpc":"2.0","id":2,"method":"nope"}])";
  Initialize("2025-06-18");
  json r = Send(batch);
  ASSERT_TRUE(r.is_object()) << r;
  EXPECT_EQ(r["error"]["code"], kInvalidRequest);
  for (const char* v : {"2025-03-26", "2024-11-05"}) {
    Initialize(v);
    r = Send(batch);
    ASSERT_TRUE(r.is_array()) << v << r;
    ASSERT_EQ(r.size(), 2u);  // the notification gets nothing
    EXPECT_EQ(r[0]["id"], 1);
    EXPECT_TRUE(r[0]["result"].is_object());
    EXPECT_EQ(r[1]["error"]["code"], kMethodNotFound);
    EXPECT_EQ(Send("[]")["error"]["code"], kInvalidRequest);
    EXPECT_FALSE(server_->HandleText(R"([{"jsonrpc":"2.0","method":"notifications/x"}])", nullptr));
  }
}

TEST_F(McpServerTest, ToolsListHasStrictSchemasAndOnlyTheKindsTools) {
  Initialize("2025-06-18");
  json tools = Send(R"({"jsonrpc":"2.0","id":1,"method":"tools/list"})")["result"]["tools"];
  std::set<std::string> names;
  for (const json& t : tools) {
    names.insert(t["name"]);
    EXPECT_FALSE(t["description"].get<std::string>().empty());
    EXPECT_EQ(t["inputSchema"]["type"], "object");
    EXPECT_EQ(t["inputSchema"]["additionalProperties"], false) << t["name"];
    EXPECT_FALSE(t["inputSchema"].contains("anyOf")) << "model APIs refuse top-level combinators";
  }
  EXPECT_EQ(names, (std::set<std::string>{"exec", "read_file", "write_file", "list_files", "remove"}));
  json browser = ToolList(pb::BROWSER);
  EXPECT_EQ(browser.size(), 12u);
  EXPECT_TRUE(HasTool(pb::BROWSER, "browser_screenshot"));
  EXPECT_FALSE(HasTool(pb::FILE, "browser_screenshot"));
}

TEST_F(McpServerTest, ComputerIsOnlyADesktopToolWithAnthropicsInputSchema) {
  EXPECT_FALSE(HasTool(pb::FILE, "computer"));
  EXPECT_FALSE(HasTool(pb::BROWSER, "computer"));
  EXPECT_TRUE(HasTool(pb::DESKTOP, "computer"));
  json desktop = ToolList(pb::DESKTOP);
  EXPECT_EQ(desktop.size(), 6u);
  json schema;
  for (const json& t : desktop) {
    if (t["name"] == "computer") schema = t["inputSchema"];
  }
  ASSERT_TRUE(schema.is_object()) << desktop;
  EXPECT_EQ(schema["additionalProperties"], false);
  EXPECT_EQ(schema["required"], json::array({"action"}));
  std::set<std::string> props;
  for (const auto& [k, v] : schema["properties"].items()) props.insert(k);
  EXPECT_EQ(props, (std::set<std::string>{"action", "coordinate", "start_coordinate", "text", "duration",
                                          "scroll_direction", "scroll_amount", "region"}));
  EXPECT_EQ(schema["properties"]["action"]["enum"].size(), 17u) << schema["properties"]["action"];
  EXPECT_EQ(schema["properties"]["coordinate"]["minItems"], 2);
  EXPECT_EQ(schema["properties"]["coordinate"]["maxItems"], 2);
  EXPECT_EQ(schema["properties"]["coordinate"]["items"]["type"], "integer");
  EXPECT_EQ(schema["properties"]["region"]["maxItems"], 4);
}

TEST_F(McpServerTest, ComputerPassesItsInputAndReturnsTextAndImageContent) {
  McpServer::Options o;
  o.stub = stub_.get();
  o.create.set_kind(pb::DESKTOP);
  server_ = std::make_unique<McpServer>(std::move(o));
  Initialize("2025-06-18");
  const json click = {{"action", "left_click"}, {"coordinate", {10, 20}}, {"text", "shift"}};
  json r = Call("computer", click);
  ASSERT_TRUE(r.contains("result")) << r;
  EXPECT_FALSE(r["result"].contains("isError")) << r;
  EXPECT_EQ(json::parse(fake_.computer_input), click) << "arguments go to input_json unchanged";
  ASSERT_EQ(r["result"]["content"].size(), 1u) << r;
  EXPECT_EQ(r["result"]["content"][0], (json{{"type", "image"}, {"data", "iVBORw0K"}, {"mimeType", "image/png"}}));
  r = Call("computer", json{{"action", "cursor_position"}});
  EXPECT_EQ(r["result"]["content"], json::array({{{"type", "text"}, {"text", "X=3,Y=4"}}})) << r;
  // The session checks the input (its errors are more specific than a schema's); they are tool errors.
  r = Call("computer", json{{"action", "bogus"}});
  EXPECT_EQ(r["result"]["isError"], true) << r;
  EXPECT_NE(r["result"]["content"][0]["text"].get<std::string>().find("computer.action"), std::string::npos) << r;
  EXPECT_EQ(Call("computer", json::array({1}))["result"]["isError"], true);
  EXPECT_EQ(fake_.creates, 1);
}

TEST_F(McpServerTest, UnknownToolIsMinus32602AndCreatesNoSession) {
  Initialize("2025-06-18");
  EXPECT_EQ(Call("browser_click", json{{"selector", "a"}})["error"]["code"], kInvalidParams);
  EXPECT_EQ(Call("no_such_tool", json::object())["error"]["code"], kInvalidParams);
  EXPECT_EQ(fake_.creates, 0);
}

TEST_F(McpServerTest, BadArgumentsAreToolErrorsNamingTheField) {
  Initialize("2025-06-18");
  struct {
    const char* tool;
    json args;
    const char* says;
  } cases[] = {
      {"exec", json{{"argv", {"ls"}}, {"bogus", 1}}, "unknown property \"bogus\""},
      {"exec", json{{"argv", "ls"}}, "arguments.argv"},
      {"exec", json::object(), "exactly one of"},
      {"exec", json{{"argv", {"ls"}}, {"command", "ls"}}, "exactly one of"},
      {"exec", json{{"command", "ls"}, {"timeout_ms", -5}}, "arguments.timeout_ms"},
      {"read_file", json::object(), "\"path\" is required"},
      {"write_file", json{{"path", "a"}, {"content", "%%"}, {"encoding", "base64"}}, "not valid base64"},
      {"write_file", json{{"path", "a"}, {"content", "x"}, {"encoding", "rot13"}}, "arguments.encoding"},
  };
  for (const auto& c : cases) {
    json r = Call(c.tool, c.args);
    ASSERT_TRUE(r.contains("result")) << r;
    EXPECT_EQ(r["result"]["isError"], true) << c.tool << " " << c.args;
    EXPECT_NE(r["result"]["content"][0]["text"].get<std::string>().find(c.says), std::string::npos)
        << r["result"]["content"][0]["text"];
  }
  EXPECT_EQ(fake_.creates, 0);
}

TEST_F(McpServerTest, ExecStreamsProgressAndTheSessionIsCreatedOnceAndDeleted) {
  Initialize("2025-06-18");
  CollectingEmitter emitter;
  json r = Send(R"({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"exec",
                   "arguments":{"argv":["echo","hi"]},"_meta":{"progressToken":"tok"}}})",
                &emitter);
  ASSERT_TRUE(r.contains("result")) << r;
  EXPECT_FALSE(r["result"].contains("isError"));
  EXPECT_EQ(r["result"]["structuredContent"]["exit_code"], 0);
  EXPECT_EQ(r["result"]["structuredContent"]["stdout"], "echo hi ");
  ASSERT_EQ(emitter.messages.size(), 1u);
  EXPECT_EQ(emitter.messages[0]["method"], "notifications/progress");
  EXPECT_EQ(emitter.messages[0]["params"]["progressToken"], "tok");
  EXPECT_EQ(emitter.messages[0]["params"]["message"], "echo hi ");
  EXPECT_EQ(emitter.seqs[0], 12u);  // the output event's seq
  EXPECT_EQ(emitter.result_seq, 13u);  // tool_call_finished's
  // No progressToken: no progress.
  CollectingEmitter quiet;
  r = Send(R"({"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"exec","arguments":{"command":"x"}}})",
           &quiet);
  EXPECT_EQ(r["result"]["structuredContent"]["stdout"], "/bin/sh -c x ");
  EXPECT_TRUE(quiet.messages.empty());
  EXPECT_EQ(fake_.creates, 1);
  const std::string session = server_->session_id();
  server_->Shutdown();
  EXPECT_EQ(fake_.deleted, session);
}

TEST_F(McpServerTest, ToolErrorsAreResultsWithIsError) {
  Initialize("2024-11-05");
  json r = Call("read_file", json{{"path", "/nope"}});
  EXPECT_EQ(r["result"]["isError"], true);
  EXPECT_EQ(r["result"]["content"][0]["text"], "NOT_FOUND: no such file");
}

TEST_F(McpServerTest, CancelledExecIsKilledAndGetsNoResponse) {
  Initialize("2025-06-18");
  CollectingEmitter emitter;
  std::optional<json> response = json();
  std::thread call([&] {
    response = server_->HandleText(R"({"jsonrpc":"2.0","id":"long","method":"tools/call","params":{"name":"exec",
                                      "arguments":{"argv":["sleep"]},"_meta":{"progressToken":1}}})",
                                   &emitter);
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (emitter.size() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(emitter.size(), 1u) << "the call did not start";
  EXPECT_FALSE(server_->HandleText(
      R"({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"long","reason":"user"}})", nullptr));
  call.join();
  EXPECT_EQ(fake_.signaled, 9);
  EXPECT_FALSE(response.has_value()) << *response;
}

// --- HTTP ------------------------------------------------------------------------------------------------

TEST(McpHttpParseTest, ParsesAnOriginFormRequest) {
  absl::StatusOr<HttpRequest> r = ParseRequestHead(
      "POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Length: 12\r\nMcp-Session-Id:  abc \r\n\r\n");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "POST");
  EXPECT_EQ(r->path, "/mcp");
  EXPECT_EQ(r->query, "x=1");
  EXPECT_EQ(r->content_length, 12u);
  ASSERT_NE(r->Header("mcp-session-id"), nullptr);
  EXPECT_EQ(*r->Header("mcp-session-id"), "abc");
  EXPECT_TRUE(r->keep_alive);
}

TEST(McpHttpParseTest, RefusesWhatItDoesNotTake) {
  const char* bad[] = {
      "POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST /mcp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
      "POST /mcp HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST /mcp HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "POST http://x/mcp HTTP/1.1\r\n\r\n",
      "POST /mcp HTTP/2.0\r\n\r\n",
      "POST /mcp HTTP/1.1\r\n folded: x\r\n\r\n",
      "POST /mcp HTTP/1.1\r\nBad Header: x\r\n\r\n",
      "POST /mcp HTTP/1.1\r\nX: a\x01\r\n\r\n",
      "POST /mcp HTTP/1.1\r\n",
      "\r\n\r\n",
  };
  for (const char* head : bad) EXPECT_FALSE(ParseRequestHead(head).ok()) << head;
}

TEST(McpHttpOriginTest, LoopbackOrSameHostOnly) {
  EXPECT_TRUE(OriginAllowed("http://localhost:3000", "127.0.0.1:7443"));
  EXPECT_TRUE(OriginAllowed("http://127.0.0.1", "127.0.0.1:7443"));
  EXPECT_TRUE(OriginAllowed("https://[::1]:8080", "x"));
  EXPECT_TRUE(OriginAllowed("http://agent.internal:7443", "agent.internal:7443"));
  EXPECT_FALSE(OriginAllowed("http://evil.example", "127.0.0.1:7443"));
  EXPECT_FALSE(OriginAllowed("http://127.0.0.1.evil.example", "127.0.0.1:7443"));
  EXPECT_FALSE(OriginAllowed("null", "127.0.0.1:7443"));
  EXPECT_FALSE(OriginAllowed("file://", "127.0.0.1:7443"));
}

}  // namespace
TEST(LoopbackGuardTest, HostLiteralsOnly) {
  for (const char* ok : {"localhost", "LocalHost:7443", "127.0.0.1", "127.0.0.1:9222", "10.1.2.3:80", "[::1]",
                         "[::1]:7443", "[fe80::1]:1"}) {
    EXPECT_TRUE(HostHeaderIsLiteral(ok)) << ok;
  }
  for (const char* bad : {"evil.example", "evil.example:7443", "127.0.0.1.evil.example", "localhost.evil.example",
                          "0x7f.1", "127.1", "[::1", "[::1]x", "[evil]", "127.0.0.1:", "127.0.0.1:80:80",
                          "localhost:http", ""}) {
    EXPECT_FALSE(HostHeaderIsLiteral(bad)) << bad;
  }
}

TEST(LoopbackGuardTest, TheRuleAppliesToLoopbackConnectionsOnly) {
  // A TCP connection over 127.0.0.1: its accepted end is a loopback one.
  UniqueFd listener(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(listener.valid());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(listener.get(), 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  UniqueFd client(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_EQ(connect(client.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  UniqueFd accepted(accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(accepted.valid());
  EXPECT_TRUE(ConnectedViaLoopback(accepted.get()));
  EXPECT_FALSE(HostAllowedOnConnection(accepted.get(), "evil.example:80"));
  EXPECT_TRUE(HostAllowedOnConnection(accepted.get(), "127.0.0.1:80"));
  EXPECT_TRUE(HostAllowedOnConnection(accepted.get(), ""));
  // Not a loopback connection: any name (the platform's proxy's) passes.
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd a(sv[0]), b(sv[1]);
  EXPECT_FALSE(ConnectedViaLoopback(a.get()));
  EXPECT_TRUE(HostAllowedOnConnection(a.get(), "sandbox.platform.internal"));
}

}  // namespace sbx::agent::mcp
