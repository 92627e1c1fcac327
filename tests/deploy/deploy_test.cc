// What an operator installs (deploy/) against what the code really does: every manifest parses, the
// static pod and the Helm DaemonSet keep their security settings, probes and mounts consistent with the
// plugin's own flags; every flag and TROUSSEAU_HSM_* variable named anywhere in deploy/ is accepted by
// the built binaries (their --help is the truth); the systemd config file drives a real plugin, which
// reports readiness to systemd; the Dockerfile's runtime packages cover what the binaries link; and no PIN
// appears anywhere.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <thread>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/deploy/helm_render.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "tests/tpm/swtpm.h"
#include "tpm/provisioning.h"

namespace trousseau {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::CallContext;
using support::Eventually;
using testing::KmsClients;
using support::SoftHsmToken;
using support::Subprocess;

const fs::path kDeploy = DEPLOY_DIR;
const fs::path kChart = kDeploy / "helm" / "trousseau-hsm";
constexpr char kPluginName[] = "trousseau-hsm";
constexpr char kInitName[] = "trousseau-hsm-init";
constexpr char kCtlName[] = "trousseauctl";

// Flags of other programs that deploy/ may name (kube-apiserver, etcdctl, kubectl, curl, helm, docker,
// crictl, useradd, install, setpriv, runuser, systemctl, cmake, apt). Anything else must be a flag of one
// of the project's binaries.
const std::set<std::string> kForeignFlags = {
    "--encryption-provider-config", "--encryption-provider-config-automatic-reload",  // kube-apiserver
    "--endpoints", "--cacert", "--cert", "--key", "--print-value-only", "--prefix",   // etcdctl
    "--raw", "--from-literal", "--namespace", "--create-namespace", "--values",       // kubectl, helm
    "--set", "--kube-version", "--dry-run",                                            // helm
    "--build-arg", "--file", "--tag", "--entrypoint", "--user", "--rm", "--volume",    // docker
    "--system", "--uid", "--gid", "--no-create-home", "--home-dir", "--shell",        // useradd/groupadd
    "--reuid", "--regid", "--clear-groups", "--groups",                                          // setpriv
    "--now", "--no-install-recommends", "--parallel", "--target", "--recurse",        // systemctl, apt, cmake
    "--offline", "--threshold",                                                        // systemd-analyze
};

// ---------------------------------------------------------------------------------------------------
// Small helpers.

std::string Slurp(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct RunResult {
  int code = -1;
  std::string out;
};

// Runs `command` with /bin/sh; stdout (and stderr if asked) captured.
RunResult Shell(const std::string& command, bool with_stderr = false) {
  RunResult result;
  FILE* pipe = popen((command + (with_stderr ? " 2>&1" : " 2>/dev/null")).c_str(), "r");
  if (pipe == nullptr) return result;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, pipe)) > 0) result.out.append(buf, n);
  const int status = pclose(pipe);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool HasCommand(const std::string& name) { return Shell("command -v " + name + " >/dev/null").code == 0; }

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::stringstream ss(text);
  for (std::string line; std::getline(ss, line);) lines.push_back(line);
  return lines;
}

std::string Trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return s.substr(b);
}

std::string FlagName(const std::string& token) { return token.substr(0, token.find('=')); }

std::vector<fs::path> DeployFiles() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(kDeploy)) {
    if (entry.is_regular_file()) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool IsHelmTemplate(const fs::path& path) { return path.parent_path().filename() == "templates"; }

// ---------------------------------------------------------------------------------------------------
// The binaries' command-line interfaces, read from their --help (CLI11 layout).

struct Cli {
  std::set<std::string> flags;
  std::set<std::string> env;  // TROUSSEAU_HSM_* names from "(Env:...)"
  std::map<std::string, Cli> subcommands;
};

Cli ReadCli(const std::string& binary, const std::vector<std::string>& path = {}) {
  std::string command = ShellQuote(binary);
  for (const std::string& p : path) command += " " + p;
  const RunResult help = Shell(command + " --help");
  Cli cli;
  static const std::regex option(R"(^  (?:-[A-Za-z],)?(--[a-z0-9][a-z0-9-]*))");
  static const std::regex env(R"(\(Env:(TROUSSEAU_HSM_[A-Z0-9_]+)\))");
  bool in_subcommands = false;
  for (const std::string& line : Lines(help.out)) {
    std::smatch m;
    if (line.rfind("Subcommands:", 0) == 0) {
      in_subcommands = true;
      continue;
    }
    if (in_subcommands) {
      static const std::regex sub(R"(^  ([a-z][a-z0-9-]*)\s)");
      if (std::regex_search(line, m, sub)) {
        std::vector<std::string> sub_path = path;
        sub_path.push_back(m[1]);
        cli.subcommands[m[1]] = ReadCli(binary, sub_path);
      }
      continue;
    }
    if (std::regex_search(line, m, option)) cli.flags.insert(m[1]);
    for (auto it = std::sregex_iterator(line.begin(), line.end(), env); it != std::sregex_iterator(); ++it) {
      cli.env.insert((*it)[1]);
    }
  }
  return cli;
}

const Cli& PluginCli() {
  static const Cli cli = ReadCli(PLUGIN_PATH);
  return cli;
}
const Cli& InitCli() {
  static const Cli cli = ReadCli(INIT_PATH);
  return cli;
}
const Cli& CtlCli() {
  static const Cli cli = ReadCli(CTL_PATH);
  return cli;
}

void CollectFlags(const Cli& cli, std::set<std::string>& into) {
  into.insert(cli.flags.begin(), cli.flags.end());
  for (const auto& [name, sub] : cli.subcommands) CollectFlags(sub, into);
}

const Cli* CliFor(const std::string& token) {
  const std::string base = token.substr(token.rfind('/') == std::string::npos ? 0 : token.rfind('/') + 1);
  if (base == kPluginName) return &PluginCli();
  if (base == kInitName) return &InitCli();
  if (base == kCtlName) return &CtlCli();
  return nullptr;
}

// A shell command line split into commands (at | ; && || ( ) and backticks), each a list of words with
// quotes removed. Comments (# after a blank) are dropped. Good enough for documentation.
std::vector<std::vector<std::string>> ShellCommands(const std::string& line) {
  std::vector<std::vector<std::string>> commands(1);
  std::string word;
  bool in_word = false;
  char quote = 0;
  auto end_word = [&] {
    if (in_word) commands.back().push_back(word);
    word.clear();
    in_word = false;
  };
  auto end_command = [&] {
    end_word();
    if (!commands.back().empty()) commands.emplace_back();
  };
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quote != 0) {
      if (c == quote) {
        quote = 0;
      } else {
        word += c;
      }
      continue;
    }
    if (c == '\'' || c == '"') {
      quote = c;
      in_word = true;
    } else if (c == '#' && !in_word) {
      break;
    } else if (std::isspace(static_cast<unsigned char>(c))) {
      end_word();
    } else if (c == '|' || c == ';' || c == '(' || c == ')' || c == '`' || (c == '&' && i + 1 < line.size() && line[i + 1] == '&')) {
      end_command();
      if (c == '&') ++i;
    } else if (c == '$' && i + 1 < line.size() && line[i + 1] == '(') {
      end_command();
    } else {
      word += c;
      in_word = true;
    }
  }
  end_word();
  if (commands.back().empty()) commands.pop_back();
  return commands;
}

// Checks every invocation of a project binary in `words`: each --flag must belong to the (sub)command it
// follows. Returns the problems found.
// Programs that take the binaries' names as plain arguments (a release, unit, user or file name), not as a
// command to run: no invocation is attributed in their command lines.
const std::set<std::string> kNamesAsArguments = {"helm", "systemctl", "journalctl", "useradd", "groupadd", "chown",
                                                 "install", "kill", "pidof", "docker", "kubectl", "cp", "rsync"};

std::vector<std::string> CheckInvocations(const std::vector<std::string>& words, const std::string& where) {
  std::vector<std::string> problems;
  if (words.empty() || kNamesAsArguments.contains(words[0])) return problems;
  const Cli* level = nullptr;
  std::string command;
  for (const std::string& w : words) {
    if (const Cli* cli = CliFor(w)) {
      level = cli;
      command = w.substr(w.rfind('/') == std::string::npos ? 0 : w.rfind('/') + 1);
      continue;
    }
    if (level == nullptr) continue;
    if (w.rfind("--", 0) == 0 && w.size() > 2) {
      const std::string flag = FlagName(w);
      if (!level->flags.contains(flag)) problems.push_back(where + ": `" + command + " ... " + flag + "` is not accepted");
    } else if (auto it = level->subcommands.find(w); it != level->subcommands.end()) {
      level = &it->second;
      command += " " + w;
    }
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------
// Kubernetes manifest helpers.

YAML::Node LoadOne(const fs::path& path) { return YAML::LoadFile(path.string()); }

YAML::Node RenderedDaemonSet(const YAML::Node& overrides = {}) {
  const auto rendered = deploy::RenderChart(kChart.string(), overrides);
  for (const auto& [name, text] : rendered) {
    for (const YAML::Node& doc : YAML::LoadAll(text)) {
      if (doc.IsMap() && doc["kind"].as<std::string>("") == "DaemonSet") return doc;
    }
  }
  return {};
}

// The values a TPM node installs the chart with (113: the tss group, owner of /dev/tpmrm0).
YAML::Node TpmValues() { return YAML::Load("{ tpm: { enabled: true }, supplementalGroups: [113] }"); }

YAML::Node PluginContainer(const YAML::Node& pod_spec) {
  for (const YAML::Node& c : pod_spec["containers"]) {
    if (c["name"].as<std::string>("") == kPluginName) return c;
  }
  return {};
}

// The container's args as flag -> value ("--x=v" or "--x v"; "" for a bare flag).
std::map<std::string, std::string> ArgMap(const YAML::Node& container) {
  std::map<std::string, std::string> args;
  std::vector<std::string> list;
  for (const YAML::Node& a : container["args"]) list.push_back(a.as<std::string>());
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].rfind("--", 0) != 0) continue;
    if (size_t eq = list[i].find('='); eq != std::string::npos) {
      args[list[i].substr(0, eq)] = list[i].substr(eq + 1);
    } else if (i + 1 < list.size() && list[i + 1].rfind("--", 0) != 0) {
      args[list[i]] = list[i + 1];
      ++i;
    } else {
      args[list[i]] = "";
    }
  }
  return args;
}

// Value of `key=` in a PKCS#11 URI's path or query.
std::string UriAttribute(std::string uri, const std::string& key) {
  if (uri.rfind("pkcs11:", 0) == 0) uri.erase(0, 7);
  static const std::regex sep("[;?&]");
  for (auto it = std::sregex_token_iterator(uri.begin(), uri.end(), sep, -1); it != std::sregex_token_iterator();
       ++it) {
    const std::string part = *it;
    if (part.rfind(key + "=", 0) == 0) return part.substr(key.size() + 1);
  }
  return "";
}

bool Under(const std::string& path, const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return path == d || path.rfind(d + "/", 0) == 0;
}

struct Mount {
  std::string mount_path;
  bool read_only = false;
  std::string host_path;  // empty if not a hostPath volume
  std::string host_type;
};

std::vector<Mount> Mounts(const YAML::Node& pod_spec, const YAML::Node& container) {
  std::map<std::string, YAML::Node> volumes;
  for (const YAML::Node& v : pod_spec["volumes"]) volumes[v["name"].as<std::string>()] = v;
  std::vector<Mount> mounts;
  for (const YAML::Node& m : container["volumeMounts"]) {
    Mount mount;
    mount.mount_path = m["mountPath"].as<std::string>();
    mount.read_only = m["readOnly"].as<bool>(false);
    const YAML::Node v = volumes[m["name"].as<std::string>()];
    if (v && v["hostPath"]) {
      mount.host_path = v["hostPath"]["path"].as<std::string>();
      mount.host_type = v["hostPath"]["type"].as<std::string>("");
    }
    mounts.push_back(mount);
  }
  return mounts;
}

// The mount that holds `path` inside the container (the longest matching mountPath).
const Mount* MountFor(const std::vector<Mount>& mounts, const std::string& path) {
  const Mount* best = nullptr;
  for (const Mount& m : mounts) {
    if (Under(path, m.mount_path) && (best == nullptr || m.mount_path.size() > best->mount_path.size())) best = &m;
  }
  return best;
}

double MebibytesOf(const std::string& quantity) {
  static const std::regex q(R"(^([0-9.]+)(Ki|Mi|Gi)?$)");
  std::smatch m;
  if (!std::regex_match(quantity, m, q)) return -1;
  const double n = std::stod(m[1]);
  if (m[2] == "Ki") return n / 1024;
  if (m[2] == "Mi") return n;
  if (m[2] == "Gi") return n * 1024;
  return n / (1024 * 1024);
}

// Every requirement shared by the static pod and the Helm DaemonSet's pod template.
void ExpectSecurePluginPod(const YAML::Node& spec, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(spec.IsMap());
  EXPECT_TRUE(spec["hostNetwork"].as<bool>(false)) << "the health endpoint listens on the node's loopback";
  EXPECT_EQ(spec["priorityClassName"].as<std::string>(""), "system-node-critical");
  EXPECT_FALSE(spec["automountServiceAccountToken"].as<bool>(true)) << "the plugin needs no API credentials";
  EXPECT_EQ(spec["securityContext"]["seccompProfile"]["type"].as<std::string>(""), "RuntimeDefault");

  const YAML::Node c = PluginContainer(spec);
  ASSERT_TRUE(c) << "no container named " << kPluginName;
  const YAML::Node sc = c["securityContext"];
  const YAML::Node psc = spec["securityContext"];
  EXPECT_FALSE(sc["allowPrivilegeEscalation"].as<bool>(true));
  EXPECT_TRUE(sc["readOnlyRootFilesystem"].as<bool>(false));
  EXPECT_FALSE(sc["privileged"].as<bool>(false));
  std::vector<std::string> drop, add;
  for (const YAML::Node& d : sc["capabilities"]["drop"]) drop.push_back(d.as<std::string>());
  for (const YAML::Node& a : sc["capabilities"]["add"]) add.push_back(a.as<std::string>());
  EXPECT_NE(std::find(drop.begin(), drop.end(), "ALL"), drop.end());
  EXPECT_TRUE(add.empty()) << "the plugin needs no capability";
  EXPECT_TRUE(sc["runAsNonRoot"].as<bool>(psc["runAsNonRoot"].as<bool>(false)));
  const int uid = sc["runAsUser"].as<int>(psc["runAsUser"].as<int>(0));
  EXPECT_NE(uid, 0);

  // Init containers (the socket directory's owner) may run as root, with CAP_CHOWN at most.
  for (const YAML::Node& init : spec["initContainers"]) {
    const YAML::Node isc = init["securityContext"];
    EXPECT_FALSE(isc["allowPrivilegeEscalation"].as<bool>(true)) << init["name"];
    EXPECT_TRUE(isc["readOnlyRootFilesystem"].as<bool>(false)) << init["name"];
    EXPECT_FALSE(isc["privileged"].as<bool>(false)) << init["name"];
    bool drops_all = false;
    for (const YAML::Node& d : isc["capabilities"]["drop"]) drops_all |= d.as<std::string>() == "ALL";
    EXPECT_TRUE(drops_all) << init["name"];
    for (const YAML::Node& a : isc["capabilities"]["add"]) EXPECT_EQ(a.as<std::string>(), "CHOWN") << init["name"];
    std::string script;
    for (const YAML::Node& w : init["command"]) script += w.as<std::string>() + " ";
    if (script.find("chown") != std::string::npos) {
      EXPECT_NE(script.find("chown " + std::to_string(uid) + ":"), std::string::npos)
          << "the socket directory must go to the plugin's uid " << uid << ": " << script;
      EXPECT_LT(script.find("chmod"), script.find("chown")) << "chmod after chown would need CAP_FOWNER";
    }
  }

  // Flags (checked against --help in FlagsNamedInDeployAreAcceptedByTheBinaries) and what they imply.
  const std::map<std::string, std::string> args = ArgMap(c);
  ASSERT_TRUE(args.contains("--listen"));
  ASSERT_NE(args.contains("--pkcs11-uri"), args.contains("--tpm-key-dir")) << "exactly one backend";
  ASSERT_TRUE(args.contains("--health-listen"));
  const std::string listen = args.at("--listen");
  ASSERT_EQ(listen.rfind("unix:///", 0), 0u) << listen;
  const std::string socket_path = listen.substr(7);
  const std::string health = args.at("--health-listen");
  const std::string health_host = health.substr(0, health.rfind(':'));
  const int health_port = std::stoi(health.substr(health.rfind(':') + 1));
  EXPECT_EQ(health_host, "127.0.0.1") << "the endpoint has no authentication: loopback only";
  EXPECT_NE(health_port, 8080) << "kube-apiserver may use 8080 on the host network";

  // Probes: /livez for liveness (a device outage must not restart the plugin), /readyz for readiness.
  for (const auto& [probe, path] : {std::pair{"livenessProbe", "/livez"}, std::pair{"readinessProbe", "/readyz"}}) {
    const YAML::Node get = c[probe]["httpGet"];
    ASSERT_TRUE(get) << probe;
    EXPECT_EQ(get["path"].as<std::string>(""), path) << probe;
    EXPECT_EQ(get["host"].as<std::string>(""), health_host) << probe;
    EXPECT_EQ(get["port"].as<int>(0), health_port) << probe;
  }

  // Resources: limits and requests set; the memory limit above the measured VmHWM (up to 29.3 MiB,
  // docs/benchmarks.md) with headroom.
  EXPECT_TRUE(c["resources"]["requests"]["cpu"]);
  EXPECT_TRUE(c["resources"]["requests"]["memory"]);
  EXPECT_GE(MebibytesOf(c["resources"]["limits"]["memory"].as<std::string>("")), 48);

  // Environment: only variables the plugin knows; never a PIN value.
  std::string softhsm_conf;
  for (const YAML::Node& e : c["env"]) {
    const std::string name = e["name"].as<std::string>();
    if (name.rfind("TROUSSEAU_HSM_", 0) == 0) {
      EXPECT_TRUE(PluginCli().env.contains(name) || name == "TROUSSEAU_HSM_CONFIG") << name;
      EXPECT_NE(name, "TROUSSEAU_HSM_PIN") << "no PIN in a manifest";
    }
    if (name == "SOFTHSM2_CONF") softhsm_conf = e["value"].as<std::string>();
  }

  // Mounts: the socket directory from the host, read-write, at the same path as on the host (kube-apiserver
  // mounts that path); the PIN file, the module and the SoftHSM configuration read-only.
  const std::vector<Mount> mounts = Mounts(spec, c);
  const std::string socket_dir = fs::path(socket_path).parent_path().string();
  const Mount* sock = MountFor(mounts, socket_path);
  ASSERT_NE(sock, nullptr) << "socket directory not mounted: " << socket_dir;
  EXPECT_EQ(sock->mount_path, socket_dir);
  EXPECT_EQ(sock->host_path, socket_dir);
  EXPECT_EQ(sock->host_type, "DirectoryOrCreate");
  EXPECT_FALSE(sock->read_only);

  if (args.contains("--tpm-key-dir")) {
    // TPM: the key directory from the same host path, read-only (rotation writes it from the host); the
    // resource manager device when the TCTI names it, as a character device.
    const std::string key_dir = args.at("--tpm-key-dir");
    const Mount* keys = MountFor(mounts, key_dir + "/v000001.aes.pub");
    ASSERT_NE(keys, nullptr) << "TPM key directory not mounted: " << key_dir;
    EXPECT_TRUE(keys->read_only);
    EXPECT_EQ(keys->host_path, key_dir);
    const std::string tcti = args.contains("--tpm-tcti") ? args.at("--tpm-tcti") : "device:/dev/tpmrm0";
    if (tcti.rfind("device:", 0) == 0) {
      const std::string device = tcti.substr(7);
      const Mount* dev = MountFor(mounts, device);
      ASSERT_NE(dev, nullptr) << "TPM device not mounted: " << device;
      EXPECT_EQ(dev->host_type, "CharDevice");
      EXPECT_TRUE(psc["supplementalGroups"].IsSequence() && psc["supplementalGroups"].size() > 0)
          << device << " is root:tss 0660: the pod needs the tss group";
    }
  } else {
    const std::string uri = args.at("--pkcs11-uri");
    EXPECT_EQ(UriAttribute(uri, "pin-value"), "") << "no PIN in the URI";
    const std::string pin_source = UriAttribute(uri, "pin-source");
    ASSERT_EQ(pin_source.rfind("file:/", 0), 0u) << "the PIN must come from a file: " << uri;
    const std::string pin_file = pin_source.substr(5);
    const Mount* pin = MountFor(mounts, pin_file);
    ASSERT_NE(pin, nullptr) << "PIN file not mounted: " << pin_file;
    EXPECT_TRUE(pin->read_only);
    EXPECT_EQ(pin->host_path, pin_file);
    EXPECT_EQ(pin->host_type, "File");

    const std::string module = UriAttribute(uri, "module-path");
    ASSERT_FALSE(module.empty()) << uri;
    const Mount* mod = MountFor(mounts, module);
    ASSERT_NE(mod, nullptr) << "PKCS#11 module not mounted: " << module;
    EXPECT_TRUE(mod->read_only);
    // On this (Debian) host the module path may be a symlink: where it really points must be mounted too,
    // from the same host path, or the container sees a dangling link.
    std::error_code ec;
    const fs::path real = fs::canonical(module, ec);
    if (!ec) {
      const Mount* real_mount = MountFor(mounts, real.string());
      ASSERT_NE(real_mount, nullptr) << module << " resolves to " << real << " on this host, which is not mounted";
      EXPECT_TRUE(real_mount->read_only);
      EXPECT_EQ(real_mount->host_path, real_mount->mount_path);
    }

  }

  if (!softhsm_conf.empty()) {
    const Mount* conf = MountFor(mounts, softhsm_conf);
    ASSERT_NE(conf, nullptr) << "SOFTHSM2_CONF not mounted: " << softhsm_conf;
    EXPECT_TRUE(conf->read_only);
    EXPECT_EQ(conf->host_type, "File");
    // The token directory that configuration names (as Debian's softhsm2 package ships it, when present
    // here) must be mounted read-write: SoftHSM locks files in it (see SoftHsmNeedsAWritableTokenDirectory).
    std::string token_dir = "/var/lib/softhsm/tokens";
    std::ifstream conf_file(softhsm_conf);
    for (std::string line; std::getline(conf_file, line);) {
      static const std::regex tokendir(R"(^\s*directories\.tokendir\s*=\s*(\S+))");
      std::smatch m;
      if (std::regex_search(line, m, tokendir)) token_dir = m[1];
    }
    const Mount* tokens = MountFor(mounts, token_dir + "/x");
    ASSERT_NE(tokens, nullptr) << "SoftHSM token directory not mounted: " << token_dir;
    EXPECT_FALSE(tokens->read_only) << "SoftHSM needs to lock files in " << token_dir;
  }

  // SIGTERM drains for --shutdown-grace (5s unless set): the pod must allow more than that.
  const int grace = args.contains("--shutdown-grace") ? std::stoi(args.at("--shutdown-grace")) : 5;
  EXPECT_GT(spec["terminationGracePeriodSeconds"].as<int>(30), grace);
}

// ---------------------------------------------------------------------------------------------------

TEST(DeployTest, EveryYamlFileParses) {
  int files = 0;
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() != ".yaml" || IsHelmTemplate(path)) continue;
    ++files;
    SCOPED_TRACE(path.string());
    std::vector<YAML::Node> docs;
    ASSERT_NO_THROW(docs = YAML::LoadAll(Slurp(path)));
    int non_empty = 0;
    for (const YAML::Node& d : docs) non_empty += d.IsMap() ? 1 : 0;
    EXPECT_GE(non_empty, 1) << "no YAML mapping in the file";
  }
  EXPECT_GE(files, 6);  // static pod, 2 EncryptionConfigurations, config.yaml, Chart.yaml, values.yaml
}

TEST(DeployTest, YamlBlocksInTheDocumentationParse) {
  int blocks = 0;
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() != ".md") continue;
    bool in_yaml = false;
    std::string block;
    for (const std::string& line : Lines(Slurp(path))) {
      if (line.rfind("```", 0) == 0) {
        if (in_yaml) {
          ++blocks;
          EXPECT_NO_THROW(YAML::LoadAll(block)) << path << ":\n" << block;
          block.clear();
        }
        in_yaml = !in_yaml && Trim(line) == "```yaml";
        continue;
      }
      if (in_yaml) block += line + "\n";
    }
  }
  EXPECT_GE(blocks, 3);
}

TEST(DeployTest, StaticPodIsSecureAndConsistentWithThePlugin) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  EXPECT_EQ(pod["kind"].as<std::string>(""), "Pod");
  EXPECT_EQ(pod["metadata"]["namespace"].as<std::string>(""), "kube-system");
  ExpectSecurePluginPod(pod["spec"], "static pod");
}

TEST(DeployTest, TpmStaticPodIsAsSecureAndUsesTheResourceManager) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm-tpm.yaml");
  EXPECT_EQ(pod["kind"].as<std::string>(""), "Pod");
  EXPECT_EQ(pod["metadata"]["name"].as<std::string>(""), "trousseau-hsm") << "replaces the PKCS#11 variant";
  ExpectSecurePluginPod(pod["spec"], "TPM static pod");
  const std::map<std::string, std::string> args = ArgMap(PluginContainer(pod["spec"]));
  EXPECT_EQ(args.at("--tpm-tcti"), "device:/dev/tpmrm0") << "the kernel resource manager, shared with the tool";
  EXPECT_FALSE(args.contains("--pkcs11-uri"));
  const std::map<std::string, std::string> pkcs11 =
      ArgMap(PluginContainer(LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml")["spec"]));
  EXPECT_EQ(args.at("--listen"), pkcs11.at("--listen")) << "kube-apiserver's configuration must not change";
  EXPECT_EQ(args.at("--health-listen"), pkcs11.at("--health-listen"));
}

TEST(DeployTest, HelmDaemonSetIsSecureAndRunsOnTheControlPlane) {
  const YAML::Node ds = RenderedDaemonSet();
  ASSERT_TRUE(ds) << "no DaemonSet rendered";
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  ExpectSecurePluginPod(spec, "helm DaemonSet");
  EXPECT_TRUE(spec["nodeSelector"]["node-role.kubernetes.io/control-plane"].IsDefined());
  bool tolerates = false;
  for (const YAML::Node& t : spec["tolerations"]) {
    tolerates |= t["key"].as<std::string>("") == "node-role.kubernetes.io/control-plane" &&
                 t["effect"].as<std::string>("") == "NoSchedule";
  }
  EXPECT_TRUE(tolerates) << "control-plane nodes are tainted NoSchedule";
  for (const auto& label : ds["spec"]["selector"]["matchLabels"]) {
    EXPECT_EQ(ds["spec"]["template"]["metadata"]["labels"][label.first.as<std::string>()].as<std::string>(""),
              label.second.as<std::string>());
  }

  // The same manifest for the static pod and the chart: image user, command and the security settings.
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  const YAML::Node a = PluginContainer(pod["spec"]), b = PluginContainer(spec);
  std::string why;
  EXPECT_TRUE(deploy::YamlEqual(a["securityContext"], b["securityContext"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["command"], b["command"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["livenessProbe"], b["livenessProbe"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["readinessProbe"], b["readinessProbe"], &why)) << why;
  const auto args_a = ArgMap(a), args_b = ArgMap(b);
  for (const char* flag : {"--listen", "--pkcs11-uri", "--health-listen", "--log-format"}) {
    EXPECT_EQ(args_a.count(flag) ? args_a.at(flag) : "", args_b.count(flag) ? args_b.at(flag) : "") << flag;
  }
  EXPECT_EQ(spec["securityContext"]["runAsUser"].as<int>(-1), pod["spec"]["securityContext"]["runAsUser"].as<int>(-2));
}

TEST(DeployTest, HelmValuesSwitchTheSoftHsmMountsAndAddArguments) {
  const YAML::Node overrides = YAML::Load(R"(
softhsm: { enabled: false }
pkcs11ModuleLibDir: ""
extraArgs: ["--hsm-sessions=8"]
extraEnv: [{ name: TROUSSEAU_HSM_LOG_LEVEL, value: debug }]
socketDir: /run/kms-plugin
)");
  const YAML::Node ds = RenderedDaemonSet(overrides);
  ASSERT_TRUE(ds);
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  const YAML::Node c = PluginContainer(spec);
  for (const YAML::Node& v : spec["volumes"]) {
    const std::string name = v["name"].as<std::string>();
    EXPECT_TRUE(name != "softhsm-conf" && name != "softhsm-tokens" && name != "pkcs11-module-lib") << name;
  }
  for (const YAML::Node& e : c["env"]) EXPECT_NE(e["name"].as<std::string>(), "SOFTHSM2_CONF");
  const auto args = ArgMap(c);
  EXPECT_EQ(args.at("--hsm-sessions"), "8");
  EXPECT_EQ(args.at("--listen"), "unix:///run/kms-plugin/kms.sock");
  const std::vector<Mount> mounts = Mounts(spec, c);
  ASSERT_NE(MountFor(mounts, "/run/kms-plugin/kms.sock"), nullptr);
  EXPECT_EQ(MountFor(mounts, "/run/kms-plugin/kms.sock")->host_path, "/run/kms-plugin");
  std::string init;
  for (const YAML::Node& w : spec["initContainers"][0]["command"]) init += w.as<std::string>() + " ";
  EXPECT_NE(init.find("chown 10001:10001 /run/kms-plugin"), std::string::npos) << init;
}

// tpm.enabled: the TPM backend's flags, key directory and device instead of everything PKCS#11.
TEST(DeployTest, HelmTpmValuesSwitchToTheTpmBackend) {
  const YAML::Node ds = RenderedDaemonSet(TpmValues());
  ASSERT_TRUE(ds);
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  ExpectSecurePluginPod(spec, "Helm DaemonSet, tpm.enabled");
  const YAML::Node c = PluginContainer(spec);
  const auto args = ArgMap(c);
  EXPECT_EQ(args.at("--tpm-tcti"), "device:/dev/tpmrm0");
  EXPECT_EQ(args.at("--tpm-key-dir"), "/var/lib/trousseau-hsm/tpm");
  EXPECT_FALSE(args.contains("--pkcs11-uri"));
  for (const YAML::Node& v : spec["volumes"]) {
    const std::string name = v["name"].as<std::string>();
    EXPECT_TRUE(name == "socket-dir" || name == "tpm-key-dir" || name == "tpm-device") << name;
  }
  for (const YAML::Node& e : c["env"]) EXPECT_NE(e["name"].as<std::string>(), "SOFTHSM2_CONF");
}

// The renderer above stands in for helm where there is none; where there is one, both must agree.
TEST(DeployTest, HelmTemplateOfRealHelmMatchesTheRenderingTested) {
  const char* env = std::getenv("HELM");
  const std::string helm = env != nullptr ? env : "helm";
  if (!HasCommand(ShellQuote(helm))) {
    SKIP_OR_FAIL_IN_CI("no helm binary (ci/test builds one with ci/go-tools; set HELM=/path/to/helm)");
  }
  char dir_template[] = "/tmp/deploy-helm-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string overrides_file = dir + "/overrides.yaml";
  std::ofstream(overrides_file) << "softhsm: { enabled: false }\nextraArgs: [\"--hsm-sessions=8\"]\n"
                                   "extraVolumes: [{ name: hsm-conf, hostPath: { path: /etc/hsm, type: Directory } }]\n"
                                   "extraVolumeMounts: [{ name: hsm-conf, mountPath: /etc/hsm, readOnly: true }]\n";
  const std::string tpm_file = dir + "/tpm.yaml";
  std::ofstream(tpm_file) << "tpm: { enabled: true }\nsupplementalGroups: [113]\n";
  for (const auto& [what, values_file] : {std::pair<std::string, std::string>{"defaults", ""},
                                          {"with overrides", overrides_file},
                                          {"tpm.enabled", tpm_file}}) {
    SCOPED_TRACE(what);
    const RunResult out = Shell(ShellQuote(helm) + " template trousseau-hsm " + ShellQuote(kChart.string()) +
                                    " --namespace kube-system --kube-version 1.33.0" +
                                    (values_file.empty() ? "" : " --values " + ShellQuote(values_file)),
                                true);
    ASSERT_EQ(out.code, 0) << out.out;
    YAML::Node real;
    for (const YAML::Node& doc : YAML::LoadAll(out.out)) {
      if (doc.IsMap() && doc["kind"].as<std::string>("") == "DaemonSet") real = doc;
    }
    ASSERT_TRUE(real) << out.out;
    const YAML::Node ours = RenderedDaemonSet(values_file.empty() ? YAML::Node() : YAML::LoadFile(values_file));
    std::string why;
    EXPECT_TRUE(deploy::YamlEqual(real, ours, &why)) << why;
  }
  fs::remove_all(dir);
}

TEST(DeployTest, EncryptionConfigurationsUseThePluginSocketAndKeepIdentityLast) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  const std::string static_listen = ArgMap(PluginContainer(pod["spec"])).at("--listen");
  const std::string helm_listen = ArgMap(PluginContainer(RenderedDaemonSet()["spec"]["template"]["spec"])).at("--listen");
  for (const auto& [file, resources] :
       {std::pair<std::string, std::set<std::string>>{"encryption-configuration.yaml", {"secrets"}},
        std::pair<std::string, std::set<std::string>>{"encryption-configuration-configmaps.yaml",
                                                      {"secrets", "configmaps"}}}) {
    SCOPED_TRACE(file);
    const YAML::Node config = LoadOne(kDeploy / file);
    EXPECT_EQ(config["apiVersion"].as<std::string>(""), "apiserver.config.k8s.io/v1");
    EXPECT_EQ(config["kind"].as<std::string>(""), "EncryptionConfiguration");
    ASSERT_EQ(config["resources"].size(), 1u);
    const YAML::Node entry = config["resources"][0];
    std::set<std::string> listed;
    for (const YAML::Node& r : entry["resources"]) listed.insert(r.as<std::string>());
    EXPECT_EQ(listed, resources);
    const YAML::Node providers = entry["providers"];
    ASSERT_EQ(providers.size(), 2u) << "rotation needs no second kms provider: the plugin rotates itself";
    const YAML::Node kms = providers[0]["kms"];
    ASSERT_TRUE(kms) << "the first provider encrypts every write: it must be the plugin";
    EXPECT_EQ(kms["apiVersion"].as<std::string>(""), "v2");
    EXPECT_EQ(kms["name"].as<std::string>(""), "trousseau-hsm");
    EXPECT_EQ(kms["name"].as<std::string>("").find(':'), std::string::npos);
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), "unix:///var/run/trousseau-hsm/kms.sock");
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), static_listen);
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), helm_listen);
    EXPECT_EQ(kms["timeout"].as<std::string>(""), "3s");
    EXPECT_FALSE(kms["cachesize"]) << "cachesize is a KMS v1 setting";
    EXPECT_TRUE(providers[1]["identity"].IsDefined()) << "identity last keeps unencrypted data readable";
  }
}

// The provider-migration example: the plugin first (it encrypts every write), the old provider only
// for reads, identity last.
TEST(DeployTest, MigrationExampleWritesThroughThePluginAndOnlyReadsTheOldProvider) {
  const YAML::Node config = LoadOne(kDeploy / "encryption-configuration-migration.yaml");
  EXPECT_EQ(config["kind"].as<std::string>(""), "EncryptionConfiguration");
  ASSERT_EQ(config["resources"].size(), 1u);
  const YAML::Node providers = config["resources"][0]["providers"];
  ASSERT_EQ(providers.size(), 3u);
  const YAML::Node kms = providers[0]["kms"];
  ASSERT_TRUE(kms) << "the first provider encrypts every write: it must be the plugin";
  EXPECT_EQ(kms["apiVersion"].as<std::string>(""), "v2");
  EXPECT_EQ(kms["name"].as<std::string>(""), "trousseau-hsm");
  EXPECT_EQ(kms["endpoint"].as<std::string>(""), "unix:///var/run/trousseau-hsm/kms.sock");
  EXPECT_TRUE(providers[1]["aescbc"].IsDefined()) << "the provider being migrated away from, for reads";
  EXPECT_TRUE(providers[2]["identity"].IsDefined());
}

// Every --flag written in deploy/ against the binaries' --help.
TEST(DeployTest, FlagsNamedInDeployAreAcceptedByTheBinaries) {
  ASSERT_GE(PluginCli().flags.size(), 10u) << "could not read " << PLUGIN_PATH << " --help";
  ASSERT_FALSE(InitCli().subcommands.empty());
  ASSERT_FALSE(CtlCli().subcommands.empty());
  std::vector<std::string> problems;
  int checked_invocations = 0;
  auto check_plugin_args = [&](const std::vector<std::string>& args, const std::string& where) {
    ++checked_invocations;
    for (const std::string& a : args) {
      if (a.rfind("--", 0) == 0 && !PluginCli().flags.contains(FlagName(a))) {
        problems.push_back(where + ": " + FlagName(a) + " is not a trousseau-hsm flag");
      }
    }
  };

  // Static pods and chart, for both backends: the plugin container's args, parsed.
  for (const auto& [where, pod_spec] :
       {std::pair<std::string, YAML::Node>{"static pod", LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml")["spec"]},
        {"TPM static pod", LoadOne(kDeploy / "static-pod" / "trousseau-hsm-tpm.yaml")["spec"]},
        {"Helm DaemonSet", RenderedDaemonSet()["spec"]["template"]["spec"]},
        {"Helm DaemonSet, tpm.enabled", RenderedDaemonSet(TpmValues())["spec"]["template"]["spec"]}}) {
    const YAML::Node container = pod_spec.IsMap() ? PluginContainer(pod_spec) : YAML::Node();
    std::vector<std::string> args;
    for (const YAML::Node& a : container["args"]) args.push_back(a.as<std::string>());
    EXPECT_FALSE(args.empty()) << where << ": no " << kPluginName << " container args to check";
    check_plugin_args(args, where + " container args");
  }
  // Chart templates as text: every --word in them is for the plugin.
  for (const fs::path& path : DeployFiles()) {
    if (!IsHelmTemplate(path) || path.extension() != ".yaml") continue;
    static const std::regex flag(R"((?:^|[\s"'\[=,])(--[a-z][a-z0-9-]*))");
    const std::string text = Slurp(path);
    std::vector<std::string> found;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), flag); it != std::sregex_iterator(); ++it) {
      found.push_back((*it)[1]);
    }
    EXPECT_FALSE(found.empty()) << path;
    check_plugin_args(found, path.filename().string());
  }
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
      check_plugin_args(commands[0], std::string(file) + " ExecStart");
    }
    EXPECT_EQ(exec_starts, 1) << file << ": one command line for the plugin";
  }
  // Dockerfile ENTRYPOINT + CMD (JSON arrays).
  {
    std::vector<std::string> exec;
    for (const std::string& line : Lines(Slurp(kDeploy / "Dockerfile"))) {
      if (line.rfind("ENTRYPOINT ", 0) != 0 && line.rfind("CMD ", 0) != 0) continue;
      const YAML::Node array = YAML::Load(line.substr(line.find(' ') + 1));
      ASSERT_TRUE(array.IsSequence()) << "exec form expected: " << line;
      for (const YAML::Node& w : array) exec.push_back(w.as<std::string>());
    }
    ASSERT_FALSE(exec.empty());
    EXPECT_EQ(CliFor(exec[0]), &PluginCli());
    check_plugin_args(exec, "Dockerfile ENTRYPOINT/CMD");
  }
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
          ++checked_invocations;
        }
        for (const std::string& p : CheckInvocations(words, path.filename().string())) problems.push_back(p);
      }
    }
  }
  EXPECT_GE(checked_invocations, 10);

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
        if (!ours.contains(f) && !kForeignFlags.contains(f)) problems.push_back(where + ": unknown flag " + f);
      }
    }
  }
  for (const std::string& p : problems) ADD_FAILURE() << p;
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

// ---------------------------------------------------------------------------------------------------
// Against a real plugin on a real SoftHSM token.

class DeployPluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    socket_ = token_->dir() + "/run/kms.sock";
    // The socket's directory is the operator's to make (RuntimeDirectory=, a hostPath): the plugin does not.
    ASSERT_TRUE(fs::create_directories(token_->dir() + "/run"));
  }

  v2::StatusResponse Status(const std::string& socket = "") {
    KmsClients clients(socket.empty() ? socket_ : socket);
    v2::StatusResponse status;
    if (!clients.v2->Status(CallContext(1s).get(), {}, &status).ok()) return {};
    return status;
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::string socket_;
};

TEST_F(DeployPluginTest, SystemdConfigFileDrivesARealPlugin) {
  const fs::path config = kDeploy / "systemd" / "config.yaml";
  const YAML::Node keys = LoadOne(config);
  ASSERT_TRUE(keys.IsMap());
  for (const auto& e : keys) {
    EXPECT_TRUE(PluginCli().flags.contains("--" + e.first.as<std::string>())) << e.first.as<std::string>();
  }
  ASSERT_TRUE(keys["pkcs11-uri"]) << "the unit passes no --pkcs11-uri: the file must";
  ASSERT_TRUE(keys["health-listen"]);

  // The file as shipped; only the token (URI), the socket and the port are this test's.
  const int port = testing::FreeLoopbackPort();
  Subprocess plugin({PLUGIN_PATH, "--config", config.string(), "--listen", "unix://" + socket_, "--pkcs11-uri",
                     token_->Uri(), "--health-listen", "127.0.0.1:" + std::to_string(port)},
                    token_->dir() + "/plugin.log");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin.Log();
  EXPECT_EQ(testing::HttpGet(port, "/livez").code, 200);
  EXPECT_EQ(testing::HttpGet(port, "/readyz").code, 200);
  // log-format: json came from the file.
  const std::string first_line = Lines(plugin.Log()).at(0);
  EXPECT_NO_THROW(nlohmann::json::parse(first_line)) << first_line;
  plugin.Signal(SIGTERM);
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
}

// The TPM config file as shipped, on a real (software) TPM; only the TPM, key directory, socket and port
// are this test's.
TEST(DeployTpmTest, SystemdTpmConfigFileDrivesARealPluginOnATpm) {
  testing::TempDir dir;
  auto tpm = testing::Swtpm::Start(dir.path() + "/tpm");
  ASSERT_NE(tpm, nullptr);
  const std::string key_dir = dir.path() + "/keys";
  StatusOr<tpm::TpmKeyInfo> v1 = tpm::InitKeyDir({tpm->Tcti(), key_dir}, tpm::kTpmFamilyLabel);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  const std::string socket = dir.path() + "/kms.sock";
  const int port = testing::FreeLoopbackPort();
  Subprocess plugin({PLUGIN_PATH, "--config", (kDeploy / "systemd" / "config-tpm.yaml").string(), "--listen",
                     "unix://" + socket, "--tpm-tcti", tpm->Tcti(), "--tpm-key-dir", key_dir, "--health-listen",
                     "127.0.0.1:" + std::to_string(port)},
                    dir.path() + "/plugin.log");
  auto status = [&] {
    KmsClients clients(socket);
    v2::StatusResponse response;
    if (!clients.v2->Status(CallContext(1s).get(), {}, &response).ok()) return v2::StatusResponse();
    return response;
  };
  ASSERT_TRUE(Eventually([&] { return status().healthz() == "ok"; }, 10s)) << plugin.Log();
  EXPECT_EQ(status().key_id(), v1->key_id);
  EXPECT_EQ(testing::HttpGet(port, "/readyz").code, 200);
  EXPECT_EQ(testing::HttpGet(port, "/healthz").code, 200);
  plugin.Signal(SIGTERM);
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
}

// Type=notify: the plugin tells systemd it is ready only once it serves, and that it stops on SIGTERM.
TEST_F(DeployPluginTest, PluginReportsReadinessToSystemd) {
  const std::string notify_path = token_->dir() + "/notify.sock";
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify_path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  auto receive = [&](std::chrono::milliseconds timeout) -> std::string {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return "";
    char buf[1024];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, n) : "";
  };

  setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
  Subprocess plugin({PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri()},
                    token_->dir() + "/plugin.log");
  unsetenv("NOTIFY_SOCKET");
  const std::string ready = receive(10s);
  EXPECT_NE(ready.find("READY=1"), std::string::npos) << "got: '" << ready << "'\n" << plugin.Log();
  // Ready means serving: Status answers at once, without waiting.
  EXPECT_EQ(Status().healthz(), "ok");
  plugin.Signal(SIGTERM);
  std::string stopping;
  for (int i = 0; i < 5 && stopping.find("STOPPING=1") == std::string::npos; ++i) stopping += receive(5s);
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << stopping;
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
  close(fd);
}

// Why the manifests mount the SoftHSM token directory read-write: with a read-only mount SoftHSM cannot
// take its file locks, and a key version created after the plugin started never shows up (rotation would
// silently not happen). Runs the plugin in a private mount namespace (needs CAP_SYS_ADMIN).
TEST_F(DeployPluginTest, SoftHsmNeedsAWritableTokenDirectory) {
  if (Shell("unshare -m true").code != 0) SKIP_OR_FAIL_IN_CI("cannot create a mount namespace here (unshare -m needs root)");
  const std::string tokens = token_->dir() + "/tokens";
  const std::string ro_socket = token_->dir() + "/ro/kms.sock";
  fs::create_directories(token_->dir() + "/ro");
  // Its metrics tell when it has handled the SIGHUP below (a key refresh counted, whatever its result).
  const int ro_port = testing::FreeLoopbackPort();
  const std::string script = "mount --bind " + ShellQuote(tokens) + " " + ShellQuote(tokens) +
                             " && mount -o remount,bind,ro " + ShellQuote(tokens) + " && exec " +
                             ShellQuote(PLUGIN_PATH) + " --listen " + ShellQuote("unix://" + ro_socket) +
                             " --pkcs11-uri " + ShellQuote(token_->Uri()) + " --key-refresh-interval 0" +
                             " --health-listen 127.0.0.1:" + std::to_string(ro_port);
  // The read-only plugin opens the token first and alone: a second SoftHSM opening the same files at that
  // moment is a different, racy experiment.
  Subprocess read_only({"/usr/bin/unshare", "-m", "/bin/sh", "-c", script}, token_->dir() + "/ro.log");
  const bool read_only_served = Eventually([&] { return Status(ro_socket).healthz() == "ok"; }, 10s);
  if (!read_only_served) {
    // Some hosts' SoftHSM does not load a token it cannot lock at all (seen in CI): the same lesson, sooner.
    EXPECT_NE(read_only.Log().find("cannot use PKCS#11 token"), std::string::npos) << read_only.Log();
  } else {
    ASSERT_EQ(Status(ro_socket).key_id().rfind("kek-v1-", 0), 0u);
  }
  Subprocess writable({PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri(),
                       "--key-refresh-interval", "0"},
                      token_->dir() + "/rw.log");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << writable.Log();

  auto ro_refreshes = [&] {
    const std::string page = testing::HttpGet(ro_port, "/metrics").body;
    return testing::MetricValue(page, "trousseau_hsm_key_refresh_total{result=\"ok\"}") +
           testing::MetricValue(page, "trousseau_hsm_key_refresh_total{result=\"failed\"}");
  };
  const double ro_refreshes_before = read_only_served ? ro_refreshes() : 0;
  ASSERT_TRUE(token_->GenerateKek(2).ok());  // as `trousseau-hsm-init key rotate` on the host
  read_only.Signal(SIGHUP);
  writable.Signal(SIGHUP);
  EXPECT_TRUE(Eventually([&] { return Status().key_id().rfind("kek-v2-", 0) == 0; }, 5s)) << writable.Log();
  if (read_only_served) {
    // The read-only plugin has finished its refresh (after the settle time a new version would take).
    ASSERT_GE(ro_refreshes_before, 1) << "no key refresh count on the read-only plugin's /metrics";
    ASSERT_TRUE(Eventually([&] { return ro_refreshes() > ro_refreshes_before; }, 10s)) << read_only.Log();
  }
  const std::string read_only_key = Status(ro_socket).key_id();
  if (read_only_served) {
    EXPECT_EQ(read_only_key.rfind("kek-v1-", 0), 0u)
        << "SoftHSM now sees new keys through a read-only token directory: the manifests could mount it "
           "read-only (or the plugin stopped answering)\n"
        << read_only.Log();
  } else {
    EXPECT_EQ(read_only_key, "") << read_only.Log();
  }
}

// ---------------------------------------------------------------------------------------------------
// systemd unit.

std::multimap<std::string, std::string> UnitSettings(const std::string& text) {
  std::multimap<std::string, std::string> settings;
  std::string section;
  for (const std::string& raw : Lines(std::regex_replace(text, std::regex("\\\\\n"), " "))) {
    const std::string line = Trim(raw);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const size_t eq = line.find('=');
    if (eq != std::string::npos) settings.emplace(section + "." + line.substr(0, eq), line.substr(eq + 1));
  }
  return settings;
}

TEST(DeployTest, SystemdUnitIsHardenedAndMatchesThePlugin) {
  const fs::path unit_path = kDeploy / "systemd" / "trousseau-hsm.service";
  const auto s = UnitSettings(Slurp(unit_path));
  auto get = [&](const std::string& key) {
    auto range = s.equal_range("Service." + key);
    return range.first == range.second ? std::string("<unset>") : std::prev(range.second)->second;
  };
  EXPECT_EQ(get("Type"), "notify");
  EXPECT_EQ(get("ExecReload"), "/bin/kill -HUP $MAINPID");
  EXPECT_EQ(get("Restart"), "on-failure");
  EXPECT_EQ(get("RestartPreventExitStatus"), "2") << "exit 2 = configuration error: restarting cannot help";
  EXPECT_NE(get("User"), "<unset>");
  EXPECT_NE(get("User"), "root");
  EXPECT_EQ(get("NoNewPrivileges"), "yes");
  EXPECT_EQ(get("ProtectSystem"), "strict");
  EXPECT_EQ(get("ProtectHome"), "yes");
  EXPECT_EQ(get("PrivateTmp"), "yes");
  EXPECT_EQ(get("PrivateDevices"), "yes");
  EXPECT_EQ(get("CapabilityBoundingSet"), "");
  EXPECT_EQ(get("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
  EXPECT_EQ(get("RuntimeDirectory"), "trousseau-hsm");
  EXPECT_EQ(get("RuntimeDirectoryMode"), "0750");
  EXPECT_EQ(get("RuntimeDirectoryPreserve"), "yes") << "kube-apiserver's mount must survive a plugin restart";
  EXPECT_EQ(get("LimitCORE"), "0");

  // ExecStart: the socket lies in RuntimeDirectory; the config file is the one deploy/systemd ships.
  const auto commands = ShellCommands(get("ExecStart"));
  ASSERT_EQ(commands.size(), 1u);
  std::map<std::string, std::string> args;
  for (size_t i = 1; i + 1 < commands[0].size(); ++i) {
    if (commands[0][i].rfind("--", 0) == 0) args[commands[0][i]] = commands[0][i + 1];
  }
  EXPECT_EQ(args["--listen"], "unix:///run/trousseau-hsm/kms.sock");
  EXPECT_EQ(args["--config"], "/etc/trousseau-hsm/config.yaml");
  const YAML::Node config = LoadOne(kDeploy / "systemd" / "config.yaml");
  EXPECT_FALSE(config["listen"]) << "the unit's --listen would silently win over it";

  // SoftHSM writes its lock files: its token directory must be writable under ProtectSystem=strict.
  std::string softhsm_conf;
  for (auto [it, end] = s.equal_range("Service.Environment"); it != end; ++it) {
    if (it->second.rfind("SOFTHSM2_CONF=", 0) == 0) softhsm_conf = it->second.substr(14);
  }
  EXPECT_EQ(softhsm_conf, "/etc/softhsm/softhsm2.conf");
  EXPECT_NE(get("ReadWritePaths").find("/var/lib/softhsm/tokens"), std::string::npos);
  // The PIN file named in the URI is readable under ProtectSystem=strict (read-only /etc) and not in a
  // hidden home directory.
  const std::string uri = config["pkcs11-uri"].as<std::string>();
  EXPECT_EQ(UriAttribute(uri, "pin-source"), "file:/etc/trousseau-hsm/pin");

  // systemd's own checks, where systemd-analyze exists (no running systemd needed).
  if (!HasCommand("systemd-analyze")) SKIP_OR_FAIL_IN_CI("no systemd-analyze (Debian package systemd)");
  char dir_template[] = "/tmp/deploy-unit-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::string unit = Slurp(unit_path);
  unit = std::regex_replace(unit, std::regex("/usr/local/bin/trousseau-hsm"), PLUGIN_PATH);
  std::ofstream(dir + "/trousseau-hsm.service") << unit;
  const RunResult verify = Shell("cd " + ShellQuote(dir) + " && systemd-analyze verify ./trousseau-hsm.service", true);
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_EQ(verify.out.find("Unknown"), std::string::npos) << verify.out;
  // Exposure score (0-10, lower is better): the unit scores 1.5; fail above 2.5.
  const RunResult security = Shell("cd " + ShellQuote(dir) +
                                     " && systemd-analyze security --offline=yes --threshold=25 ./trousseau-hsm.service",
                                 true);
  EXPECT_EQ(security.code, 0) << security.out.substr(security.out.size() > 400 ? security.out.size() - 400 : 0);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------------
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
  return policy.out.find("Candidate:") != std::string::npos && policy.out.find("Candidate: (none)") == std::string::npos;
}

// The TPM drop-in: the base unit's hardening stays, only the device, the group and the config change; and
// systemd itself reads the pair without complaint.
TEST(DeployTest, SystemdTpmDropInOpensOnlyTheTpmAndKeepsTheHardening) {
  const std::string unit = Slurp(kDeploy / "systemd" / "trousseau-hsm.service");
  const std::string drop_in = Slurp(kDeploy / "systemd" / "tpm.conf");
  const auto s = UnitSettings(unit + "\n" + drop_in);  // systemd applies drop-ins after the unit
  auto get = [&](const std::string& key) {
    auto range = s.equal_range("Service." + key);
    return range.first == range.second ? std::string("<unset>") : std::prev(range.second)->second;
  };
  EXPECT_EQ(get("PrivateDevices"), "no");
  EXPECT_EQ(get("DevicePolicy"), "closed");
  EXPECT_EQ(get("DeviceAllow"), "/dev/tpmrm0 rw");
  EXPECT_EQ(get("SupplementaryGroups"), "tss");
  EXPECT_EQ(get("ReadWritePaths"), "") << "no SoftHSM token directory on a TPM node";
  for (const char* kept : {"NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "LimitCORE", "Type"}) {
    EXPECT_EQ(UnitSettings(drop_in).count(std::string("Service.") + kept), 0u) << kept << " must stay the unit's";
  }
  const auto commands = ShellCommands(get("ExecStart"));
  ASSERT_EQ(commands.size(), 1u);
  const std::vector<std::string>& argv = commands[0];
  const auto config = std::find(argv.begin(), argv.end(), "--config");
  ASSERT_NE(config, argv.end());
  EXPECT_EQ(*std::next(config), "/etc/trousseau-hsm/config-tpm.yaml");
  const YAML::Node keys = LoadOne(kDeploy / "systemd" / "config-tpm.yaml");
  for (const auto& e : keys) {
    EXPECT_TRUE(PluginCli().flags.contains("--" + e.first.as<std::string>())) << e.first.as<std::string>();
  }
  EXPECT_TRUE(keys["tpm-key-dir"]);
  EXPECT_FALSE(keys["pkcs11-uri"]) << "one backend per file";

  if (!HasCommand("systemd-analyze")) SKIP_OR_FAIL_IN_CI("no systemd-analyze (Debian package systemd)");
  char dir_template[] = "/tmp/deploy-tpm-unit-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  fs::create_directories(dir + "/trousseau-hsm.service.d");
  std::ofstream(dir + "/trousseau-hsm.service") << std::regex_replace(unit, std::regex("/usr/local/bin/trousseau-hsm"),
                                                                      PLUGIN_PATH);
  std::ofstream(dir + "/trousseau-hsm.service.d/tpm.conf")
      << std::regex_replace(drop_in, std::regex("/usr/local/bin/trousseau-hsm"), PLUGIN_PATH);
  const std::string env = "cd " + ShellQuote(dir) + " && SYSTEMD_UNIT_PATH=" + ShellQuote(dir) + ": ";
  const RunResult verify = Shell(env + "systemd-analyze verify trousseau-hsm.service", true);
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_EQ(verify.out.find("Unknown"), std::string::npos) << verify.out;
  const RunResult security =
      Shell(env + "systemd-analyze security --offline=yes --threshold=25 trousseau-hsm.service", true);
  EXPECT_EQ(security.code, 0) << security.out.substr(security.out.size() > 400 ? security.out.size() - 400 : 0);
  EXPECT_NE(security.out.find("/dev/tpmrm0:rw"), std::string::npos) << "the drop-in must have been read";
  fs::remove_all(dir);
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
  EXPECT_EQ(entry[1].str(), PluginContainer(RenderedDaemonSet()["spec"]["template"]["spec"])["command"][0].as<std::string>());
  // All three binaries land in the entrypoint's directory.
  EXPECT_NE(runtime.find("COPY --from=build /out/ " + fs::path(entry[1].str()).parent_path().string() + "/"),
            std::string::npos);
}

// The runtime image's package list against this build: every name exists in Debian (installed here, or
// in the local apt lists: no network), and every shared library the three binaries load comes from one of
// those packages or their dependencies.
TEST(DeployTest, DockerfileRuntimePackagesCoverWhatTheBinariesLink) {
  if (!HasCommand("dpkg-query") || !HasCommand("apt-cache")) SKIP_OR_FAIL_IN_CI("not a Debian system (no dpkg-query, apt-cache)");
  const Dockerfile d = ParseDockerfile();
  ASSERT_EQ(d.stages.size(), 2u);
  const auto installs = AptInstalls(d.stages[1]);
  ASSERT_GE(installs.size(), 1u);
  const std::vector<std::string>& runtime = installs[0];
  ASSERT_GE(runtime.size(), 5u);
  for (const auto& list : installs) {
    for (const std::string& package : list) EXPECT_TRUE(KnownToApt(package)) << package << " is not a Debian package here";
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
      "--no-enhances" + list);
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
      EXPECT_TRUE(closure.contains(package))
          << lib << " (needed by " << fs::path(binary).filename() << ") comes from " << package
          << ", which the runtime stage does not install";
    }
  }
  EXPECT_GE(needed.size(), 10u);
}

}  // namespace
}  // namespace trousseau
