// The plugin's settings: command-line flags, each also settable by an environment variable
// TROUSSEAU_HSM_<FLAG> and by a key of the optional --config YAML file. Precedence: flag, then
// environment, then config file, then the built-in default. There is no setting for a PIN.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "core/defaults.h"

namespace trousseau::app {

struct PluginOptions {
  std::string listen = defaults::kListenEndpoint;
  // One device: a PKCS#11 key family (one pkcs11_uris entry) or a TPM key directory (tpm_key_dir).
  // With a recipient set (multi-node, docs/ha.md): this node's recipient devices instead, any number of
  // PKCS#11 tokens (each URI with x-recipient=LABEL) and the TPM's recipient key (tpm_recipient_dir).
  std::vector<std::string> pkcs11_uris;
  // --hsm-sessions: "auto" (the default) starts a pool of hsm_sessions that grows with a slow device's
  // load (hsm_sessions_grow); a number N pins the pool at N.
  size_t hsm_sessions = defaults::kHsmSessions;
  bool hsm_sessions_grow = true;
  bool no_session_key_copies = false;
  std::string tpm_tcti = defaults::kTpmTcti;
  std::string tpm_key_dir;
  std::string tpm_recipient_dir;
  // The signed recipient set this node loads; empty: single-device mode.
  std::string recipient_set;
  std::vector<std::string> recipient_admin_keys;  // Ed25519 public keys (PEM files) that may sign sets
  size_t recipient_admin_threshold = 1;           // distinct signatures a set needs
  std::string recipient_state_dir = defaults::kRecipientStateDir;
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
  // Empty: /metrics is served on health_listen. Else /metrics is served here only (Prometheus scrapes the
  // node's address) while the probes stay on health_listen (loopback).
  std::string metrics_listen;
  std::string log_level = "info";
  std::string log_format = "text";
};

// Parses argv (+ environment + config file). On --help/--version or an error, returns the exit
// code to leave with (0 or 2) and has printed what to print.
std::optional<int> ParseOptions(int argc, char** argv, PluginOptions& options);

}  // namespace trousseau::app
