// policies/browser.textproto runs Debian's headless Chromium in a real jail (its own sandbox off, ours
// around it), and the browser there sees the jail's files only.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/integration/agent_runner.h"

namespace sbx::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kChromium[] = "/usr/lib/chromium/chromium";

AgentInvocation Chromium(const std::string& page_dir, const std::string& url) {
  AgentInvocation inv;
  inv.bind_probe = false;
  inv.flags = {"--policy", SBX_BROWSER_POLICY, "--ro-bind", page_dir + ":/page", "--time-limit", "60"};
  inv.command = {kChromium,         "--headless=new",          "--no-sandbox",     "--disable-gpu",
                 "--no-first-run",  "--user-data-dir=/tmp/profile", "--disable-dev-shm-usage",
                 "--dump-dom",      url};
  return inv;
}

class BrowserPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kChromium, X_OK) != 0) GTEST_SKIP() << "this machine lacks " << kChromium << " (deploy/install-deps.sh installs chromium)";
    dir_ = std::filesystem::temp_directory_path() / ("sbx-browser-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/index.html")
        << "<html><body style=\"background:#00ff00\"><h1 id=t>hello</h1>"
           "<script>document.getElementById('t').textContent = 'rendered in ' + navigator.userAgent.includes('Headless');"
           "</script></body></html>";
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  std::string dir_;
};

TEST_F(BrowserPolicyTest, HeadlessChromiumRendersAPageInAJail) {
  AgentRun run = RunAgent(Chromium(dir_, "file:///page/index.html"));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  // The script ran: the DOM Chromium dumps is the rendered one.
  EXPECT_THAT(run.out, HasSubstr("rendered in true"));
  EXPECT_EQ(run.outcome["status"], "completed") << run.outcome.dump();
  EXPECT_LT(run.outcome["usage"]["max_memory_bytes"].get<uint64_t>(), 2ull << 30);
}

TEST_F(BrowserPolicyTest, TheBrowserSeesTheJailsFilesNotTheHosts) {
  std::ifstream host_shadow("/etc/shadow");
  std::stringstream host_text;
  host_text << host_shadow.rdbuf();
  ASSERT_NE(host_text.str().find("root:"), std::string::npos) << "the host's /etc/shadow has no root entry";
  // /etc/shadow is not in the jail (Chromium ran, and dumps nothing for a missing file); /etc/passwd, which it
  // does dump, is the jail's own.
  AgentRun shadow = RunAgent(Chromium(dir_, "file:///etc/shadow"));
  EXPECT_EQ(shadow.exit_code, 0) << shadow.err;
  EXPECT_THAT(shadow.out, Not(HasSubstr("root:")));
  AgentRun passwd = RunAgent(Chromium(dir_, "file:///etc/passwd"));
  EXPECT_THAT(passwd.out, HasSubstr("sandbox:x:1000:1000"));
}

// The host's font cache is visible read-only: without it every browser (and every font-using desktop
// program) rescans /usr/share/fonts at start, which took 0.7 to 1.2 s of a cold browser start on this
// machine kind. fontconfig writes a cache of its own (under $XDG_CACHE_HOME) only for directories whose
// system cache it did not find valid, so an empty user cache dir proves every font directory was served
// from the host's. Both policies that run font-using programs are checked.
TEST_F(BrowserPolicyTest, FontsComeFromTheHostsFontCacheNotARescan) {
  if (access("/usr/bin/fc-list", X_OK) != 0) GTEST_SKIP() << "this machine lacks fc-list (fontconfig)";
  for (const char* policy : {SBX_BROWSER_POLICY, SBX_DESKTOP_POLICY}) {
    AgentInvocation inv;
    inv.bind_probe = false;
    inv.flags = {"--policy", policy, "--time-limit", "60"};
    inv.command = {"/bin/sh", "-c",
                   "export XDG_CACHE_HOME=/tmp/fc-user-cache; mkdir -p $XDG_CACHE_HOME; "
                   "n=$(fc-list | wc -l); echo fonts=$n; echo written=$(find $XDG_CACHE_HOME -type f | wc -l)"};
    AgentRun run = RunAgent(inv);
    EXPECT_EQ(run.exit_code, 0) << policy << ": " << run.err;
    EXPECT_THAT(run.out, Not(HasSubstr("fonts=0"))) << policy;
    EXPECT_THAT(run.out, HasSubstr("written=0")) << policy << ": fontconfig rebuilt its cache: " << run.out;
  }
}

}  // namespace
}  // namespace sbx::testing
