// Names written in deploy/ against the built binaries: every --flag is accepted by the binary (their --help
// is the truth), every TROUSSEAU_HSM_* variable is the plugin's, and no PIN appears anywhere.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tests/deploy/deploy_support.h"
#include "tools/support/softhsm_token.h"

namespace trousseau::deploy {
namespace {

// Flags of other programs that deploy/ may name (kube-apiserver, etcdctl, kubectl, curl, helm, docker,
// crictl, useradd, install, setpriv, runuser, systemctl, cmake, apt). Anything else must be a flag of one
// of the project's binaries.
const std::set<std::string> kForeignFlags = {
    "--encryption-provider-config",
    "--encryption-provider-config-automatic-reload",  // kube-apiserver
    "--endpoints",
    "--cacert",
    "--cert",
    "--key",
    "--print-value-only",
    "--prefix",  // etcdctl
    "--raw",
    "--from-literal",
    "--namespace",
    "--create-namespace",
    "--values",  // kubectl, helm
    "--set",
    "--kube-version",
    "--dry-run",  // helm
    "--build-arg",
    "--file",
    "--tag",
    "--entrypoint",
    "--user",
    "--rm",
    "--volume",  // docker
    "--system",
    "--uid",
    "--gid",
    "--no-create-home",
    "--home-dir",
    "--shell",  // useradd/groupadd
    "--reuid",
    "--regid",
    "--clear-groups",
    "--groups",  // setpriv
    "--now",
    "--no-install-recommends",
    "--parallel",
    "--target",
    "--recurse",  // systemctl, apt, cmake
    "--offline",
    "--threshold",  // systemd-analyze
};

// Collects what is wrong with the flags deploy/ passes to the project binaries, and counts the invocations
// checked (so a parser that finds nothing fails the test instead of passing it).
struct FlagAudit {
  std::vector<std::string> problems;
  int checked_invocations = 0;

  // Every --flag in `args` (one plugin command line) must be the plugin's.
  void CheckPluginArgs(const std::vector<std::string>& args, const std::string& where) {
    ++checked_invocations;
    for (const std::string& a : args) {
      if (a.rfind("--", 0) == 0 && !PluginCli().flags.contains(FlagName(a))) {
        problems.push_back(where + ": " + FlagName(a) + " is not a trousseau-hsm flag");
      }
    }
  }
};

void AuditManifestArgs(FlagAudit& audit) {
  // Static pods and chart, for both backends: the plugin container's args, parsed.
  for (const auto& [where, pod_spec] :
       {std::pair<std::string, YAML::Node>{"static pod",
                                           LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml")["spec"]},
        {"TPM static pod", LoadOne(kDeploy / "static-pod" / "trousseau-hsm-tpm.yaml")["spec"]},
        {"Helm DaemonSet", RenderedDaemonSet()["spec"]["template"]["spec"]},
        {"Helm DaemonSet, tpm.enabled", RenderedDaemonSet(TpmValues())["spec"]["template"]["spec"]}}) {
    const YAML::Node container = pod_spec.IsMap() ? PluginContainer(pod_spec) : YAML::Node();
    std::vector<std::string> args;
    for (const YAML::Node& a : container["args"]) args.push_back(a.as<std::string>());
    EXPECT_FALSE(args.empty()) << where << ": no " << kPluginName << " container args to check";
    audit.CheckPluginArgs(args, where + " container args");
  }
}

void AuditChartTemplates(FlagAudit& audit) {
  // Chart templates as text: every --word in them is for the plugin.
  for (const fs::path& path : DeployFiles()) {
    if (!IsHelmTemplate(path) || path.extension() != ".yaml") continue;
    static const std::regex flag(R"((?:^|[\s"'\[=,])(--[a-z][a-z0-9-]*))");
    const std::string text = Slurp(path);
    std::vector<std::string> found;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), flag); it != std::sregex_iterator(); ++it) {
      found.push_back((*it)[1]);
    }
    // A template that runs the plugin names its flags (the ServiceMonitor's runs nothing).
    if (text.find("containers:") != std::string::npos) {
      EXPECT_FALSE(found.empty()) << path;
    }
    audit.CheckPluginArgs(found, path.filename().string());
  }
}

void AuditSystemdExecStart(FlagAudit& audit) {
  // systemd ExecStart, of the unit and of the TPM drop-in (which first resets it with an empty ExecStart=).
  for (const char* file : {"trousseau-hsm.service", "tpm.conf"}) {
    std::string unit = Slurp(kDeploy / "systemd" / file);
    unit = std::regex_replace(unit, std::regex("\\\\\n"), " ");
    int exec_starts = 0;
    for (const std::string& line : Lines(unit)) {
      if (line.rfind("ExecStart=", 0) != 0 || Trim(line.substr(10)).empty()) continue;
      ++exec_starts;
      const auto commands = ShellCommands(line.substr(10));
      ASSERT_EQ(commands.size(), 1u) << file << ": " << line;
      EXPECT_EQ(CliFor(commands[0][0]), &PluginCli()) << file << ": " << line;
      audit.CheckPluginArgs(commands[0], std::string(file) + " ExecStart");
    }
    EXPECT_EQ(exec_starts, 1) << file << ": one command line for the plugin";
  }
}

void AuditDockerfileExec(FlagAudit& audit) {
  // Dockerfile ENTRYPOINT + CMD (JSON arrays).
  std::vector<std::string> exec;
  for (const std::string& line : Lines(Slurp(kDeploy / "Dockerfile"))) {
    if (line.rfind("ENTRYPOINT ", 0) != 0 && line.rfind("CMD ", 0) != 0) continue;
    const YAML::Node array = YAML::Load(line.substr(line.find(' ') + 1));
    ASSERT_TRUE(array.IsSequence()) << "exec form expected: " << line;
    for (const YAML::Node& w : array) exec.push_back(w.as<std::string>());
  }
  ASSERT_FALSE(exec.empty());
  EXPECT_EQ(CliFor(exec[0]), &PluginCli());
  audit.CheckPluginArgs(exec, "Dockerfile ENTRYPOINT/CMD");
}

void AuditDocumentedInvocations(FlagAudit& audit) {
  // Markdown and NOTES.txt: shell in code blocks and `inline code`, every invocation of a project binary.
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() != ".md" && path.filename() != "NOTES.txt") continue;
    std::vector<std::string> command_lines;
    bool fenced = false, yaml = false;
    std::string pending;
    for (const std::string& line : Lines(Slurp(path))) {
      if (line.rfind("```", 0) == 0) {
        fenced = !fenced;
        yaml = fenced && Trim(line) == "```yaml";
        continue;
      }
      if (fenced) {
        if (yaml) continue;
        if (!line.empty() && line.back() == '\\') {
          pending += line.substr(0, line.size() - 1) + " ";
          continue;
        }
        command_lines.push_back(pending + line);
        pending.clear();
        continue;
      }
      static const std::regex code("`([^`]+)`");
      for (auto it = std::sregex_iterator(line.begin(), line.end(), code); it != std::sregex_iterator(); ++it) {
        command_lines.push_back((*it)[1]);
      }
      if (path.filename() == "NOTES.txt") command_lines.push_back(line);
    }
    for (const std::string& line : command_lines) {
      for (const auto& words : ShellCommands(line)) {
        if (!words.empty() && !kNamesAsArguments.contains(words[0]) &&
            std::any_of(words.begin(), words.end(), [](const std::string& w) { return CliFor(w) != nullptr; })) {
          ++audit.checked_invocations;
        }
        for (const std::string& p : CheckInvocations(words, path.filename().string())) audit.problems.push_back(p);
      }
    }
  }
}

void AuditProse(FlagAudit& audit) {
  // Anywhere else (prose, comments): a flag of a project binary or of a known foreign program.
  std::set<std::string> ours;
  CollectFlags(PluginCli(), ours);
  CollectFlags(InitCli(), ours);
  CollectFlags(CtlCli(), ours);
  for (const fs::path& path : DeployFiles()) {
    if (path.filename() == "Dockerfile" || path.extension() == ".go" || path.filename() == "go.sum") continue;
    int number = 0;
    for (const std::string& line : Lines(Slurp(path))) {
      ++number;
      static const std::regex flag(R"((?:^|[\s"'`\[(=,])(--[a-z][a-z0-9-]*))");
      for (auto it = std::sregex_iterator(line.begin(), line.end(), flag); it != std::sregex_iterator(); ++it) {
        const std::string f = (*it)[1];
        const std::string where = path.filename().string() + ":" + std::to_string(number);
        if (!ours.contains(f) && !kForeignFlags.contains(f)) audit.problems.push_back(where + ": unknown flag " + f);
      }
    }
  }
}

// Every --flag written in deploy/ against the binaries' --help.
TEST(DeployTest, FlagsNamedInDeployAreAcceptedByTheBinaries) {
  ASSERT_GE(PluginCli().flags.size(), 10u) << "could not read " << PLUGIN_PATH << " --help";
  ASSERT_FALSE(InitCli().subcommands.empty());
  ASSERT_FALSE(CtlCli().subcommands.empty());
  FlagAudit audit;
  // Each source stops at its first fatal failure; so does the test.
  for (auto* audit_source : {&AuditManifestArgs, &AuditChartTemplates, &AuditSystemdExecStart, &AuditDockerfileExec,
                             &AuditDocumentedInvocations}) {
    audit_source(audit);
    if (HasFatalFailure()) return;
  }
  EXPECT_GE(audit.checked_invocations, 10);
  AuditProse(audit);
  for (const std::string& p : audit.problems) ADD_FAILURE() << p;
}

TEST(DeployTest, EnvironmentVariablesNamedInDeployAreThePlugins) {
  std::set<std::string> known = PluginCli().env;
  ASSERT_TRUE(known.contains("TROUSSEAU_HSM_PKCS11_URI"));
  known.insert("TROUSSEAU_HSM_PIN");     // the PIN, from the environment (never a flag)
  known.insert("TROUSSEAU_HSM_CONFIG");  // --config
  for (const fs::path& path : DeployFiles()) {
    const std::string text = Slurp(path);
    static const std::regex name("TROUSSEAU_HSM_[A-Z0-9_]*[A-Z0-9]");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), name); it != std::sregex_iterator(); ++it) {
      EXPECT_TRUE(known.contains(it->str())) << path << ": " << it->str();
    }
  }
}

TEST(DeployTest, NoPinValueAnywhereInDeploy) {
  const std::vector<std::string> test_pins = {support::kTestUserPin, support::kTestSoPin};
  for (const fs::path& path : DeployFiles()) {
    SCOPED_TRACE(path.string());
    const std::string text = Slurp(path);
    EXPECT_EQ(text.find("pin-value"), std::string::npos) << "a PIN in a PKCS#11 URI";
    for (const std::string& pin : test_pins) EXPECT_EQ(text.find(pin), std::string::npos);
    // TROUSSEAU_HSM_PIN=..., TROUSSEAU_HSM_PIN: ..., or value: right after it in a YAML env list.
    EXPECT_FALSE(std::regex_search(text, std::regex(R"(TROUSSEAU_HSM_PIN\s*[=:]\s*\S)")));
    EXPECT_FALSE(std::regex_search(text, std::regex(R"(TROUSSEAU_HSM_PIN\s*\n\s*value:)")));
    // softhsm2-util / pkcs11-tool style PIN arguments.
    EXPECT_FALSE(std::regex_search(text, std::regex(R"(--(so-)?pin[ =])"))) << "a PIN on a command line";
    // Every pin-source is a file, by absolute path.
    static const std::regex pin_source("pin-source=([^&\"'\\s]*)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), pin_source); it != std::sregex_iterator(); ++it) {
      EXPECT_EQ((*it)[1].str().rfind("file:/", 0), 0u) << it->str();
    }
  }
  // YAML keys that look like a PIN hold paths only (values.yaml's pinFile).
  std::function<void(const YAML::Node&, const std::string&)> walk = [&](const YAML::Node& n, const std::string& at) {
    if (!n.IsMap()) return;
    for (const auto& e : n) {
      const std::string key = e.first.as<std::string>();
      std::string lower = key;
      std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
      if (lower.find("pin") != std::string::npos && e.second.IsScalar()) {
        EXPECT_EQ(e.second.Scalar().rfind('/', 0), 0u) << at << "." << key << " must be a file path";
      }
      walk(e.second, at + "." + key);
    }
  };
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() == ".yaml" && !IsHelmTemplate(path)) {
      for (const YAML::Node& doc : YAML::LoadAll(Slurp(path))) walk(doc, path.filename().string());
    }
  }
  // The plugin's config file: no PIN key (the plugin would refuse it anyway).
  for (const auto& e : LoadOne(kDeploy / "systemd" / "config.yaml")) {
    EXPECT_EQ(e.first.as<std::string>().find("pin"), std::string::npos);
  }
}

}  // namespace
}  // namespace trousseau::deploy
