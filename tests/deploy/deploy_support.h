// What every deploy_test section shares: where deploy/ is, running shell commands, reading the project
// binaries' command-line interfaces from their --help, splitting documented shell lines, and reading the
// Kubernetes manifests (the static pods and the rendered Helm DaemonSet).
#pragma once

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace trousseau::deploy {

namespace fs = std::filesystem;

inline const fs::path kDeploy = DEPLOY_DIR;
inline const fs::path kChart = kDeploy / "helm" / "trousseau-hsm";
inline constexpr char kPluginName[] = "trousseau-hsm";
inline constexpr char kInitName[] = "trousseau-hsm-init";
inline constexpr char kCtlName[] = "trousseauctl";

// ---------------------------------------------------------------------------------------------------
// Small helpers.

std::string Slurp(const fs::path& path);
std::string ShellQuote(const std::string& s);

struct RunResult {
  int code = -1;
  std::string out;
};

// Runs `command` with /bin/sh; stdout (and stderr if asked) captured.
RunResult Shell(const std::string& command, bool with_stderr = false);
bool HasCommand(const std::string& name);
std::vector<std::string> Lines(const std::string& text);
std::string Trim(std::string s);
// "--flag=value" -> "--flag".
std::string FlagName(const std::string& token);
// Every regular file under deploy/, sorted.
std::vector<fs::path> DeployFiles();
bool IsHelmTemplate(const fs::path& path);

// ---------------------------------------------------------------------------------------------------
// The binaries' command-line interfaces, read from their --help (CLI11 layout).

struct Cli {
  std::set<std::string> flags;
  std::set<std::string> env;  // TROUSSEAU_HSM_* names from "(Env:...)"
  std::map<std::string, Cli> subcommands;
};

const Cli& PluginCli();
const Cli& InitCli();
const Cli& CtlCli();
void CollectFlags(const Cli& cli, std::set<std::string>& into);
// The interface of the project binary `token` names (a path or a bare name), or nullptr.
const Cli* CliFor(const std::string& token);

// A shell command line split into commands (at | ; && || ( ) and backticks), each a list of words with
// quotes removed. Comments (# after a blank) are dropped. Good enough for documentation.
std::vector<std::vector<std::string>> ShellCommands(const std::string& line);

// Programs that take the binaries' names as plain arguments (a release, unit, user or file name), not as a
// command to run: no invocation is attributed in their command lines.
extern const std::set<std::string> kNamesAsArguments;

// Checks every invocation of a project binary in `words`: each --flag must belong to the (sub)command it
// follows. Returns the problems found.
std::vector<std::string> CheckInvocations(const std::vector<std::string>& words, const std::string& where);

// ---------------------------------------------------------------------------------------------------
// Kubernetes manifest helpers.

YAML::Node LoadOne(const fs::path& path);
// The DaemonSet of the chart rendered with `overrides` merged into its values; null if none.
YAML::Node RenderedDaemonSet(const YAML::Node& overrides = {});
// The values a TPM node installs the chart with (113: the tss group, owner of /dev/tpmrm0).
YAML::Node TpmValues();
YAML::Node PluginContainer(const YAML::Node& pod_spec);
// The container's args as flag -> value ("--x=v" or "--x v"; "" for a bare flag).
std::map<std::string, std::string> ArgMap(const YAML::Node& container);
// Value of `key=` in a PKCS#11 URI's path or query.
std::string UriAttribute(std::string uri, const std::string& key);

struct Mount {
  std::string mount_path;
  bool read_only = false;
  std::string host_path;  // empty if not a hostPath volume
  std::string host_type;
};

std::vector<Mount> Mounts(const YAML::Node& pod_spec, const YAML::Node& container);
// The mount that holds `path` inside the container (the longest matching mountPath).
const Mount* MountFor(const std::vector<Mount>& mounts, const std::string& path);
// "64Mi" -> 64; -1 if not a quantity this understands.
double MebibytesOf(const std::string& quantity);

// Every requirement shared by the static pod and the Helm DaemonSet's pod template (gtest assertions).
void ExpectSecurePluginPod(const YAML::Node& spec, const std::string& what);

// ---------------------------------------------------------------------------------------------------
// systemd unit files: "Section.Key" -> value, in file order (continuation lines joined).
std::multimap<std::string, std::string> UnitSettings(const std::string& text);
// The last value of [Service] `key` in `settings`, or "<unset>".
std::string ServiceSetting(const std::multimap<std::string, std::string>& settings, const std::string& key);

}  // namespace trousseau::deploy
