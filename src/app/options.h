// The plugin's settings: command-line flags, each also settable by an environment variable
// TROUSSEAU_HSM_<FLAG> and by a key of the optional --config YAML file. Precedence: flag, then
// environment, then config file, then the built-in default. There is no setting for a PIN.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>

#include "core/defaults.h"

namespace trousseau::app {

struct PluginOptions {
  std::string listen = defaults::kListenEndpoint;
  // Exactly one backend: a PKCS#11 key family (pkcs11_uri) or a TPM key directory (tpm_key_dir).
  std::string pkcs11_uri;
  size_t hsm_sessions = defaults::kHsmSessions;
  bool no_session_key_copies = false;
  std::string tpm_tcti = defaults::kTpmTcti;
  std::string tpm_key_dir;
  std::chrono::milliseconds tpm_timeout = defaults::kDeviceTimeout;
  std::chrono::milliseconds hsm_timeout = defaults::kDeviceTimeout;
  std::chrono::milliseconds health_cache = defaults::kHealthCache;
  std::chrono::milliseconds key_refresh_interval = defaults::kKeyRefreshInterval;
  // A new key version encrypts only after this plugin has known it this long (see docs/rotation.md).
  std::chrono::milliseconds key_activation_delay{0};
  unsigned socket_mode = defaults::kSocketMode;
  std::string socket_owner;
  std::string socket_group;
  std::chrono::milliseconds shutdown_grace = defaults::kShutdownGrace;
  std::string health_listen;  // empty: no HTTP endpoint
  std::string log_level = "info";
  std::string log_format = "text";
};

// Parses argv (+ environment + config file). On --help/--version or an error, returns the exit
// code to leave with (0 or 2) and has printed what to print.
std::optional<int> ParseOptions(int argc, char** argv, PluginOptions& options);

}  // namespace trousseau::app
