// Provisioning of the TPM key directory, for `trousseau-hsm-init tpm ...`. Each call opens its own
// TPM connection (through a resource manager in production: /dev/tpmrm0 or tabrmd, so it can run
// while the plugin holds its objects) and closes it before returning.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "core/defaults.h"
#include "core/status.h"
#include "tpm/tpm_backend.h"  // kTpmFamilyLabel

namespace trousseau::tpm {

// kTpmFamilyLabel, the label these calls take from the tool, is the backend's (tpm/tpm_backend.h).

enum class KeyScheme {
  kAuto,        // AES-CFB + HMAC if the TPM has TPM2_EncryptDecrypt(2) and TPM2_HMAC, else RSA-OAEP
  kAesCfbHmac,  // refuse (FAILED_PRECONDITION) on TPMs without those commands
  kRsaOaep,     // the fallback; seeds of at most 190 bytes
};

struct TpmConfig {
  std::string tcti = defaults::kTpmTcti;  // empty: FAILED_PRECONDITION, never tpm2-tss' default
  std::string key_dir;
  KeyScheme scheme = KeyScheme::kAuto;  // for new versions (init, rotate)
  // How long init/rotate wait for another run holding the key directory's lock (then ABORTED).
  std::chrono::milliseconds lock_wait = std::chrono::seconds(60);
};

struct TpmKeyInfo {
  uint64_t version = 0;
  std::string fingerprint;  // as the backend reports it (16 bytes)
  std::string key_id;       // DeriveKeyId("tpm2", family_label, version, fingerprint)
};

// Init and rotate hold the key directory's lock (key_store.h) from reading the directory to
// committing the new version, so concurrent runs get consecutive versions. Both refuse
// (FAILED_PRECONDITION) a key directory that is group or world writable or owned by another user
// than this one or root.

// Creates the key directory (0700) if needed and key version 1 in it. Refuses (ALREADY_EXISTS) if
// the directory already holds keys.
StatusOr<TpmKeyInfo> InitKeyDir(const TpmConfig& config, const std::string& family_label);
// Creates version N+1 (N = highest version in the directory). FAILED_PRECONDITION on an empty
// directory, at N = UINT64_MAX (before touching the TPM), and if an existing version does not
// load in this TPM (wrong TCTI, directory of another TPM): the new version would sit next to keys
// the plugin cannot load.
StatusOr<TpmKeyInfo> RotateKey(const TpmConfig& config, const std::string& family_label);
// Deletes an old version's files (no TPM command: the TPM never stored the key, the blobs were its
// only copy, so backups of them must go too). FAILED_PRECONDITION for the active (highest) version,
// NOT_FOUND for one that is not there. Serialised with init/rotate on the directory's lock.
Status RetireKey(const TpmConfig& config, uint64_t version);
// Every version in the directory, loaded in this TPM and fingerprinted, lowest first.
StatusOr<std::vector<TpmKeyInfo>> ListKeys(const TpmConfig& config, const std::string& family_label);
// Checks the TPM has the commands the backend needs, then loads every version and runs a seal/open
// round trip (and a forgery that must be refused) with each.
Status SelfTest(const TpmConfig& config);

}  // namespace trousseau::tpm
