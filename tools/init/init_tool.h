// trousseau-hsm-init: the commands behind the CLI. Each returns the process exit code and has
// printed its result (stdout) or its error (stderr). Nothing here ever prints a PIN: PINs only come
// from files or TROUSSEAU_HSM_PIN and go straight to the token. Nothing prints key material either
// (the TPM keys never leave the TPM; only their key_ids are shown).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/defaults.h"
#include "core/status.h"
#include "hsm/admin.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"
#include "hsm/token_discovery.h"

namespace trousseau::init {

// Exit codes.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailed = 1;  // the device failed or the operation was refused
inline constexpr int kExitUsage = 2;   // bad flags, URI, PIN file or configuration

inline constexpr char kToolName[] = "trousseau-hsm-init";

struct TokenInitOptions {
  std::string module;
  std::string label;
  std::string so_pin_file;
  std::string pin_file;
  // The module's C_Initialize string (CK_C_INITIALIZE_ARGS.pReserved), for a module that needs one (NSS
  // softoken's "configdir='sql:DIR' ..."): what the other commands take as the URI's x-init-reserved.
  std::optional<std::string> module_init_reserved;
  bool json = false;
};

// The socket a plugin listens on when nothing else is said (the plugin's --listen default).
inline constexpr const char* kDefaultPluginSocket = defaults::kSocketPath;
// How long `key rotate` waits for the plugin's Status to report the new key_id by default: the
// plugin's default --key-refresh-interval (60 s), the settle read of a new version (2 s), and slack.
inline constexpr std::chrono::seconds kDefaultPluginWait{65};

struct KeyOptions {
  std::string pkcs11_uri;
  bool json = false;
  // key rotate: the running plugin to confirm with (empty: kDefaultPluginSocket if it exists).
  std::string socket;
  std::chrono::milliseconds wait_timeout = kDefaultPluginWait;
  bool no_wait = false;
  // key generate, rotate: "auto" (what the token offers: aes-gcm wherever it has AES-GCM, else
  // aes-cbc-hmac), "aes-gcm" or "aes-cbc-hmac" (hsm/key_scheme.h).
  std::string scheme = "auto";
  uint64_t version = 0;  // key retire
  bool yes = false;      // key retire
  bool strict = false;   // selftest: warnings fail too
  // key list: HOST:PORT of the running plugin's /metrics (its --health-listen, or --metrics-listen when it
  // has one), to show each version's last use as that plugin saw it; empty: not asked.
  std::string plugin_metrics;
};

struct ConfigOptions {
  std::string pkcs11_uri;
  std::string listen = defaults::kListenEndpoint;
  std::string name = "trousseau-hsm";
  std::string timeout = "3s";
};

// tpm init | rotate | list | selftest: the TPM 2.0 key directory (tpm_commands.cc, on top of
// tpm/provisioning.h). key_ids use tpm::kTpmFamilyLabel, as the plugin does.
struct TpmOptions {
  std::string tcti = defaults::kTpmTcti;
  std::string key_dir;
  std::string scheme = "auto";  // init, rotate: auto | aes-cfb-hmac | rsa-oaep
  bool json = false;
  uint64_t version = 0;  // retire
  bool yes = false;      // retire
};

int TokenInit(const TokenInitOptions& options);
int KeyGenerate(const KeyOptions& options);
int KeyRotate(const KeyOptions& options);
int KeyList(const KeyOptions& options);
int KeyRetire(const KeyOptions& options);
int Selftest(const KeyOptions& options);
int Config(const ConfigOptions& options);
int TpmInit(const TpmOptions& options);
int TpmRotate(const TpmOptions& options);
int TpmList(const TpmOptions& options);
int TpmSelftest(const TpmOptions& options);
int TpmRetire(const TpmOptions& options);

// ---- shared helpers (common.cc) ----

// Prints "trousseau-hsm-init: <message>" to stderr and returns `exit_code`.
int Fail(int exit_code, const std::string& message);

// Lowercase hex, "01" for CKA_ID 0x01.
std::string Hex(const std::string& bytes);

// The key family a URI names, on a logged-in read-write session.
struct Family {
  std::optional<hsm::Pkcs11Uri> uri;
  std::unique_ptr<hsm::AdminSession> admin;
  std::vector<hsm::KeyObject> keys;  // ascending version

  const std::string& label() const { return uri->object_label(); }
  const hsm::Session& session() const { return admin->session(); }
  std::string Describe() const;  // "key family 'kek' on token 'k8s-kms'"
};

// Parses the URI (refusing a pin-value), opens the token and lists the family. On failure prints
// the error and returns its exit code (2 for configuration, 1 for the device); 0 on success.
int OpenFamily(const std::string& uri_text, Family& family);

// A Status from the device after the session is open: printed, exit 1.
int FailStatus(const Status& status);

// ---- what a running plugin will see (plugin_view.cc) ----

// Who owns the token's storage. Known for SoftHSM only (the token's directory under SOFTHSM2_CONF's
// directories.tokendir); for any other module `known` is false and `note` says why.
struct StorageOwner {
  bool known = false;
  uid_t owner = 0;
  std::string path;
  std::string note;
};
// `serial`: the token's serial number (TokenSlot::Serial()).
StorageOwner TokenStorageOwner(const std::string& module_path, const std::string& serial);

// "unix:///run/trousseau-hsm/kms.sock" if that socket file exists.
std::optional<std::string> DefaultPluginSocket();

// Polls the plugin's KMS v2 Status on `socket` until it reports `key_id` or `timeout` passes.
struct PluginWait {
  bool confirmed = false;
  std::string last_key_id;  // the last key_id Status reported
  std::string last_error;   // the last failed call's message, if the last call failed
};
PluginWait WaitForPluginKeyId(const std::string& socket, const std::string& key_id, std::chrono::milliseconds timeout);

// ---- what a running plugin saw of each version's use (plugin_use.cc) ----

// One version's use as a plugin reports it.
struct VersionUseSeen {
  bool known = false;  // false: why_unknown says why
  std::string why_unknown;
  uint64_t uses = 0;    // Encrypts and Decrypts served since the plugin started
  double last_use = 0;  // Unix time of the last one; 0: none since the plugin started
};

// A running plugin's /metrics page, read once.
struct PluginUse {
  std::string listen;
  bool reached = false;
  std::string error;                        // why not reached
  double started = 0;                       // the plugin's process_start_time_seconds; 0 if not given
  std::map<uint64_t, std::string> key_ids;  // the versions it holds, with their key_ids
  struct Counted {
    double uses = 0;
    double last_use = 0;
  };
  std::map<uint64_t, Counted> versions;  // versions it has served since it started

  // `key_id`: the version's key_id as this tool derives it (empty if unknown), checked against the plugin's.
  VersionUseSeen Of(uint64_t version, const std::string& key_id) const;
};
PluginUse ReadPluginUse(const std::string& listen, std::chrono::milliseconds timeout);

// "2026-12-06T07:30:00Z"; "42s ago", "5m ago", "3h 2m ago", "4d 1h ago".
std::string UtcTime(double unix_seconds);
std::string AgoText(double unix_seconds);

}  // namespace trousseau::init
