// The browser's storage state (Playwright's storageState): its cookies and each origin's localStorage, imported
// into and exported from the running browser.
#include <map>
#include <string>
#include <utility>

#include "sandbox/init/drivers/cdp.h"
#include "sandbox/init/drivers/cdp_internal.h"

namespace sbx::init {

namespace {

// "https://a.example:8443/x?y" -> "https://a.example:8443"; "" for what has no web origin (about:, data:...).
std::string OriginOf(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) return "";
  const std::string s = url.substr(0, scheme);
  if (s != "http" && s != "https") return "";
  const size_t end = url.find_first_of("/?#", scheme + 3);
  return url.substr(0, end);
}

}  // namespace

bool Browser::ImportStorageState(const std::string& state_json, std::string* error) {
  const json state = json::parse(state_json, nullptr, false);
  if (!state.is_object() || TooDeep(state, 64)) {
    *error = "storage state: not a JSON object (Playwright's storageState: {\"cookies\": [...], \"origins\": [...]})";
    return false;
  }
  if (const json* cookies = Field(state, "cookies"); cookies != nullptr && !ImportCookies(*cookies, error)) {
    return false;
  }
  if (const json* origins = Field(state, "origins"); origins != nullptr && !ImportOrigins(*origins, error)) {
    return false;
  }
  return true;
}

bool Browser::ImportCookies(const json& cookies, std::string* error) {
  if (!cookies.is_array()) {
    *error = "storage state: \"cookies\" is not an array";
    return false;
  }
  json result;
  json params = json::array();
  for (const json& c : cookies) {
    if (!c.is_object() || Str(c, "name").empty()) {
      *error = "storage state: a cookie without a name";
      return false;
    }
    json p = {{"name", Str(c, "name")}, {"value", Str(c, "value")}, {"domain", Str(c, "domain")},
              {"path", Str(c, "path").empty() ? "/" : Str(c, "path")}};
    if (const json* v = Field(c, "httpOnly"); v != nullptr && v->is_boolean()) p["httpOnly"] = *v;
    if (const json* v = Field(c, "secure"); v != nullptr && v->is_boolean()) p["secure"] = *v;
    const std::string same_site = Str(c, "sameSite");
    if (same_site == "Strict" || same_site == "Lax" || same_site == "None") p["sameSite"] = same_site;
    if (const double expires = Num(c, "expires", -1); expires > 0) p["expires"] = expires;
    params.push_back(std::move(p));
  }
  return params.empty() || Call("Storage.setCookies", {{"cookies", params}}, &result, error, kInputTimeoutMs, true);
}

bool Browser::ImportOrigins(const json& origins, std::string* error) {
  if (!origins.is_array()) {
    *error = "storage state: \"origins\" is not an array";
    return false;
  }
  // localStorage belongs to a frame of its origin: the page is navigated to each origin with the request
  // answered here (Fetch: no network, nothing for the proxy to see), the items are set by script, and the
  // page goes back to about:blank. Runs before the session is handed out.
  json result;
  bool fetching = false;
  for (const json& o : origins) {
    const std::string origin = OriginOf(Str(o, "origin"));
    if (origin.empty()) {
      *error = "storage state: an origin that is not http(s)://HOST[:PORT]: \"" + Cut(Str(o, "origin"), 200) + "\"";
      return false;
    }
    const json* items = Field(o, "localStorage");
    if (items == nullptr || !items->is_array() || items->empty()) continue;
    json pairs = json::array();
    for (const json& item : *items) pairs.push_back(json::array({Str(item, "name"), Str(item, "value")}));
    if (!fetching) {
      if (!Call("Fetch.enable", {{"patterns", json::array({{{"urlPattern", "*"}}})}}, &result, error, kInputTimeoutMs)) {
        return false;
      }
      fetching = true;
    }
    if (!LoadOriginLocally(origin, error)) return false;
    json value;
    if (!EvaluateValue("(() => { for (const [k, v] of " + pairs.dump(-1, ' ', true) +
                           ") localStorage.setItem(k, v); return true; })()",
                       kInputTimeoutMs, &value, error)) {
      return false;
    }
    if (storage_origins_.size() < 1000) storage_origins_.insert(origin);
  }
  if (fetching) {
    if (!Call("Fetch.disable", json::object(), &result, error, kInputTimeoutMs)) return false;
    if (!Navigate("about:blank", "load", kInputTimeoutMs, error)) return false;
  }
  return true;
}

bool Browser::LoadOriginLocally(const std::string& origin, std::string* error) {
  json result;
  const int64_t deadline = NowMs() + kInputTimeoutMs;
  paused_requests_.clear();
  json navigate = {{"id", next_id_++}, {"method", "Page.navigate"}, {"params", {{"url", origin + "/"}}},
                   {"sessionId", session_id_}};
  if (!Send(navigate, deadline, error)) return false;  // its answer comes after the fulfilment; dropped
  while (paused_requests_.empty()) {
    if (NowMs() >= deadline) {
      *error = "storage state: loading " + origin + " for its localStorage: no request to answer";
      return false;
    }
    if (!Pump(deadline, error)) return false;
  }
  // "<html></html>", base64
  if (!Call("Fetch.fulfillRequest",
            {{"requestId", paused_requests_.front()},
             {"responseCode", 200},
             {"responseHeaders", json::array({{{"name", "Content-Type"}, {"value", "text/html"}}})},
             {"body", "PGh0bWw+PC9odG1sPg=="}},
            &result, error, kInputTimeoutMs)) {
    return false;
  }
  json value;
  std::string e;
  while (!EvaluateValue("location.origin", kInputTimeoutMs, &value, &e) || value != origin) {
    if (NowMs() >= deadline) {
      *error = "storage state: " + origin + " did not load for its localStorage" + (e.empty() ? "" : ": " + e);
      return false;
    }
    SleepMs(20);
  }
  return true;
}

bool Browser::ExportStorageState(std::string* state_json, std::string* error) {
  json result;
  if (!Call("Storage.getCookies", json::object(), &result, error, kInputTimeoutMs, true)) return false;
  json cookies = json::array();
  if (const json* list = Field(result, "cookies"); list != nullptr && list->is_array()) {
    for (const json& c : *list) {
      cookies.push_back({{"name", Str(c, "name")},
                         {"value", Str(c, "value")},
                         {"domain", Str(c, "domain")},
                         {"path", Str(c, "path")},
                         {"expires", Field(c, "session") != nullptr && (*Field(c, "session")) == true ? -1.0 : Num(c, "expires", -1)},
                         {"httpOnly", Field(c, "httpOnly") != nullptr && (*Field(c, "httpOnly")) == true},
                         {"secure", Field(c, "secure") != nullptr && (*Field(c, "secure")) == true},
                         {"sameSite", Str(c, "sameSite").empty() ? "Lax" : Str(c, "sameSite")}});
    }
  }
  // Each origin's localStorage is read in a page of that origin (DOMStorage needs a frame of it): the pages
  // open now, attached to for the occasion. Origins imported but not open now are not exported.
  std::map<std::string, std::string> origin_targets;  // origin -> a page target showing it
  if (!Call("Target.getTargets", json::object(), &result, error, kInputTimeoutMs, true)) return false;
  if (const json* infos = Field(result, "targetInfos"); infos != nullptr && infos->is_array()) {
    for (const json& t : *infos) {
      const std::string origin = Str(t, "type") == "page" ? OriginOf(Str(t, "url")) : "";
      if (!origin.empty() && origin_targets.size() < 100) origin_targets.emplace(origin, Str(t, "targetId"));
    }
  }
  json out_origins = json::array();
  for (const auto& [origin, target] : origin_targets) {
    std::string session = session_id_;
    const bool own = target == target_id_;
    if (!own) {
      if (!Call("Target.attachToTarget", {{"targetId", target}, {"flatten", true}}, &result, error, kInputTimeoutMs,
                true)) {
        continue;  // closed meanwhile
      }
      session = Str(result, "sessionId");
    }
    json items = json::array();
    json value;
    const bool read = CallIn(session, "Runtime.evaluate",
                             {{"expression", "JSON.stringify(Object.entries(localStorage))"}, {"returnByValue", true}},
                             &value, error, kInputTimeoutMs);
    if (!own) {
      json ignored;
      std::string e;
      Call("Target.detachFromTarget", {{"sessionId", session}}, &ignored, &e, kInputTimeoutMs, true);
    }
    if (!read) return false;
    const json* r = Field(value, "result");
    const json entries = r != nullptr && Field(*r, "value") != nullptr && Field(*r, "value")->is_string()
                             ? json::parse(Field(*r, "value")->get<std::string>(), nullptr, false)
                             : json();
    if (entries.is_array()) {
      for (const json& e : entries) {
        if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
          items.push_back({{"name", e[0]}, {"value", e[1]}});
        }
      }
    }
    if (!items.empty()) out_origins.push_back({{"origin", origin}, {"localStorage", std::move(items)}});
  }
  // ASCII only (ensure_ascii): what a page stored cannot put terminal controls into a printed state.
  *state_json = json{{"cookies", std::move(cookies)}, {"origins", std::move(out_origins)}}.dump(-1, ' ', true);
  return true;
}

}  // namespace sbx::init
