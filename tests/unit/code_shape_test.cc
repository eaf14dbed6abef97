// The code's shape, checked so that it stays the way ARCHITECTURE.md draws it:
// - the includes follow the layering (which folder may use which);
// - no production file is longer than 700 lines, and no production function longer than 80.
// The sources are read from the checkout (SBX_SOURCE_DIR); generated code is in the build tree, not here.
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

namespace fs = std::filesystem;

constexpr int kMaxFileLines = 700;
constexpr int kMaxFunctionLines = 80;

// The folders that hold production code, relative to the checkout.
const std::vector<std::string>& ProductionRoots() {
  static const std::vector<std::string> roots = {"base", "wire", "net", "sandbox", "agent"};
  return roots;
}

struct Source {
  std::string path;  // relative to the checkout, e.g. "agent/session/session.cc"
  std::vector<std::string> lines;
};

std::vector<Source> ReadSources() {
  std::vector<Source> out;
  const fs::path root(SBX_SOURCE_DIR);
  for (const std::string& top : ProductionRoots()) {
    for (const auto& entry : fs::recursive_directory_iterator(root / top)) {
      const std::string ext = entry.path().extension().string();
      if (!entry.is_regular_file() || (ext != ".cc" && ext != ".h")) continue;
      Source s;
      s.path = fs::relative(entry.path(), root).string();
      std::ifstream in(entry.path());
      for (std::string line; std::getline(in, line);) s.lines.push_back(line);
      out.push_back(std::move(s));
    }
  }
  std::sort(out.begin(), out.end(), [](const Source& a, const Source& b) { return a.path < b.path; });
  return out;
}

bool StartsWith(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// The layer a path (of a source file or of a quoted include) belongs to, or "" for third-party headers.
// Our own includes are rooted at the checkout ("agent/...", "sandbox/...") or at the generated API protos
// ("duvo/...").
std::string LayerOf(const std::string& path) {
  if (StartsWith(path, "sandbox/init/")) return "init";
  if (StartsWith(path, "agent/cli/") || StartsWith(path, "agent/mcp/")) return "client";
  for (const char* top : {"base", "wire", "net", "sandbox", "agent"}) {
    if (StartsWith(path, std::string(top) + "/")) return top;
  }
  if (StartsWith(path, "duvo/")) return "api";
  return "";
}

// Which layers each layer may include (its own always).
const std::map<std::string, std::vector<std::string>>& AllowedLayers() {
  static const std::map<std::string, std::vector<std::string>> allowed = {
      {"base", {"base"}},
      {"wire", {"wire", "base"}},
      {"net", {"net", "base"}},
      // sandbox-init is a static, abseil-free program: the wire protocol and base only.
      {"init", {"init", "wire", "base"}},
      {"sandbox", {"sandbox", "wire", "base", "api"}},
      // The command-line client and the MCP server are clients of the Sandboxes API.
      {"client", {"client", "net", "base", "api"}},
      {"agent", {"agent", "client", "sandbox", "wire", "net", "base", "api"}},
  };
  return allowed;
}

// The path of a `#include "path"` line, or "" for any other line (an <angled> include included). No
// std::regex here: gcc 12 under ASan (tests/sanitize) warns inside libstdc++'s regex and -Werror stops the build.
std::string QuotedInclude(const std::string& line) {
  size_t i = line.find_first_not_of(" \t");
  if (i == std::string::npos || line[i] != '#') return "";
  i = line.find_first_not_of(" \t", i + 1);
  if (i == std::string::npos || line.compare(i, 7, "include") != 0) return "";
  i = line.find_first_not_of(" \t", i + 7);
  if (i == std::string::npos || line[i] != '"') return "";
  const size_t end = line.find('"', i + 1);
  return end == std::string::npos ? "" : line.substr(i + 1, end - i - 1);
}

// Whether `line` starts with `word` as a whole word.
bool StartsWithWord(const std::string& line, const std::string& word) {
  if (line.compare(0, word.size(), word) != 0) return false;
  return line.size() == word.size() ||
         !(std::isalnum(static_cast<unsigned char>(line[word.size()])) || line[word.size()] == '_');
}

TEST(CodeShapeTest, IncludesFollowTheLayering) {
  std::vector<std::string> violations;
  int checked = 0;
  for (const Source& s : ReadSources()) {
    const std::string from = LayerOf(s.path);
    ASSERT_FALSE(from.empty()) << s.path;
    const auto& allowed = AllowedLayers().at(from);
    for (size_t i = 0; i < s.lines.size(); ++i) {
      const std::string included = QuotedInclude(s.lines[i]);
      if (included.empty()) continue;
      const std::string to = LayerOf(included);
      if (to.empty()) continue;
      ++checked;
      if (std::find(allowed.begin(), allowed.end(), to) == allowed.end()) {
        violations.push_back(s.path + ":" + std::to_string(i + 1) + ": " + from + " includes " + to + " (\"" +
                             included + "\")");
      }
    }
  }
  EXPECT_GT(checked, 200) << "the walk found too few of our includes: is SBX_SOURCE_DIR right?";
  std::ostringstream all;
  for (const auto& v : violations) all << v << "\n";
  EXPECT_TRUE(violations.empty()) << violations.size() << " includes break the layering:\n" << all.str();
}

TEST(CodeShapeTest, ProductionFilesAreShort) {
  std::vector<std::string> long_files;
  for (const Source& s : ReadSources()) {
    if (static_cast<int>(s.lines.size()) > kMaxFileLines) {
      long_files.push_back(s.path + ": " + std::to_string(s.lines.size()) + " lines");
    }
  }
  std::ostringstream all;
  for (const auto& f : long_files) all << f << "\n";
  EXPECT_TRUE(long_files.empty()) << "files over " << kMaxFileLines << " lines:\n" << all.str();
}

// The function definitions in a file, as this code base writes them (clang-format, Google style): a definition
// starts at a line in column 0 that names a function (it has a '(' and is not a namespace, a type or an
// initialised variable), its signature may continue on indented lines, its body opens with the '{' that ends
// the signature, and it ends at the next '}' in column 0. Member functions defined inside a class body are
// indented, and stay short by review.
struct Span {
  int first = 0, last = 0;  // 0-based line numbers
};

bool IsSignatureStart(const std::string& line) {
  if (line.empty() || std::isspace(static_cast<unsigned char>(line[0])) || line[0] == '#' || line[0] == '/' ||
      line[0] == '}' || line[0] == '*') {
    return false;
  }
  // A type, a namespace or a declaration, not a function. (`template <...> struct X {` has no '(' and is
  // refused below; a function template's own line starts with its return type.)
  for (const char* word : {"namespace", "struct", "class", "enum", "union", "extern", "typedef", "using",
                           "static_assert"}) {
    if (StartsWithWord(line, word)) return false;
  }
  const size_t paren = line.find('(');
  if (paren == std::string::npos) return false;
  // `const T table[] = {` and `T x = F(...)` are data, not code.
  return line.substr(0, paren).find('=') == std::string::npos;
}

std::string TrimRight(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

std::vector<Span> FunctionSpans(const std::vector<std::string>& lines) {
  std::vector<Span> spans;
  int candidate = -1, open = -1;
  for (int i = 0; i < static_cast<int>(lines.size()); ++i) {
    const std::string t = TrimRight(lines[i]);
    if (open >= 0) {
      if (StartsWith(t, "}")) {
        spans.push_back({open, i});
        open = -1;
      }
      continue;
    }
    if (IsSignatureStart(t)) candidate = i;
    if (candidate < 0) continue;
    if (!t.empty() && t.back() == '{') {
      open = candidate;
      candidate = -1;
    } else if (!t.empty() && (t.back() == ';' || t.back() == '}')) {
      candidate = -1;  // a declaration, or a one-line definition
    }
  }
  return spans;
}

TEST(CodeShapeTest, ProductionFunctionsAreShort) {
  std::vector<std::string> long_functions;
  int functions = 0;
  for (const Source& s : ReadSources()) {
    for (const Span& f : FunctionSpans(s.lines)) {
      ++functions;
      const int n = f.last - f.first + 1;
      if (n > kMaxFunctionLines) {
        long_functions.push_back(s.path + ":" + std::to_string(f.first + 1) + ": " + std::to_string(n) +
                                 " lines: " + s.lines[f.first].substr(0, 100));
      }
    }
  }
  EXPECT_GT(functions, 500) << "the scan found too few functions: has the code's layout changed?";
  std::ostringstream all;
  for (const auto& f : long_functions) all << f << "\n";
  EXPECT_TRUE(long_functions.empty()) << "functions over " << kMaxFunctionLines << " lines:\n" << all.str();
}

// The scanner itself: multi-line signatures, tables, declarations and nested blocks.
TEST(CodeShapeTest, TheFunctionScannerFindsDefinitionsNotDataOrDeclarations) {
  const std::vector<std::string> lines = {
      "namespace sbx::agent {",                          // 0
      "const Rule kRules[] = {",                         // 1
      "    {1, 2},",                                     // 2
      "};",                                              // 3
      "absl::Status Declared(int a);",                   // 4
      "absl::StatusOr<int> Session::Start(const P& p,",  // 5
      "                                   int x) {",     // 6
      "  if (x) {",                                      // 7
      "  }",                                             // 8
      "}",                                               // 9
      "struct Options {",                                // 10
      "  int Inline() { return 1; }",                    // 11
      "};",                                              // 12
      "int main(int argc, char** argv) {",               // 13
      "  return 0;",                                     // 14
      "}",                                               // 15
      "}  // namespace sbx::agent",                      // 16
  };
  const std::vector<Span> spans = FunctionSpans(lines);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].first, 5);
  EXPECT_EQ(spans[0].last, 9);
  EXPECT_EQ(spans[1].first, 13);
  EXPECT_EQ(spans[1].last, 15);
}

}  // namespace
