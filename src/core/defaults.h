// Every built-in default the plugin and its tools share, defined once. The plugin's flags
// (app/options), the engine, the server, trousseauctl and trousseau-hsm-init take them from here, so
// a changed default cannot leave one of them behind. Documented for operators in README.md.
#pragma once

#include <chrono>
#include <cstddef>

namespace trousseau::defaults {

// The KMS socket kube-apiserver's EncryptionConfiguration names (endpoint: unix:///...).
inline constexpr char kSocketPath[] = "/run/trousseau-hsm/kms.sock";
inline constexpr char kListenEndpoint[] = "unix:///run/trousseau-hsm/kms.sock";
// Where a plugin keeps every recipient set it accepted (multi-node mode, docs/ha.md).
inline constexpr char kRecipientStateDir[] = "/var/lib/trousseau-hsm/recipient-sets";
// Owner read/write only: the only client is kube-apiserver, as root or the socket's owner.
inline constexpr unsigned kSocketMode = 0600;

// The kernel's TPM resource manager: several processes (plugin, init tool) may share the TPM.
inline constexpr char kTpmTcti[] = "device:/dev/tpmrm0";

// PKCS#11 sessions in the pool: concurrent device calls. --hsm-sessions auto (the default) starts with
// kHsmSessions and grows while calls queue for a session on a slow device, up to the token's
// ulMaxSessionCount (less headroom) and kHsmSessionsMax (hsm/pkcs11_backend.cc says why these numbers).
inline constexpr std::size_t kHsmSessions = 16;
inline constexpr std::size_t kHsmSessionsMax = 256;

// kube-apiserver's own timeout for one KMS call (its EncryptionConfiguration default).
inline constexpr std::chrono::milliseconds kKmsCallTimeout{3000};
// Deadline of one device call (--hsm-timeout, --tpm-timeout): under kKmsCallTimeout, so a hung device
// costs the apiserver UNAVAILABLE in time rather than its own timeout.
inline constexpr std::chrono::milliseconds kDeviceTimeout{2000};
static_assert(kDeviceTimeout < kKmsCallTimeout);

// How long a device round trip counts as health; the idle prober's period (--health-cache).
inline constexpr std::chrono::milliseconds kHealthCache{5000};
// Re-read of the key family (--key-refresh-interval).
inline constexpr std::chrono::milliseconds kKeyRefreshInterval{60000};
// How long in-flight calls may finish on SIGTERM (--shutdown-grace).
inline constexpr std::chrono::milliseconds kShutdownGrace{5000};

}  // namespace trousseau::defaults
