// Shared helpers of the deploy_test sections (see deploy_support.h).
#include "tests/deploy/deploy_support.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <regex>
#include <sstream>

#include "tests/deploy/helm_render.h"

namespace trousseau::deploy {

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

// Runs `command` with /bin/sh; stdout (and stderr if asked) captured.
RunResult Shell(const std::string& command, bool with_stderr) {
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

namespace {
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

}  // namespace

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
    } else if (c == '|' || c == ';' || c == '(' || c == ')' || c == '`' ||
               (c == '&' && i + 1 < line.size() && line[i + 1] == '&')) {
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

// Programs that take the binaries' names as plain arguments (a release, unit, user or file name), not as a
// command to run: no invocation is attributed in their command lines.
const std::set<std::string> kNamesAsArguments = {"helm",    "systemctl", "journalctl", "useradd", "groupadd",
                                                 "chown",   "install",   "kill",       "pidof",   "docker",
                                                 "kubectl", "cp",        "rsync"};

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
      if (!level->flags.contains(flag))
        problems.push_back(where + ": `" + command + " ... " + flag + "` is not accepted");
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

YAML::Node RenderedDaemonSet(const YAML::Node& overrides) {
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

namespace {
bool Under(const std::string& path, const std::string& dir) {
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return path == d || path.rfind(d + "/", 0) == 0;
}

}  // namespace

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

// ---------------------------------------------------------------------------------------------------
// systemd unit files.

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

std::string ServiceSetting(const std::multimap<std::string, std::string>& settings, const std::string& key) {
  auto range = settings.equal_range("Service." + key);
  return range.first == range.second ? std::string("<unset>") : std::prev(range.second)->second;
}

}  // namespace trousseau::deploy
