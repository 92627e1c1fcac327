// deploy/Dockerfile: built with CI's dependency list, runs as the manifests' user, and its runtime packages
// cover every shared library the three binaries load.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <fnmatch.h>

#include <algorithm>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/deploy/deploy_support.h"
#include "tests/testing/skip_or_fail_in_ci.h"

namespace trousseau::deploy {
namespace {

// Dockerfile.

struct Dockerfile {
  std::vector<std::vector<std::string>> stages;  // instructions (continuations joined) per FROM
};

Dockerfile ParseDockerfile() {
  Dockerfile d;
  const std::string text = std::regex_replace(Slurp(kDeploy / "Dockerfile"), std::regex("\\\\\n"), " ");
  for (const std::string& raw : Lines(text)) {
    const std::string line = Trim(raw);
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind("FROM ", 0) == 0) d.stages.emplace_back();
    if (!d.stages.empty()) d.stages.back().push_back(line);
  }
  return d;
}

// Package lists of every `apt-get install` in `instructions`, in order.
std::vector<std::vector<std::string>> AptInstalls(const std::vector<std::string>& instructions) {
  std::vector<std::vector<std::string>> installs;
  for (const std::string& instruction : instructions) {
    if (instruction.rfind("RUN ", 0) != 0) continue;
    for (const auto& words : ShellCommands(instruction.substr(4))) {
      for (size_t i = 0; i + 1 < words.size(); ++i) {
        if (words[i] != "apt-get" || words[i + 1] != "install") continue;
        installs.emplace_back();
        for (size_t j = i + 2; j < words.size(); ++j) {
          if (words[j][0] != '-') installs.back().push_back(words[j]);
        }
      }
    }
  }
  return installs;
}

bool KnownToApt(const std::string& package) {
  if (Shell("dpkg-query -W -f='${Status}' " + ShellQuote(package)).out.find("install ok installed") !=
      std::string::npos) {
    return true;
  }
  const RunResult policy = Shell("apt-cache policy " + ShellQuote(package));
  return policy.out.find("Candidate:") != std::string::npos &&
         policy.out.find("Candidate: (none)") == std::string::npos;
}

TEST(DeployTest, DockerfileBuildsWithCiDependenciesAndRunsAsTheManifestsUser) {
  const Dockerfile d = ParseDockerfile();
  ASSERT_EQ(d.stages.size(), 2u) << "multi-stage: build, runtime";
  std::string build;
  for (const std::string& i : d.stages[0]) build += i + "\n";
  EXPECT_NE(build.find("COPY ci/install-deps"), std::string::npos) << "builder uses CI's dependency list";
  EXPECT_TRUE(fs::exists(fs::path(PROJECT_DIR) / "ci" / "install-deps"));
  EXPECT_NE(build.find("-DCMAKE_BUILD_TYPE=Release"), std::string::npos);
  EXPECT_NE(build.find("-DTROUSSEAU_BUILD_TESTS=OFF"), std::string::npos);
  EXPECT_NE(Slurp(fs::path(PROJECT_DIR) / "CMakeLists.txt").find("option(TROUSSEAU_BUILD_TESTS"), std::string::npos);
  // The binaries' paths in the build tree, as this build lays them out.
  for (const char* binary : {PLUGIN_PATH, INIT_PATH, CTL_PATH}) {
    const std::string relative = fs::relative(binary, BUILD_DIR).string();
    const std::string name = fs::path(binary).filename().string();
    EXPECT_NE(build.find("/build/" + relative + " "), std::string::npos) << relative;
    EXPECT_NE(build.find("--target"), std::string::npos);
    EXPECT_TRUE(std::regex_search(build, std::regex("--target[^\\n]*\\b" + name + "\\b"))) << name;
  }

  std::string runtime;
  for (const std::string& i : d.stages[1]) runtime += i + "\n";
  std::smatch user;
  ASSERT_TRUE(std::regex_search(runtime, user, std::regex(R"(\nUSER (\d+):(\d+)\n)"))) << "numeric USER uid:gid";
  EXPECT_NE(user[1], "0");
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  EXPECT_EQ(user[1].str(), pod["spec"]["securityContext"]["runAsUser"].as<std::string>());
  EXPECT_EQ(user[2].str(), pod["spec"]["securityContext"]["runAsGroup"].as<std::string>());
  EXPECT_NE(runtime.find("--uid " + user[1].str()), std::string::npos) << "a passwd entry for the user";
  // Entrypoint = the manifests' command.
  std::smatch entry;
  ASSERT_TRUE(std::regex_search(runtime, entry, std::regex(R"re(ENTRYPOINT \["([^"]+)"\])re")));
  EXPECT_EQ(entry[1].str(), PluginContainer(pod["spec"])["command"][0].as<std::string>());
  EXPECT_EQ(entry[1].str(),
            PluginContainer(RenderedDaemonSet()["spec"]["template"]["spec"])["command"][0].as<std::string>());
  // All three binaries land in the entrypoint's directory.
  EXPECT_NE(runtime.find("COPY --from=build /out/ " + fs::path(entry[1].str()).parent_path().string() + "/"),
            std::string::npos);
}

// The runtime image's package list against this build: every name exists in Debian (installed here, or
// in the local apt lists: no network), and every shared library the three binaries load comes from one of
// those packages or their dependencies.
TEST(DeployTest, DockerfileRuntimePackagesCoverWhatTheBinariesLink) {
  if (!HasCommand("dpkg-query") || !HasCommand("apt-cache"))
    SKIP_OR_FAIL_IN_CI("not a Debian system (no dpkg-query, apt-cache)");
  const Dockerfile d = ParseDockerfile();
  ASSERT_EQ(d.stages.size(), 2u);
  const auto installs = AptInstalls(d.stages[1]);
  ASSERT_GE(installs.size(), 1u);
  const std::vector<std::string>& runtime = installs[0];
  ASSERT_GE(runtime.size(), 5u);
  for (const auto& list : installs) {
    for (const std::string& package : list)
      EXPECT_TRUE(KnownToApt(package)) << package << " is not a Debian package here";
  }
  // SoftHSM (optional) brings the module the manifests' URI names.
  bool softhsm = false;
  for (size_t i = 1; i < installs.size(); ++i) {
    softhsm |= std::find(installs[i].begin(), installs[i].end(), "softhsm2") != installs[i].end();
  }
  EXPECT_TRUE(softhsm);

  std::string list;
  for (const std::string& p : runtime) list += " " + ShellQuote(p);
  const RunResult depends = Shell(
      "apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces "
      "--no-enhances" +
      list);
  std::set<std::string> closure(runtime.begin(), runtime.end());
  for (const std::string& line : Lines(depends.out)) {
    if (!line.empty() && line[0] != ' ' && line[0] != '<') closure.insert(Trim(line));
  }
  ASSERT_GT(closure.size(), runtime.size()) << depends.out;

  std::set<std::string> needed;
  for (const char* binary : {PLUGIN_PATH, INIT_PATH, CTL_PATH}) {
    const RunResult ldd = Shell("ldd " + ShellQuote(binary));
    ASSERT_EQ(ldd.code, 0) << binary;
    for (const std::string& line : Lines(ldd.out)) {
      std::smatch m;
      if (!std::regex_search(line, m, std::regex(R"(=> (/\S+))"))) continue;
      const std::string lib = m[1];
      RunResult owner = Shell("dpkg -S " + ShellQuote(lib));
      if (owner.code != 0 && lib.rfind("/usr/", 0) != 0) owner = Shell("dpkg -S " + ShellQuote("/usr" + lib));
      if (owner.code != 0) {
        std::error_code ec;
        owner = Shell("dpkg -S " + ShellQuote(fs::canonical(lib, ec).string()));
      }
      ASSERT_EQ(owner.code, 0) << lib << " (needed by " << binary << ") belongs to no Debian package";
      std::string package = owner.out.substr(0, owner.out.find(':'));
      needed.insert(package);
      EXPECT_TRUE(closure.contains(package)) << lib << " (needed by " << fs::path(binary).filename() << ") comes from "
                                             << package << ", which the runtime stage does not install";
    }
  }
  EXPECT_GE(needed.size(), 10u);
}

// .dockerignore: what `COPY . .` must never put into the build stage, for every builder. The build context is
// the repository root; a deploy/Dockerfile.dockerignore would replace the root file under BuildKit only
// (and it once was the only one, so the legacy builder copied build/ and the quickstart's PIN files).

// Whether `path` (relative to the context) is excluded by one of the patterns, as the builders match
// them: a pattern excludes what it matches and everything under it; `**/` matches any number of
// directories. No `!` exceptions are used, so none are handled.
bool DockerIgnores(const std::vector<std::string>& patterns, const std::string& path) {
  std::vector<std::string> parts;
  for (size_t start = 0; start <= path.size();) {
    const size_t slash = std::min(path.find('/', start), path.size());
    parts.push_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  for (std::string pattern : patterns) {
    bool any_depth = false;
    if (pattern.rfind("**/", 0) == 0) {
      any_depth = true;
      pattern = pattern.substr(3);
    }
    for (size_t first = 0; first < (any_depth ? parts.size() : 1); ++first) {
      std::string prefix;
      for (size_t i = first; i < parts.size(); ++i) {
        prefix += (i == first ? "" : "/") + parts[i];
        if (fnmatch(pattern.c_str(), prefix.c_str(), FNM_PATHNAME) == 0) return true;
      }
    }
  }
  return false;
}

TEST(DeployTest, DockerignoreKeepsBuildTreesAndPinFilesOutOfEveryBuildersContext) {
  const fs::path root = PROJECT_DIR;
  ASSERT_TRUE(fs::exists(root / ".dockerignore"));
  EXPECT_FALSE(fs::exists(kDeploy / "Dockerfile.dockerignore"))
      << "BuildKit would read it instead of the root .dockerignore: two lists to keep equal";
  std::vector<std::string> patterns;
  for (const std::string& raw : Lines(Slurp(root / ".dockerignore"))) {
    const std::string line = Trim(raw);
    if (line.empty() || line[0] == '#') continue;
    ASSERT_NE(line[0], '!') << "exceptions are not expected (nor handled here): " << line;
    patterns.push_back(line);
  }
  for (const char* excluded :
       {".git/config", "build/CMakeCache.txt", "build-hg/src/trousseau-hsm", "cmake-build-debug/x",
        ".quickstart/user.pin", ".quickstart/so.pin", ".quickstart/tokens/x/token.object", "etc/user.pin",
        "src/core/status.cc.o", "Testing/Temporary/LastTest.log"}) {
    EXPECT_TRUE(DockerIgnores(patterns, excluded)) << excluded;
  }
  // Every build output .gitignore names is kept out too (a new build folder is added to both).
  for (const std::string& raw : Lines(Slurp(root / ".gitignore"))) {
    std::string entry = Trim(raw);
    if (entry.empty() || entry[0] == '#') continue;
    if (entry.front() == '/') entry.erase(0, 1);
    if (!entry.empty() && entry.back() == '/') entry.pop_back();
    const std::string example = std::regex_replace(entry, std::regex("\\*"), "x") + "/file";
    EXPECT_TRUE(DockerIgnores(patterns, example)) << ".gitignore's " << raw << " is not in .dockerignore";
  }
  // What the image build needs stays in.
  for (const char* kept : {"CMakeLists.txt", "ci/install-deps", "src/app/plugin.cc", "hsm/pkcs11_backend.cc",
                           "proto/CMakeLists.txt", "deploy/Dockerfile", "tests/CMakeLists.txt"}) {
    EXPECT_FALSE(DockerIgnores(patterns, kept)) << kept;
  }
  for (const char* path : {"CMakeLists.txt", "ci/install-deps", "src/app/plugin.cc", "hsm/pkcs11_backend.cc"}) {
    EXPECT_TRUE(fs::exists(root / path)) << path << ": the list above names files that are not there";
  }
}

}  // namespace
}  // namespace trousseau::deploy
