// The browser driver (sandbox/init/drivers/cdp.h) on the host, against the real Chromium: a small HTTP server in the
// test serves known pages, so screenshots are checked pixel by pixel and form submissions arrive at the server.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "sandbox/init/drivers/cdp.h"
#include "tests/common/png_image.h"

namespace sbx::init {
namespace {

using ::sbx::testing::DecodePng;
using ::sbx::testing::Image;

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr char kChromium[] = "/usr/lib/chromium/chromium";
constexpr uint32_t kPageColour = 0x0a78c8;  // the test pages' background

// Writing to a dead Chromium's pipe must not kill the test (sandbox-init ignores SIGPIPE too).
const bool kSigpipeIgnored = [] {
  signal(SIGPIPE, SIG_IGN);
  return true;
}();

long long MsSince(Clock::time_point start) {
  return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count());
}

bool Near(uint32_t a, uint32_t b) {
  for (int shift : {0, 8, 16}) {
    const int x = static_cast<int>((a >> shift) & 0xff), y = static_cast<int>((b >> shift) & 0xff);
    if (std::abs(x - y) > 3) return false;
  }
  return true;
}

// A tiny HTTP/1.0 server on 127.0.0.1 (port chosen by the kernel) serving the test pages; it records the query
// of every request to /submit.
class PageServer {
 public:
  PageServer() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(fd_, 64);
    socklen_t len = sizeof(addr);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::jthread([this](std::stop_token stop) { Serve(stop); });
  }
  ~PageServer() {
    thread_.request_stop();
    thread_.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int c : open_) shutdown(c, SHUT_RDWR);  // wakes a connection still waiting for its request
    }
    connections_.clear();  // joins
    close(fd_);
  }
  std::string Url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  std::vector<std::string> Submissions() {
    std::lock_guard<std::mutex> lock(mu_);
    return submissions_;
  }

 private:
  void Serve(std::stop_token stop) {
    while (!stop.stop_requested()) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) <= 0) continue;
      const int c = accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      {
        std::lock_guard<std::mutex> lock(mu_);
        open_.push_back(c);
      }
      connections_.emplace_back([this, c] { ServeConnection(c); });
    }
  }

  // Each connection on its own thread, answered only once its request came: Chromium opens connections it
  // sends nothing on for a while (preconnects), and an answer given to one before its request (this server
  // used to answer a 404 after 2 s of silence) became the answer to the page Chromium asked for on it later:
  // a white "not found" page that had "loaded", on a busy machine.
  void ServeConnection(int c) {
    {
      timeval tv{30, 0};
      setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = read(c, buf, sizeof(buf));
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      if (request.find("\r\n\r\n") == std::string::npos) {
        std::lock_guard<std::mutex> lock(mu_);
        std::erase(open_, c);
        close(c);
        return;
      }
      const size_t sp1 = request.find(' '), sp2 = request.find(' ', sp1 + 1);
      const std::string target = sp1 == std::string::npos ? "" : request.substr(sp1 + 1, sp2 - sp1 - 1);
      const std::string path = target.substr(0, target.find('?'));
      const std::string query = target.find('?') == std::string::npos ? "" : target.substr(target.find('?') + 1);
      std::string status = "200 OK", body, type = "text/html; charset=utf-8";
      if (path == "/") {
        body = kIndex;
      } else if (path == "/tall") {
        body = kTall;
      } else if (path == "/file") {
        body = "file contents\n";
        type = "application/octet-stream\r\nContent-Disposition: attachment; filename=\"report.txt\"";
      } else if (path == "/evil") {
        body = "evil\n";
        type = "application/octet-stream\r\nContent-Disposition: attachment; filename=\"../../.bashrc\"";
      } else if (path == "/throws") {
        body = kThrows;
      } else if (path == "/submit") {
        {
          std::lock_guard<std::mutex> lock(mu_);
          submissions_.push_back(query);
        }
        body = "<html><body><p>got it: " + query + "</p></body></html>";
      } else {
        status = "404 Not Found";
        body = "not found";
      }
      const std::string response = "HTTP/1.0 " + status + "\r\nContent-Type: " + type +
                                   "\r\nConnection: close\r\n"
                                   "Content-Length: " +
                                   std::to_string(body.size()) + "\r\n\r\n" + body;
      (void)!write(c, response.data(), response.size());
      std::lock_guard<std::mutex> lock(mu_);
      std::erase(open_, c);
      close(c);
    }
  }

  static constexpr char kIndex[] = R"(<!doctype html><html><head><title>Test page</title>
<style>html, body { margin: 0; background: #0a78c8; }</style></head>
<body><h1>Hello page</h1>
<a id="dl" href="/file">download</a>
<form action="/submit" method="GET"><input id="v" name="v"><button id="go" type="submit">Send</button></form>
<script>console.log("hello from the page", 42); console.warn("careful");</script>
</body></html>)";
  static constexpr char kTall[] = R"(<!doctype html><html><head>
<style>html, body { margin: 0; background: #0a78c8; }</style></head>
<body><div style="height: 3000px">tall</div><p id="bottom">bottom</p></body></html>)";
  static constexpr char kThrows[] = R"(<!doctype html><html><body><p>throws</p>
<script>throw new Error("boom-from-page");</script></body></html>)";

  int fd_ = -1;
  int port_ = 0;
  std::mutex mu_;
  std::vector<std::string> submissions_;
  std::vector<int> open_;  // guarded by mu_: connections being served
  std::vector<std::jthread> connections_;  // touched by Serve only, joined after it stopped
  std::jthread thread_;
};

class CdpDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    struct stat st;
    if (stat(kChromium, &st) != 0) GTEST_SKIP() << "Chromium is not installed at " << kChromium;
    char tmpl[] = "/tmp/cdp-driver-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    browser_.reset();
    if (dir_.empty()) return;
    // Chromium's helper processes may still be writing into the profile for a moment after the browser
    // itself was killed: retry until the directory is gone.
    for (int i = 0; i < 100; ++i) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
      if (!std::filesystem::exists(dir_, ec)) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "could not remove " << dir_;
  }

  BrowserConfig Config() const {
    BrowserConfig c;
    c.chromium_path = kChromium;
    c.profile_dir = dir_ + "/profile";
    c.width = 800;
    c.height = 600;
    c.env = {"HOME=" + dir_, "TMPDIR=" + dir_, "PATH=/usr/bin:/bin"};  // TMPDIR: its singleton socket dir
    return c;
  }
  void StartBrowser() {
    std::string error;
    browser_ = Browser::Start(Config(), &error);
    ASSERT_NE(browser_, nullptr) << error;
    EXPECT_GT(browser_->pid(), 0);
  }

  std::string dir_;
  PageServer server_;
  std::unique_ptr<Browser> browser_;
};

TEST_F(CdpDriverTest, NavigatesAndTakesScreenshots) {
  StartBrowser();
  std::string error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;

  std::string png;
  uint32_t w = 0, h = 0;
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 0, &png, &w, &h, &error)) << error;
  EXPECT_EQ(w, 800u);
  EXPECT_EQ(h, 600u);
  Image image;
  ASSERT_TRUE(DecodePng(png, &image));
  EXPECT_EQ(image.width, 800u);
  EXPECT_EQ(image.height, 600u);
  EXPECT_TRUE(Near(image.Pixel(700, 500), kPageColour)) << std::hex << image.Pixel(700, 500);

  // Scaled down to a given width, the aspect ratio kept.
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 400, &png, &w, &h, &error)) << error;
  ASSERT_TRUE(DecodePng(png, &image));
  EXPECT_EQ(image.width, 400u);
  EXPECT_EQ(image.height, 300u);
  EXPECT_EQ(w, 400u);
  EXPECT_EQ(h, 300u);
  EXPECT_TRUE(Near(image.Pixel(350, 250), kPageColour)) << std::hex << image.Pixel(350, 250);
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 333, &png, &w, &h, &error)) << error;
  EXPECT_EQ(w, 333u);
  EXPECT_FALSE(browser_->Screenshot(false, "png", 0, 801, &png, &w, &h, &error));
  EXPECT_THAT(error, HasSubstr("only scale down"));

  std::string jpeg;
  ASSERT_TRUE(browser_->Screenshot(false, "jpeg", 80, 0, &jpeg, &w, &h, &error)) << error;
  EXPECT_EQ(jpeg.substr(0, 2), "\xff\xd8");
  EXPECT_EQ(w, 800u);
  EXPECT_EQ(h, 600u);

  // The whole of a tall page.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/tall"), "networkidle", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Screenshot(true, "png", 0, 0, &png, &w, &h, &error)) << error;
  ASSERT_TRUE(DecodePng(png, &image));
  EXPECT_EQ(image.width, 800u);
  EXPECT_GT(image.height, 3000u);
  EXPECT_EQ(h, image.height);
  EXPECT_TRUE(Near(image.Pixel(400, image.height - 5), kPageColour)) << std::hex << image.Pixel(400, image.height - 5);
  const uint32_t full_height = image.height;
  ASSERT_TRUE(browser_->Screenshot(true, "jpeg", 90, 200, &jpeg, &w, &h, &error)) << error;
  EXPECT_EQ(w, 200u);
  EXPECT_NEAR(h, full_height / 4.0, 2);

  // A new viewport.
  ASSERT_TRUE(browser_->SetViewport(640, 480, &error)) << error;
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 0, &png, &w, &h, &error)) << error;
  EXPECT_EQ(w, 640u);
  EXPECT_EQ(h, 480u);
  EXPECT_FALSE(browser_->SetViewport(10, 10, &error));
  EXPECT_THAT(error, HasSubstr("outside"));

  // Errors.
  // A port that refuses: bound, not listening.
  const int unused = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(unused, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(getsockname(unused, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  EXPECT_FALSE(
      browser_->Navigate("http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/", "load", 10000, &error));
  close(unused);
  EXPECT_THAT(error, HasSubstr("ERR_CONNECTION_REFUSED"));
  // A failed navigation leaves a page that the next calls can use at once (Chromium commits its error page in
  // another renderer after answering; a screenshot in between used to fail "Not attached to an active page").
  EXPECT_FALSE(browser_->Navigate("file:///nonexistent/page.html", "load", 10000, &error));
  EXPECT_THAT(error, HasSubstr("ERR_FILE_NOT_FOUND"));
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 0, &png, &w, &h, &error)) << error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Screenshot(false, "png", 0, 0, &png, &w, &h, &error)) << error;
  ASSERT_TRUE(DecodePng(png, &image));
  EXPECT_TRUE(Near(image.Pixel(600, 450), kPageColour)) << std::hex << image.Pixel(600, 450);
  EXPECT_FALSE(browser_->Navigate(server_.Url("/"), "soon", 10000, &error));
  EXPECT_FALSE(browser_->Screenshot(false, "gif", 0, 0, &png, &w, &h, &error));
}

TEST_F(CdpDriverTest, TypesClicksAndPresses) {
  StartBrowser();
  std::string error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Type("hello42", "#v", &error)) << error;
  ASSERT_TRUE(browser_->Click("#go", &error)) << error;
  ASSERT_TRUE(browser_->WaitFor("", "got it", 10000, &error)) << error;
  EXPECT_THAT(server_.Submissions(), ::testing::Contains("v=hello42"));

  // Keys: typing, Backspace, a letter, then Enter submits the form.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Type("xy", "#v", &error)) << error;
  ASSERT_TRUE(browser_->Press("Backspace", &error)) << error;
  ASSERT_TRUE(browser_->Press("z", &error)) << error;
  std::string value;
  ASSERT_TRUE(browser_->Evaluate("document.querySelector('#v').value", 5000, 1000, &value, &error)) << error;
  EXPECT_EQ(value, "\"xz\"");
  ASSERT_TRUE(browser_->Press("Enter", &error)) << error;
  ASSERT_TRUE(browser_->WaitFor("p", "got it: v=xz", 10000, &error)) << error;
  EXPECT_THAT(server_.Submissions(), ::testing::Contains("v=xz"));

  // Clicking a point: the button's centre, read from the page.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Type("atpoint", "#v", &error)) << error;
  std::string box;
  ASSERT_TRUE(
      browser_->Evaluate("(() => { const r = document.querySelector('#go').getBoundingClientRect();"
                         " return [r.left + r.width / 2, r.top + r.height / 2]; })()",
                         5000, 1000, &box, &error))
      << error;
  const nlohmann::json xy = nlohmann::json::parse(box);
  ASSERT_TRUE(browser_->ClickAt(xy[0].get<double>(), xy[1].get<double>(), &error)) << error;
  ASSERT_TRUE(browser_->WaitFor("", "v=atpoint", 10000, &error)) << error;

  EXPECT_FALSE(browser_->Click("#nothing-here", &error));
  EXPECT_THAT(error, HasSubstr("nothing matches"));
  EXPECT_FALSE(browser_->Type("x", "#nothing-here", &error));
  EXPECT_FALSE(browser_->Press("NoSuchKey", &error));
  EXPECT_THAT(error, HasSubstr("unknown key"));
  const auto start = Clock::now();
  EXPECT_FALSE(browser_->WaitFor("#never", "", 500, &error));
  EXPECT_THAT(error, HasSubstr("did not appear"));
  EXPECT_LT(MsSince(start), 3000);
}

TEST_F(CdpDriverTest, EvaluatesAndReadsContent) {
  StartBrowser();
  std::string error, out;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "networkidle", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Evaluate("1+1", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(out, "2");
  ASSERT_TRUE(browser_->Evaluate("({a: 1, b: [true, 'x']})", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(nlohmann::json::parse(out), nlohmann::json::parse(R"({"a":1,"b":[true,"x"]})"));
  ASSERT_TRUE(browser_->Evaluate("new Promise(r => setTimeout(() => r('later'), 50))", 5000, 1000, &out, &error))
      << error;
  EXPECT_EQ(out, "\"later\"");
  ASSERT_TRUE(browser_->Evaluate("undefined", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(out, "null");
  EXPECT_FALSE(browser_->Evaluate("'x'.repeat(5000)", 5000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("over the limit"));
  // A lone UTF-16 surrogate, which Chromium escapes as JSON parsers refuse: the answer arrives at once.
  auto lone = Clock::now();
  ASSERT_TRUE(browser_->Evaluate("'a\\ud800b'", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(nlohmann::json::parse(out), "a\ufffdb");
  EXPECT_LT(MsSince(lone), 4000) << "the answer was dropped and the call waited for its timeout";
  // An answer too big to hold fails its call at once, and the browser stays usable.
  EXPECT_FALSE(browser_->Evaluate("'y'.repeat(70 * 1024 * 1024)", 30000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("over 64 MiB"));
  ASSERT_TRUE(browser_->Evaluate("3*3", 30000, 1000, &out, &error)) << error;
  EXPECT_EQ(out, "9");

  EXPECT_FALSE(browser_->Evaluate("throw new Error('bad thing')", 5000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("bad thing"));
  EXPECT_FALSE(browser_->Evaluate("Promise.reject(new Error('nope'))", 5000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("nope"));
  EXPECT_FALSE(browser_->Evaluate("this is not javascript", 5000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("SyntaxError"));

  // An endless script is terminated, and the page stays usable.
  const auto start = Clock::now();
  EXPECT_FALSE(browser_->Evaluate("while (true) {}", 1000, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("timed out"));
  EXPECT_LT(MsSince(start), 3000);
  ASSERT_TRUE(browser_->Evaluate("2*21", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(out, "42");
  // A promise that never settles times out too.
  EXPECT_FALSE(browser_->Evaluate("new Promise(() => {})", 500, 1000, &out, &error));
  EXPECT_THAT(error, HasSubstr("timed out"));
  ASSERT_TRUE(browser_->Evaluate("2*21", 5000, 1000, &out, &error)) << error;
  EXPECT_EQ(out, "42");

  bool truncated = true;
  ASSERT_TRUE(browser_->Content(true, 1 << 20, &out, &truncated, &error)) << error;
  EXPECT_THAT(out, HasSubstr("Hello page"));
  EXPECT_FALSE(truncated);
  ASSERT_TRUE(browser_->Content(false, 1 << 20, &out, &truncated, &error)) << error;
  EXPECT_THAT(out, HasSubstr("<form action=\"/submit\""));
  ASSERT_TRUE(browser_->Content(false, 20, &out, &truncated, &error)) << error;
  EXPECT_TRUE(truncated);
  EXPECT_EQ(out.size(), 20u);

  // A raw CDP call, and a CDP error.
  nlohmann::json result;
  ASSERT_TRUE(browser_->Call("Runtime.evaluate", {{"expression", "document.title"}}, &result, &error)) << error;
  EXPECT_EQ(result["result"]["value"], "Test page");
  EXPECT_FALSE(browser_->Call("No.suchMethod", nlohmann::json::object(), &result, &error));
  EXPECT_THAT(error, HasSubstr("No.suchMethod"));
}

TEST_F(CdpDriverTest, ReportsConsoleMessagesAndPageErrors) {
  StartBrowser();
  std::string error;
  EXPECT_TRUE(browser_->TakeEvents().empty());
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/throws"), "load", 10000, &error)) << error;
  std::string out;
  ASSERT_TRUE(browser_->Evaluate("console.error('from evaluate'); 1", 5000, 100, &out, &error)) << error;
  const std::vector<nlohmann::json> events = browser_->TakeEvents();
  std::vector<std::string> seen;
  for (const nlohmann::json& e : events) seen.push_back(e.dump());
  EXPECT_THAT(seen, ::testing::Contains(R"({"level":"log","text":"hello from the page 42","type":"console"})"));
  EXPECT_THAT(seen, ::testing::Contains(R"({"level":"warning","text":"careful","type":"console"})"));
  EXPECT_THAT(seen, ::testing::Contains(R"({"level":"error","text":"from evaluate","type":"console"})"));
  bool page_error = false;
  for (const nlohmann::json& e : events) {
    if (e["type"] == "page_error" && e["text"].get<std::string>().find("boom-from-page") != std::string::npos) {
      page_error = true;
    }
  }
  EXPECT_TRUE(page_error) << ::testing::PrintToString(seen);
  EXPECT_TRUE(browser_->TakeEvents().empty());
}

TEST_F(CdpDriverTest, DownloadsBecomeFiles) {
  BrowserConfig c = Config();
  c.download_dir = dir_ + "/downloads";
  ASSERT_EQ(mkdir(c.download_dir.c_str(), 0700), 0);
  std::string error;
  browser_ = Browser::Start(c, &error);
  ASSERT_NE(browser_, nullptr) << error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  // Nothing downloaded yet: waiting for one times out, naming what it waited for.
  EXPECT_FALSE(browser_->WaitForDownload(300, &error));
  EXPECT_THAT(error, HasSubstr("no download finished within 300 ms"));
  ASSERT_TRUE(browser_->Click("#dl", &error)) << error;
  ASSERT_TRUE(browser_->WaitForDownload(10000, &error)) << error;
  nlohmann::json download;
  for (const nlohmann::json& e : browser_->TakeEvents()) {
    if (e["type"] == "download") download = e;
  }
  ASSERT_FALSE(download.is_null()) << "no download event";
  EXPECT_EQ(download["state"], "completed");
  EXPECT_EQ(download["suggested_filename"], "report.txt");
  EXPECT_EQ(download["url"], server_.Url("/file"));
  EXPECT_EQ(download["bytes"], 14);
  // Saved under the page's suggested name, not Chromium's GUID.
  const std::string path = download["path"].get<std::string>();
  EXPECT_EQ(path, c.download_dir + "/report.txt");
  FILE* f = fopen(path.c_str(), "r");
  ASSERT_NE(f, nullptr) << path;
  char buf[64] = {};
  const size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  EXPECT_EQ(std::string(buf, n), "file contents\n");

  // Navigating to a download succeeds once the file is there (the page stays), and never replaces the
  // first file.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/file"), "load", 10000, &error)) << error;
  download = nullptr;
  for (const nlohmann::json& e : browser_->TakeEvents()) {
    if (e["type"] == "download") download = e;
  }
  ASSERT_FALSE(download.is_null()) << "no download event when the navigation returned";
  EXPECT_EQ(download["state"], "completed");
  EXPECT_EQ(download["path"], c.download_dir + "/report (1).txt");
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 14);
  std::string href;
  ASSERT_TRUE(browser_->Evaluate("location.pathname", 5000, 100, &href, &error)) << error;
  EXPECT_EQ(href, "\"/\"");

  // A name the page chose to climb out or hide is made safe.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/evil"), "load", 10000, &error)) << error;
  download = nullptr;
  for (const nlohmann::json& e : browser_->TakeEvents()) {
    if (e["type"] == "download") download = e;
  }
  ASSERT_FALSE(download.is_null()) << "no download event for /evil";
  const std::string evil = download["path"].get<std::string>();
  EXPECT_EQ(evil.rfind(c.download_dir + "/", 0), 0u) << evil;
  const std::string name = evil.substr(c.download_dir.size() + 1);
  EXPECT_EQ(name.find('/'), std::string::npos) << name;
  EXPECT_NE(name[0], '.') << name;
  EXPECT_EQ(stat(evil.c_str(), &st), 0) << evil;

  // A wait counts a download another call already reported (it finished before the wait began), once.
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Click("#dl", &error)) << error;
  bool reported = false;
  for (const auto start = Clock::now(); !reported && MsSince(start) < 10000; usleep(20000)) {
    for (const nlohmann::json& e : browser_->TakeEvents()) reported = reported || e["type"] == "download";
  }
  ASSERT_TRUE(reported);
  EXPECT_TRUE(browser_->WaitForDownload(300, &error)) << error;
  EXPECT_FALSE(browser_->WaitForDownload(300, &error));

  // Downloads off: waiting for one fails at once.
  BrowserConfig off = Config();
  off.profile_dir = dir_ + "/profile-off";
  std::unique_ptr<Browser> no_downloads = Browser::Start(off, &error);
  ASSERT_NE(no_downloads, nullptr) << error;
  EXPECT_FALSE(no_downloads->WaitForDownload(10000, &error));
  EXPECT_THAT(error, HasSubstr("downloads are off"));
}

// Playwright's storageState: imported (cookies, and an origin's localStorage before any page of it loaded),
// seen by the page, and exported again with what the page added.
TEST_F(CdpDriverTest, StorageStateIsImportedAndExported) {
  StartBrowser();
  const std::string origin = server_.Url("");  // http://127.0.0.1:PORT
  const std::string state = R"({"cookies":[{"name":"sid","value":"abc123","domain":"127.0.0.1","path":"/",)"
                            R"("expires":-1,"httpOnly":false,"secure":false,"sameSite":"Lax"}],)"
                            R"("origins":[{"origin":")" + origin + R"(","localStorage":[{"name":"k","value":"v1"}]}]})";
  std::string error;
  ASSERT_TRUE(browser_->ImportStorageState(state, &error)) << error;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  std::string value;
  ASSERT_TRUE(browser_->Evaluate("document.cookie + '|' + localStorage.getItem('k')", 5000, 1 << 20, &value, &error))
      << error;
  EXPECT_EQ(value, "\"sid=abc123|v1\"");
  ASSERT_TRUE(browser_->Evaluate("localStorage.setItem('added', 'by page'); 1", 5000, 1 << 20, &value, &error)) << error;
  std::string exported;
  ASSERT_TRUE(browser_->ExportStorageState(&exported, &error)) << error;
  const nlohmann::json e = nlohmann::json::parse(exported);
  ASSERT_EQ(e["cookies"].size(), 1u) << exported;
  EXPECT_EQ(e["cookies"][0]["name"], "sid");
  EXPECT_EQ(e["cookies"][0]["value"], "abc123");
  ASSERT_EQ(e["origins"].size(), 1u) << exported;
  EXPECT_EQ(e["origins"][0]["origin"], origin);
  std::set<std::string> items;
  for (const auto& item : e["origins"][0]["localStorage"]) items.insert(item["name"].get<std::string>() + "=" + item["value"].get<std::string>());
  EXPECT_EQ(items, (std::set<std::string>{"k=v1", "added=by page"}));
  EXPECT_FALSE(browser_->ImportStorageState("[1]", &error));
  EXPECT_THAT(error, HasSubstr("storage state"));
  EXPECT_FALSE(browser_->ImportStorageState(R"({"origins":[{"origin":"file:///x"}]})", &error));
  EXPECT_THAT(error, HasSubstr("origin"));
}

TEST_F(CdpDriverTest, APageCrashIsReportedAndNavigateRecovers) {
  StartBrowser();
  std::string error, out;
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  EXPECT_FALSE(browser_->Navigate("chrome://crash", "load", 10000, &error));
  EXPECT_FALSE(browser_->Evaluate("1", 5000, 100, &out, &error));
  EXPECT_THAT(error, HasSubstr("the page crashed"));
  bool crash = false;
  for (const nlohmann::json& e : browser_->TakeEvents()) crash = crash || e["type"] == "crash";
  EXPECT_TRUE(crash);
  EXPECT_TRUE(browser_->alive());
  ASSERT_TRUE(browser_->Navigate(server_.Url("/"), "load", 10000, &error)) << error;
  ASSERT_TRUE(browser_->Evaluate("document.title", 5000, 100, &out, &error)) << error;
  EXPECT_EQ(out, "\"Test page\"");
}

TEST_F(CdpDriverTest, ADeadBrowserFailsClearly) {
  StartBrowser();
  std::string error, out;
  ASSERT_TRUE(browser_->Evaluate("1", 5000, 100, &out, &error)) << error;
  const pid_t pid = browser_->pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  const auto start = Clock::now();
  EXPECT_FALSE(browser_->Evaluate("1", 5000, 100, &out, &error));
  EXPECT_THAT(error, HasSubstr("the browser is gone"));
  EXPECT_THAT(error, HasSubstr("killed by signal"));
  EXPECT_LT(MsSince(start), 3000);
  EXPECT_FALSE(browser_->alive());
  EXPECT_FALSE(browser_->Navigate(server_.Url("/"), "load", 5000, &error));
  EXPECT_THAT(error, HasSubstr("the browser is gone"));
  // The destructor reaps it (nobody else did).
  browser_.reset();
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST_F(CdpDriverTest, TheReaperReportsTheExit) {
  StartBrowser();
  const pid_t pid = browser_->pid();
  ASSERT_EQ(kill(pid, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  browser_->ChildExited(pid, status);
  EXPECT_EQ(browser_->pid(), -1);
  std::string error;
  EXPECT_FALSE(browser_->Navigate(server_.Url("/"), "load", 5000, &error));
  EXPECT_THAT(error, HasSubstr("chromium was killed by signal"));
}

TEST_F(CdpDriverTest, StartFailsClearly) {
  BrowserConfig c = Config();
  c.chromium_path = "/nonexistent/chromium";
  std::string error;
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("/nonexistent/chromium"));
  c = Config();
  c.profile_dir.clear();
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("profile"));
  c = Config();
  c.chromium_path = "/bin/false";  // exits at once: its pipe closes
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("the browser is gone"));
}

// A fake "chromium" (a shell script) that writes `output_file` to its fd 4 and then waits.
std::string FakeChromium(const std::string& dir, const std::string& name, const std::string& output_file) {
  const std::string path = dir + "/" + name;
  FILE* f = fopen(path.c_str(), "w");
  fprintf(f, "#!/bin/sh\ncat '%s' >&4\nexec sleep 30\n", output_file.c_str());
  fclose(f);
  chmod(path.c_str(), 0755);
  return path;
}

void WriteFile(const std::string& path, const std::string& content) {
  FILE* f = fopen(path.c_str(), "w");
  fwrite(content.data(), 1, content.size(), f);
  fclose(f);
}

TEST_F(CdpDriverTest, HostileOutputIsContained) {
  // Garbage, then an answer nested too deep: the connection is given up, Start fails and kills the fake.
  std::string deep = std::string(5000, '[') + std::string(5000, ']');
  WriteFile(dir_ + "/deep", std::string("not json") + '\0' + "{\"id\": 1, \"result\": {\"x\": " + deep + "}}" + '\0');
  BrowserConfig c = Config();
  c.chromium_path = FakeChromium(dir_, "deep.sh", dir_ + "/deep");
  // Failing "at once" means long before the start timeout, whatever else runs on the machine: the timeout is
  // a minute, the failure must come in half of it.
  c.start_timeout_ms = 60000;
  std::string error;
  auto start = Clock::now();
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("nested deeper than"));
  EXPECT_LT(MsSince(start), 30000);

  // A message without end, over the size cap: the call waiting fails at once, naming the cap.
  WriteFile(dir_ + "/big", std::string((64 << 20) + 100, 'a'));
  c.chromium_path = FakeChromium(dir_, "big.sh", dir_ + "/big");
  start = Clock::now();
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("over 64 MiB"));
  EXPECT_LT(MsSince(start), 30000);

  // An answer split across writes, with the framing in the middle of the stream, is read whole: a fake
  // that answers getTargets with no page, then nothing (Start times out at createTarget).
  WriteFile(dir_ + "/split", std::string("{\"method\": \"Some.event\", \"params\": {}}") + '\0' +
                                 "{\"id\": 1, \"result\": {\"targetInfos\": []}}" + '\0');
  c.chromium_path = FakeChromium(dir_, "split.sh", dir_ + "/split");
  c.start_timeout_ms = 1000;
  EXPECT_EQ(Browser::Start(c, &error), nullptr);
  EXPECT_THAT(error, HasSubstr("Target.createTarget: no answer"));
}

}  // namespace
}  // namespace sbx::init
