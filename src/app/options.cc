#include "app/options.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>

#include <CLI/CLI.hpp>

#include "core/strings.h"

#ifndef TROUSSEAU_VERSION
#define TROUSSEAU_VERSION "dev"
#endif

namespace trousseau::app {
namespace {

constexpr char kEnvPrefix[] = "TROUSSEAU_HSM_";

// "pkcs11-uri" -> "TROUSSEAU_HSM_PKCS11_URI"
std::string EnvName(const std::string& flag) {
  std::string name = kEnvPrefix;
  for (char c : flag) name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

// The --config path may only come from argv or TROUSSEAU_HSM_CONFIG: it has to be known before
// the other settings are read.
std::string FindConfigPath(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--config" && i + 1 < argc) return argv[i + 1];
    if (arg.rfind("--config=", 0) == 0) return arg.substr(9);
  }
  const char* env = std::getenv("TROUSSEAU_HSM_CONFIG");
  return env != nullptr ? env : "";
}

class DurationValidator : public CLI::Validator {
 public:
  DurationValidator() : CLI::Validator("DURATION") {
    func_ = [](std::string& value) -> std::string {
      return ParseDuration(value) ? "" : "must be a duration such as 500ms, 5s, 1m or 0";
    };
  }
};

// Settings CLI11 reads as text and this file converts after parsing (durations, the octal mode).
// They start as the built-in defaults, written as an operator would (shown by --help).
struct TextSettings {
  std::string config_path;
  std::string hsm_sessions = "auto";
  std::string hsm_timeout, tpm_timeout, health_cache, key_refresh_interval, key_activation_delay, shutdown_grace,
      socket_mode;
};

// 60000 ms -> "60s", 1500 ms -> "1500ms".
std::string DurationText(std::chrono::milliseconds duration) {
  if (duration.count() % 1000 == 0) return StrCat(duration.count() / 1000, "s");
  return StrCat(duration.count(), "ms");
}

// 0600 -> "0600".
std::string OctalText(unsigned mode) {
  char text[16];
  std::snprintf(text, sizeof text, "%04o", mode);
  return text;
}

TextSettings DefaultTexts(const PluginOptions& options) {
  return TextSettings{.config_path = "",
                      .hsm_timeout = DurationText(options.hsm_timeout),
                      .tpm_timeout = DurationText(options.tpm_timeout),
                      .health_cache = DurationText(options.health_cache),
                      .key_refresh_interval = DurationText(options.key_refresh_interval),
                      .key_activation_delay = DurationText(options.key_activation_delay),
                      .shutdown_grace = DurationText(options.shutdown_grace),
                      .socket_mode = OctalText(options.socket_mode)};
}

// The key family and the device: PKCS#11 or TPM 2.0.
void AddDeviceOptions(CLI::App& app, PluginOptions& options, TextSettings& text, const CLI::Validator& duration) {
  app.add_option("--pkcs11-uri", options.pkcs11_uris,
                 "RFC 7512 URI of the key family: pkcs11:token=LABEL;object=KEY?module-path=/path/module.so"
                 "&pin-source=file:/path. With --recipient-set: a token holding a recipient key "
                 "(x-recipient=LABEL); repeat it (or list several in --config) for several HSMs")
      ->delimiter(' ');  // a URI has no unencoded space: a --config list arrives joined by spaces
  app.add_option("--hsm-sessions", text.hsm_sessions,
                 "HSM sessions in the pool (concurrent device calls): auto starts with " +
                     std::to_string(defaults::kHsmSessions) +
                     " and grows while calls queue on a slow device, up to the token's session limit (at most " +
                     std::to_string(defaults::kHsmSessionsMax) + "); a number 1-1024 pins it")
      ->check(CLI::IsMember({"auto"}) | CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--hsm-timeout", text.hsm_timeout,
                 "Deadline of each HSM call (or the request's own deadline, when sooner); a device that does not "
                 "answer in time costs UNAVAILABLE and opens the circuit breaker. Keep it under kube-apiserver's "
                 "KMS timeout (3s)")
      ->check(duration)
      ->capture_default_str();
  app.add_flag("--no-session-key-copies", options.no_session_key_copies,
               "Use the token key objects directly instead of in-session copies");
  app.add_option(
      "--tpm-key-dir", options.tpm_key_dir,
      "TPM 2.0 backend instead of PKCS#11: directory of the key versions made by `trousseau-hsm-init tpm init`");
  app.add_option("--tpm-recipient-dir", options.tpm_recipient_dir,
                 "With --recipient-set: directory of this node's TPM recipient key (trousseau-hsm-init tpm recipient "
                 "create)");
  app.add_option("--tpm-tcti", options.tpm_tcti,
                 "TCTI of the TPM: device:/dev/tpmrm0, tabrmd, swtpm:path=/run/swtpm/sock, ...")
      ->capture_default_str();
  app.add_option("--tpm-timeout", text.tpm_timeout,
                 "Deadline of each TPM operation, time queued for the TPM included (or the request's own deadline, "
                 "when sooner); keep it under kube-apiserver's KMS timeout (3s)")
      ->check(duration)
      ->capture_default_str();
}

// Multi-node mode: every Secret wrapped to each member of a signed recipient set (docs/ha.md).
void AddRecipientOptions(CLI::App& app, PluginOptions& options) {
  app.add_option("--recipient-set", options.recipient_set,
                 "Signed recipient set (trousseau-hsm-init recipients ...): wrap every seed to each member's device, "
                 "so every control-plane node decrypts what any node wrote. Re-read on SIGHUP and every "
                 "--key-refresh-interval");
  app.add_option("--recipient-admin-key", options.recipient_admin_keys,
                 "Ed25519 public key (PEM file) of an administrator who signs recipient sets; repeat for several")
      ->delimiter(' ');
  app.add_option("--recipient-admin-threshold", options.recipient_admin_threshold,
                 "How many distinct administrator signatures a recipient set needs")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--recipient-state-dir", options.recipient_state_dir,
                 "Where every accepted recipient set is kept (mode 0700), so older epochs still decrypt and a set "
                 "never goes back to a lower epoch")
      ->capture_default_str();
}

// Health, key refresh, the socket's permissions, shutdown and the HTTP endpoint.
void AddServingOptions(CLI::App& app, PluginOptions& options, TextSettings& text, const CLI::Validator& duration) {
  app.add_option("--health-cache", text.health_cache,
                 "How long a device round trip counts as health; when idle, the plugin probes the device this often")
      ->check(duration)
      ->capture_default_str();
  app.add_option("--key-refresh-interval", text.key_refresh_interval,
                 "Re-read the key family this often (also on SIGHUP); 0 disables")
      ->check(duration)
      ->capture_default_str();
  app.add_option("--key-activation-delay", text.key_activation_delay,
                 "A new key version decrypts at once but encrypts (and becomes Status' key_id) only after this "
                 "plugin has seen it this long. Several control-plane nodes: at least --key-refresh-interval + 2s, "
                 "so every node holds a version before any node encrypts under it; one node: 0")
      ->check(duration)
      ->capture_default_str();
  app.add_option("--socket-mode", text.socket_mode, "Permissions of the socket (owner/group bits only)")
      ->capture_default_str();
  app.add_option("--socket-owner", options.socket_owner, "User (name or uid) to own the socket");
  app.add_option("--socket-group", options.socket_group, "Group (name or gid) to own the socket");
  app.add_option("--shutdown-grace", text.shutdown_grace,
                 "How long in-flight calls may finish on SIGTERM; calls stuck in a hung device are abandoned then")
      ->check(duration)
      ->capture_default_str();
  app.add_option("--health-listen", options.health_listen,
                 "HOST:PORT for /healthz, /livez, /readyz and, without --metrics-listen, /metrics (e.g. "
                 "127.0.0.1:8789); off if empty");
  app.add_option("--metrics-listen", options.metrics_listen,
                 "HOST:PORT that serves /metrics alone (e.g. the node's IP, for Prometheus), while the probes stay on "
                 "--health-listen; empty: /metrics is on --health-listen");
}

void AddLoggingOptions(CLI::App& app, PluginOptions& options) {
  app.add_option("--log-level", options.log_level, "trace, debug, info, warn, error")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
      ->capture_default_str();
  app.add_option("--log-format", options.log_format, "text, or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
}

// Every setting but --help, --version and --config by name, each also read from TROUSSEAU_HSM_<FLAG>.
std::map<std::string, CLI::Option*> BindEnvironment(CLI::App& app) {
  std::map<std::string, CLI::Option*> by_name;
  for (CLI::Option* option : app.get_options()) {
    const std::string name = option->get_single_name();
    if (name == "help" || name == "version" || name == "config") continue;
    option->envname(EnvName(name));
    by_name[name] = option;
  }
  return by_name;
}

// The --config file's values become the settings' defaults, so the environment and the command line
// still override them. The exit code on an unreadable file or an unknown setting.
std::optional<int> ApplyConfigFile(const std::string& config_file, const std::map<std::string, CLI::Option*>& by_name) {
  try {
    const YAML::Node root = YAML::LoadFile(config_file);
    if (!root.IsMap()) throw YAML::Exception(YAML::Mark::null_mark(), "the file must be a mapping of settings");
    for (const auto& entry : root) {
      const std::string key = entry.first.as<std::string>();
      auto it = by_name.find(key);
      if (it == by_name.end()) {
        std::cerr << "trousseau-hsm: " << config_file << ": unknown setting '" << key << "'\n";
        return 2;
      }
      // CLI11 converts a file value as it would the flag's own value (a flag takes true/false,
      // yes/no, on/off, 1/0). A list (several --pkcs11-uri) is joined by spaces, the delimiter of
      // the repeatable settings.
      std::string value;
      const auto scalar = [](const YAML::Node& node) { return node.IsScalar(); };
      const bool well_typed =
          entry.second.IsScalar() ||
          (entry.second.IsSequence() && std::all_of(entry.second.begin(), entry.second.end(), scalar));
      if (!well_typed) {
        std::cerr << "trousseau-hsm: " << config_file << ": setting '" << key
                  << "' must be a value (text, a number or true/false)"
                  << (it->second->get_items_expected_max() > 1 ? " or a list of values" : "") << "\n";
        return 2;
      }
      if (entry.second.IsSequence()) {
        if (it->second->get_items_expected_max() <= 1) {
          std::cerr << "trousseau-hsm: " << config_file << ": setting '" << key << "' takes one value, not a list\n";
          return 2;
        }
        for (const auto& item : entry.second) value += (value.empty() ? "" : " ") + item.as<std::string>();
      } else {
        value = entry.second.as<std::string>();
      }
      it->second->default_str(value);
      it->second->default_val(value);
    }
  } catch (const std::exception& e) {
    std::cerr << "trousseau-hsm: cannot read --config " << config_file << ": " << e.what() << "\n";
    return 2;
  }
  return std::nullopt;
}

// What operators of other KMS plugins type, and what it is here.
const std::map<std::string, std::string, std::less<>>& PeerFlags() {
  static const std::map<std::string, std::string, std::less<>> kPeers = {
      {"--listen-addr", "ours is --listen unix:///path/kms.sock"},
      {"--path-to-unix-socket", "ours is --listen unix:///path/kms.sock"},
      {"--unix-socket", "ours is --listen unix:///path/kms.sock"},
      {"--healthz-port", "ours is --health-listen HOST:PORT (e.g. 127.0.0.1:PORT)"},
      {"--healthz-path", "the paths are fixed: /healthz, /livez and /readyz on --health-listen"},
      {"--metrics-addr", "ours is --metrics-listen HOST:PORT (/metrics; without it, /metrics is on --health-listen)"},
      {"--metrics-port", "ours is --metrics-listen HOST:PORT (/metrics; without it, /metrics is on --health-listen)"},
      {"--pin", "a PIN never comes from a flag: use pin-source=file:/path in --pkcs11-uri, or TROUSSEAU_HSM_PIN"},
      {"--pin-file", "give it in the URI: --pkcs11-uri 'pkcs11:...?pin-source=file:/path'"},
      {"--key", "the key family is the object= of --pkcs11-uri (or --tpm-key-dir)"},
  };
  return kPeers;
}

// Every argument CLI11 did not take, said without its value: a flag by name (with ours, or the nearest
// known one), anything else only counted, since a stray word may be a secret.
void ExplainExtras(const CLI::App& app, int argc, char** argv) {
  std::vector<std::string> known;
  for (const CLI::Option* option : app.get_options()) {
    for (const std::string& name : option->get_lnames()) known.push_back("--" + name);
  }
  int stray = 0;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (!arg.starts_with("--") || arg == "--") {
      // A value of a known option that takes one was consumed by CLI11; a lone word is a stray.
      const bool value_of_previous = i > 1 && std::string_view(argv[i - 1]).starts_with("--") &&
                                     std::string_view(argv[i - 1]).find('=') == std::string_view::npos;
      if (!value_of_previous) ++stray;
      continue;
    }
    const std::string name(arg.substr(0, arg.find('=')));
    if (app.get_option_no_throw(name) != nullptr) continue;
    const bool printable = name.size() <= 40 && std::all_of(name.begin(), name.end(), [](char c) {
                             return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
                           });
    if (!printable) {
      ++stray;
      continue;
    }
    std::string hint;
    if (auto peer = PeerFlags().find(name); peer != PeerFlags().end()) {
      hint = peer->second;
    } else if (std::string nearest = NearestName(name, known); !nearest.empty()) {
      hint = StrCat("did you mean ", nearest, "?");
    } else {
      // Like a mistyped command: a name unlike any flag may be a secret pasted in the wrong place.
      std::cerr << "trousseau-hsm: an unknown flag (not shown; its value neither); run with --help for the flags\n";
      continue;
    }
    std::cerr << "trousseau-hsm: unknown flag " << name << " (its value not shown): " << hint << "\n";
  }
  if (stray > 0) {
    std::cerr << "trousseau-hsm: " << stray << " unexpected argument(s) (not shown); run with --help for the usage\n";
  }
}

std::optional<int> ParseCommandLine(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ExtrasError&) {
    ExplainExtras(app, argc, argv);
    return 2;
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error is a configuration error (exit 2), which
    // the systemd unit does not restart in a loop.
    return app.exit(e) == 0 ? 0 : 2;
  }
  return std::nullopt;
}

// True when listeners on HOST:PORT `a` and `b` would take the same port on a shared address: the
// same text, or one port with one of the hosts a wildcard (0.0.0.0, ::, empty).
bool SameListener(const std::string& a, const std::string& b) {
  const auto split = [](const std::string& listen) {
    const size_t colon = listen.rfind(':');
    std::string host = colon == std::string::npos ? listen : listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    return std::make_pair(host, colon == std::string::npos ? std::string() : listen.substr(colon + 1));
  };
  const auto [host_a, port_a] = split(a);
  const auto [host_b, port_b] = split(b);
  const auto wildcard = [](const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::"; };
  return port_a == port_b && (host_a == host_b || wildcard(host_a) || wildcard(host_b));
}

// Checks what CLI11 cannot check alone and converts the text settings into `options`.
std::optional<int> CheckAndConvert(const TextSettings& text, PluginOptions& options) {
  if (!options.metrics_listen.empty() && !options.health_listen.empty() &&
      SameListener(options.metrics_listen, options.health_listen)) {
    std::cerr << "trousseau-hsm: --metrics-listen " << options.metrics_listen << " and --health-listen "
              << options.health_listen
              << " are the same port: leave --metrics-listen empty to serve /metrics on --health-listen, or give "
                 "it a port of its own\n";
    return 2;
  }
  if (!options.recipient_set.empty()) {
    if (options.pkcs11_uris.empty() && options.tpm_recipient_dir.empty()) {
      std::cerr << "trousseau-hsm: --recipient-set needs this node's recipient device(s): --tpm-recipient-dir "
                   "and/or --pkcs11-uri with x-recipient=LABEL\n";
      return 2;
    }
    if (options.recipient_admin_keys.empty()) {
      std::cerr << "trousseau-hsm: --recipient-set needs --recipient-admin-key: a set is only trusted when "
                   "administrators signed it\n";
      return 2;
    }
    if (!options.tpm_key_dir.empty()) {
      std::cerr << "trousseau-hsm: --tpm-key-dir is the single-device mode; with --recipient-set give "
                   "--tpm-recipient-dir\n";
      return 2;
    }
  } else if (options.pkcs11_uris.size() + (options.tpm_key_dir.empty() ? 0 : 1) != 1) {
    std::cerr << "trousseau-hsm: give exactly one backend: --pkcs11-uri (PKCS#11 HSM) or --tpm-key-dir (TPM 2.0), "
                 "as a flag, TROUSSEAU_HSM_PKCS11_URI / TROUSSEAU_HSM_TPM_KEY_DIR or in --config; several devices "
                 "need --recipient-set (docs/ha.md)\n"
                 "Run with --help for more information.\n";
    return 2;
  }
  // The validator accepted each of them already.
  options.health_cache = *ParseDuration(text.health_cache);
  options.key_refresh_interval = *ParseDuration(text.key_refresh_interval);
  options.key_activation_delay = *ParseDuration(text.key_activation_delay);
  options.shutdown_grace = *ParseDuration(text.shutdown_grace);
  options.tpm_timeout = *ParseDuration(text.tpm_timeout);
  options.hsm_timeout = *ParseDuration(text.hsm_timeout);
  options.hsm_sessions_grow = text.hsm_sessions == "auto";
  if (!options.hsm_sessions_grow) options.hsm_sessions = std::stoul(text.hsm_sessions);  // 1-1024: checked
  if (options.tpm_timeout.count() <= 0 || options.hsm_timeout.count() <= 0) {
    std::cerr << "trousseau-hsm: --" << (options.tpm_timeout.count() <= 0 ? "tpm" : "hsm")
              << "-timeout must be positive\n";
    return 2;
  }
  std::optional<unsigned> mode = ParseUnsigned<unsigned>(text.socket_mode, 8);
  if (!mode) {
    std::cerr << "trousseau-hsm: --socket-mode must be octal, e.g. 0600\n";
    return 2;
  }
  options.socket_mode = *mode;
  return std::nullopt;
}

}  // namespace

std::optional<int> ParseOptions(int argc, char** argv, PluginOptions& options) {
  CLI::App app{
      "trousseau-hsm: Kubernetes KMS v2/v1beta1 plugin. Data keys are wrapped inside a PKCS#11 HSM (AES-256-GCM, "
      "--pkcs11-uri) or the node's TPM 2.0 (--tpm-key-dir); the key-encryption key never leaves the device.\n"
      "Every flag can also be set as TROUSSEAU_HSM_<FLAG> (e.g. TROUSSEAU_HSM_PKCS11_URI) or as a key of the "
      "--config YAML file (e.g. pkcs11-uri: ...); flags win over the environment, which wins over the file.\n"
      "The token PIN comes from the URI's pin-source=file:/path (mode 0600) or the TROUSSEAU_HSM_PIN environment "
      "variable, never from a flag.",
      "trousseau-hsm"};
  app.set_version_flag("--version", std::string("trousseau-hsm ") + TROUSSEAU_VERSION);
  TextSettings text = DefaultTexts(options);
  const DurationValidator duration;

  app.add_option("--config", text.config_path,
                 "YAML file with settings (keys are flag names without the leading --, e.g. pkcs11-uri)");
  app.add_option("--listen", options.listen, "Unix socket to serve on (unix:///path)")->capture_default_str();
  AddDeviceOptions(app, options, text, duration);
  AddRecipientOptions(app, options);
  AddServingOptions(app, options, text, duration);
  AddLoggingOptions(app, options);
  const std::map<std::string, CLI::Option*> by_name = BindEnvironment(app);

  if (const std::string config_file = FindConfigPath(argc, argv); !config_file.empty()) {
    if (std::optional<int> exit_code = ApplyConfigFile(config_file, by_name)) return exit_code;
  }
  if (std::optional<int> exit_code = ParseCommandLine(app, argc, argv)) return exit_code;
  return CheckAndConvert(text, options);
}

}  // namespace trousseau::app
