// deploy/Dockerfile: built with CI's dependency list, runs as the manifests' user, and its runtime packages
// cover every shared library the three binaries load.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

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

}  // namespace
}  // namespace trousseau::deploy
