// The external CDP client's multiplexing onto the browser's pipe (sandbox/init/drivers/cdp.h, CdpMux) and the CDP
// endpoint's WebSocket framing (agent/cli/cdp_endpoint.h): pure logic, no Chromium.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "agent/cli/cdp_endpoint.h"
#include "sandbox/init/drivers/cdp.h"

namespace sbx {
namespace {

using init::CdpMux;
using nlohmann::json;

CdpMux Mux() { return CdpMux("DRIVER-S", "DRIVER-T", "/workspace/downloads"); }

TEST(CdpMuxTest, ClientIdsAreRewrittenIntoTheirOwnRangeAndMappedBack) {
  CdpMux mux = Mux();
  CdpMux::FromClientResult r = mux.FromClient(R"({"id":1,"method":"Browser.getVersion"})");
  ASSERT_TRUE(r.to_browser.has_value());
  EXPECT_FALSE(r.to_client.has_value());
  const int64_t internal = (*r.to_browser)["id"].get<int64_t>();
  EXPECT_GE(internal, CdpMux::kClientIdBase);
  EXPECT_LT(internal, CdpMux::kCleanupIdBase);
  EXPECT_LE(CdpMux::kCleanupIdBase, 0x7fffffff);  // Chromium refuses ids beyond an int32
  // The same client id again gets another internal id (answers are matched by ours, not the client's).
  CdpMux::FromClientResult r2 = mux.FromClient(R"({"id":1,"method":"Target.getTargets"})");
  ASSERT_TRUE(r2.to_browser.has_value());
  EXPECT_NE((*r2.to_browser)["id"].get<int64_t>(), internal);

  json answer = {{"id", internal}, {"result", {{"product", "Chrome/1"}}}};
  EXPECT_EQ(mux.FromBrowser(&answer), CdpMux::Route::kClient);
  EXPECT_EQ(answer["id"], 1);
  // The driver's own answers (small ids) stay the driver's; an unknown id in the client's range is dropped.
  json driver_answer = {{"id", 7}, {"result", json::object()}};
  EXPECT_EQ(mux.FromBrowser(&driver_answer), CdpMux::Route::kDriver);
  EXPECT_EQ(driver_answer["id"], 7);
  json stale = {{"id", internal}, {"result", json::object()}};
  EXPECT_EQ(mux.FromBrowser(&stale), CdpMux::Route::kDrop);
  json cleanup = {{"id", CdpMux::kCleanupIdBase + 3}, {"result", json::object()}};
  EXPECT_EQ(mux.FromBrowser(&cleanup), CdpMux::Route::kDrop);
}

TEST(CdpMuxTest, EventsAreRoutedBySession) {
  CdpMux mux = Mux();
  json driver_event = {{"method", "Page.loadEventFired"}, {"sessionId", "DRIVER-S"}, {"params", json::object()}};
  EXPECT_EQ(mux.FromBrowser(&driver_event), CdpMux::Route::kDriver);
  json client_event = {{"method", "Page.loadEventFired"}, {"sessionId", "CLIENT-S"}, {"params", json::object()}};
  EXPECT_EQ(mux.FromBrowser(&client_event), CdpMux::Route::kClient);
  json browser_event = {{"method", "Target.targetCreated"}, {"params", {{"targetInfo", {{"targetId", "X"}}}}}};
  EXPECT_EQ(mux.FromBrowser(&browser_event), CdpMux::Route::kBoth);
  // The driver's own attachment is not shown to the client.
  json driver_attach = {{"method", "Target.attachedToTarget"},
                        {"params", {{"sessionId", "DRIVER-S"}, {"targetInfo", {{"targetId", "DRIVER-T"}}}}}};
  EXPECT_EQ(mux.FromBrowser(&driver_attach), CdpMux::Route::kDriver);
}

TEST(CdpMuxTest, PolicyRefusals) {
  CdpMux mux = Mux();
  for (const char* text : {R"({"id":5,"method":"Browser.crash"})", R"({"id":5,"method":"Browser.crashGpuProcess"})",
                           R"({"id":5,"method":"Target.setRemoteLocations","params":{"locations":[]}})",
                           R"({"id":5,"method":"Tethering.bind","params":{"port":9}})",
                           R"({"id":5,"method":"Target.exposeDevToolsProtocol","params":{"targetId":"A"}})",
                           R"({"id":5,"method":"Target.closeTarget","params":{"targetId":"DRIVER-T"}})",
                           R"({"id":5,"method":"Target.detachFromTarget","params":{"sessionId":"DRIVER-S"}})",
                           R"({"id":5,"method":"Runtime.evaluate","sessionId":"DRIVER-S"})"}) {
    CdpMux::FromClientResult r = mux.FromClient(text);
    EXPECT_FALSE(r.to_browser.has_value()) << text;
    ASSERT_TRUE(r.to_client.has_value()) << text;
    EXPECT_EQ((*r.to_client)["id"], 5);
    EXPECT_NE((*r.to_client)["error"]["message"].get<std::string>().find("refused"), std::string::npos) << text;
    EXPECT_FALSE(r.close);
  }
  // Page.close of the session's own page, through the client's own session on it.
  json attached = {{"method", "Target.attachedToTarget"},
                   {"params", {{"sessionId", "C1"}, {"targetInfo", {{"targetId", "DRIVER-T"}}}}}};
  mux.FromBrowser(&attached);
  CdpMux::FromClientResult close_page = mux.FromClient(R"({"id":6,"method":"Page.close","sessionId":"C1"})");
  EXPECT_FALSE(close_page.to_browser.has_value());
  // A refusal carries the command's sessionId, as Chromium's answers do (clients route answers by it).
  ASSERT_TRUE(close_page.to_client.has_value());
  EXPECT_EQ((*close_page.to_client)["sessionId"], "C1");
  // Browser.close: a success, then this client's connection ends (the browser goes on).
  CdpMux::FromClientResult bc = mux.FromClient(R"({"id":9,"method":"Browser.close"})");
  EXPECT_FALSE(bc.to_browser.has_value());
  ASSERT_TRUE(bc.to_client.has_value());
  EXPECT_TRUE((*bc.to_client).contains("result"));
  EXPECT_TRUE(bc.close);
  // Not a command at all.
  EXPECT_TRUE(mux.FromClient("not json").to_client.has_value());
  EXPECT_TRUE(mux.FromClient(R"({"method":"X.y"})").to_client.has_value());
}

TEST(CdpMuxTest, DownloadPathsStayInTheJail) {
  CdpMux mux = Mux();
  CdpMux::FromClientResult r = mux.FromClient(
      R"({"id":2,"method":"Browser.setDownloadBehavior","params":{"behavior":"allowAndName","downloadPath":"/home/me/x"}})");
  ASSERT_TRUE(r.to_browser.has_value());
  EXPECT_EQ((*r.to_browser)["params"]["downloadPath"], "/workspace/downloads");
  CdpMux off("S", "T", "");
  CdpMux::FromClientResult refused =
      off.FromClient(R"({"id":2,"method":"Page.setDownloadBehavior","params":{"behavior":"allow","downloadPath":"/x"}})");
  EXPECT_FALSE(refused.to_browser.has_value());
}

TEST(CdpMuxTest, DisconnectDetachesSessionsAndClosesWhatTheClientCreated) {
  CdpMux mux = Mux();
  auto send = [&](const std::string& text) { return (*mux.FromClient(text).to_browser)["id"].get<int64_t>(); };
  const int64_t create = send(R"({"id":1,"method":"Target.createTarget","params":{"url":"about:blank"}})");
  json created = {{"id", create}, {"result", {{"targetId", "NEW-T"}}}};
  mux.FromBrowser(&created);
  const int64_t ctx = send(R"({"id":2,"method":"Target.createBrowserContext"})");
  json ctx_answer = {{"id", ctx}, {"result", {{"browserContextId", "CTX"}}}};
  mux.FromBrowser(&ctx_answer);
  const int64_t attach = send(R"({"id":3,"method":"Target.attachToTarget","params":{"targetId":"NEW-T","flatten":true}})");
  json attach_answer = {{"id", attach}, {"result", {{"sessionId", "C-S"}}}};
  mux.FromBrowser(&attach_answer);
  json auto_attached = {{"method", "Target.attachedToTarget"},
                        {"params", {{"sessionId", "C-S2"}, {"targetInfo", {{"targetId", "DRIVER-T"}}}}}};
  mux.FromBrowser(&auto_attached);
  EXPECT_EQ(mux.client_sessions(), 2u);

  std::vector<json> cleanup = mux.Disconnect();
  std::set<std::string> seen;
  for (const json& c : cleanup) {
    EXPECT_GE(c["id"].get<int64_t>(), CdpMux::kCleanupIdBase);
    seen.insert(c["method"].get<std::string>() + " " + c["params"].begin().value().get<std::string>());
  }
  EXPECT_EQ(seen, (std::set<std::string>{"Target.detachFromTarget C-S", "Target.detachFromTarget C-S2",
                                         "Target.closeTarget NEW-T", "Target.disposeBrowserContext CTX"}));
  EXPECT_TRUE(mux.Disconnect().empty());
}

// ---- WebSocket framing ----

std::string ClientFrame(uint8_t first_byte, std::string_view payload, bool masked = true) {
  std::string f;
  f.push_back(static_cast<char>(first_byte));
  const uint8_t mask_bit = masked ? 0x80 : 0;
  if (payload.size() < 126) {
    f.push_back(static_cast<char>(mask_bit | payload.size()));
  } else if (payload.size() < 65536) {
    f.push_back(static_cast<char>(mask_bit | 126));
    f.push_back(static_cast<char>(payload.size() >> 8));
    f.push_back(static_cast<char>(payload.size() & 0xff));
  } else {
    f.push_back(static_cast<char>(mask_bit | 127));
    for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((uint64_t{payload.size()} >> (i * 8)) & 0xff));
  }
  const char key[4] = {0x12, 0x34, 0x56, 0x78};
  if (masked) f.append(key, 4);
  for (size_t i = 0; i < payload.size(); ++i) f.push_back(masked ? static_cast<char>(payload[i] ^ key[i % 4]) : payload[i]);
  return f;
}

using Kind = cdp::WebSocketReader::Event::Kind;

TEST(WebSocketTest, AcceptKeyMatchesRfc6455Example) {
  EXPECT_EQ(cdp::WebSocketAccept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  EXPECT_EQ(cdp::Base64Encode(cdp::Sha1("abc")), "qZk+NkcGgWq6PiVxeFDCbJzQ2J0=");
}

TEST(WebSocketTest, FragmentedMessageWithPingBetweenFragments) {
  cdp::WebSocketReader r(1 << 20);
  std::string bytes = ClientFrame(0x01, "{\"id\":") + ClientFrame(0x89, "hi") + ClientFrame(0x00, "1,") +
                      ClientFrame(0x80, "\"method\":\"X.y\"}");
  // Fed a byte at a time: frames split anywhere are put back together.
  std::vector<cdp::WebSocketReader::Event> events;
  for (char c : bytes) {
    r.Feed(std::string_view(&c, 1));
    for (auto e = r.Next(); e.kind != Kind::kNeedMore; e = r.Next()) events.push_back(e);
  }
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, Kind::kPing);
  EXPECT_EQ(events[0].data, "hi");
  EXPECT_EQ(events[1].kind, Kind::kMessage);
  EXPECT_EQ(events[1].data, "{\"id\":1,\"method\":\"X.y\"}");
}

TEST(WebSocketTest, LongLengthsAndClose) {
  cdp::WebSocketReader r(1 << 20);
  const std::string big(70000, 'x');
  r.Feed(ClientFrame(0x81, big) + ClientFrame(0x81, std::string(300, 'y')) + ClientFrame(0x88, std::string("\x03\xe8", 2) + "bye"));
  auto a = r.Next();
  EXPECT_EQ(a.kind, Kind::kMessage);
  EXPECT_EQ(a.data, big);
  EXPECT_EQ(r.Next().data.size(), 300u);
  auto c = r.Next();
  EXPECT_EQ(c.kind, Kind::kClose);
  EXPECT_EQ(c.code, 1000);
  EXPECT_EQ(c.data, "bye");
}

TEST(WebSocketTest, UnmaskedClientFrameIsRefused) {
  cdp::WebSocketReader r(1 << 20);
  r.Feed(ClientFrame(0x81, "{}", /*masked=*/false));
  auto e = r.Next();
  EXPECT_EQ(e.kind, Kind::kError);
  EXPECT_EQ(e.code, 1002);
}

TEST(WebSocketTest, OversizeMessageIsRefusedBeforeItArrives) {
  cdp::WebSocketReader r(1000);
  // Only the header of a 64-bit length: refused at once, nothing buffered for it.
  r.Feed(ClientFrame(0x81, std::string(2000, 'x')).substr(0, 8));
  auto e = r.Next();
  EXPECT_EQ(e.kind, Kind::kError);
  EXPECT_EQ(e.code, 1009);
  // Fragments that add up past the cap, too.
  cdp::WebSocketReader f(1000);
  f.Feed(ClientFrame(0x01, std::string(600, 'a')) + ClientFrame(0x80, std::string(600, 'b')));
  EXPECT_EQ(f.Next().code, 1009);
}

TEST(WebSocketTest, ServerFramesAreUnmasked) {
  const std::string f = cdp::WebSocketFrame(cdp::kWsText, std::string(300, 'z'));
  EXPECT_EQ(static_cast<unsigned char>(f[0]), 0x81);
  EXPECT_EQ(static_cast<unsigned char>(f[1]), 126);  // no mask bit
  EXPECT_EQ(f.size(), 4u + 300u);
}

}  // namespace
}  // namespace sbx
