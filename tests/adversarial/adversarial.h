// Shared by the adversarial suite's test binaries (header-only: each *_test.cc is a binary of its own).
#ifndef SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_
#define SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/e2e/daemon_fixture.h"

namespace sbx::testing {

// The path of a probe from tests/adversarial/probes on the host.
inline std::string AdvProbe(const std::string& name) { return std::string(SBX_ADV_PROBE_DIR) + "/" + name; }

// Value of "key=value" on its own line in `out`, or "<missing>".
inline std::string AdvField(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "<missing>";
}

// A daemon whose policy for `kind` ("file", "browser", "desktop") is the built-in one plus a read-only bind
// of the probes' directory at /adv. `policy_dir` is made (and left for the caller to remove).
inline Daemon::Options AdvDaemonOptions(const std::string& kind, const std::string& policy_dir,
                                        std::vector<std::string> extra_config = {}) {
  std::filesystem::create_directories(policy_dir);
  std::ifstream in(std::string(SBX_POLICY_DIR) + "/" + kind + ".textproto");
  std::stringstream policy;
  policy << in.rdbuf();
  policy << "\nmounts { bind { src: \"" << SBX_ADV_PROBE_DIR << "\" dst: \"/adv\" } }\n";
  std::ofstream(policy_dir + "/" + kind + ".textproto") << policy.str();
  Daemon::Options o;
  o.config_lines = {"policy_dir: \"" + policy_dir + "\""};
  for (std::string& line : extra_config) o.config_lines.push_back(std::move(line));
  return o;
}

}  // namespace sbx::testing

#endif  // SBX_TESTS_ADVERSARIAL_ADVERSARIAL_H_
