#include "tpm/provisioning.h"

#include <limits>

#include "core/key_id.h"
#include "core/strings.h"
#include "tpm/key_store.h"
#include "tpm/tpm_aead.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {
namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

using Versions = std::map<uint64_t, VersionBlobs>;

// One call's TPM connection and what the TPM can do.
struct Connection {
  std::unique_ptr<TpmDevice> device;
  TpmCapabilities caps;
};

StatusOr<Connection> Connect(const TpmConfig& config) {
  StatusOr<std::unique_ptr<TpmDevice>> device = TpmDevice::Open(config.tcti);
  if (!device.ok()) return device.status();
  (*device)->set_deadline(Clock::now() + kTimeout);
  StatusOr<TpmCapabilities> caps = QueryCapabilities(**device);
  if (!caps.ok()) return caps.status();
  return Connection{*std::move(device), *caps};
}

// Refused before anything is created or locked (TpmDevice::Open refuses an empty TCTI too, but
// only once a TPM is needed).
Status CheckConfig(const TpmConfig& config) {
  if (config.tcti.empty()) return FailedPreconditionError(kEmptyTctiMessage);
  if (config.key_dir.empty()) return FailedPreconditionError("no TPM key directory configured");
  return OkStatus();
}

StatusOr<TpmKeyInfo> Describe(Connection& tpm, const VersionBlobs& blobs, const std::string& label) {
  StatusOr<LoadedVersion> loaded = LoadVersion(*tpm.device, tpm.caps, blobs);
  if (!loaded.ok()) return loaded.status();
  StatusOr<std::string> fingerprint = Fingerprint(*tpm.device, *loaded);
  if (!fingerprint.ok()) return fingerprint.status();
  return TpmKeyInfo{blobs.version, *fingerprint, DeriveKeyId("tpm2", label, blobs.version, *fingerprint)};
}

StatusOr<Scheme> ChooseScheme(const TpmConfig& config, const TpmCapabilities& caps) {
  switch (config.scheme) {
    case KeyScheme::kAuto:
      return RequireAesScheme(caps).ok() ? Scheme::kAesCfbHmac : Scheme::kRsaOaep;
    case KeyScheme::kAesCfbHmac:
      if (Status s = RequireAesScheme(caps); !s.ok()) return s;
      return Scheme::kAesCfbHmac;
    case KeyScheme::kRsaOaep:
      return Scheme::kRsaOaep;
  }
  return Scheme::kAesCfbHmac;
}

// Every existing version must load in this TPM before another is added: a version made by this
// TPM next to versions it cannot load is a directory the plugin loads nowhere. Unreachable or busy
// TPMs (UNAVAILABLE) pass through unchanged, they say nothing about the keys.
Status CheckExistingLoad(Connection& tpm, const Versions& existing, const TpmConfig& config, const std::string& label) {
  for (const auto& [version, blobs] : existing) {
    StatusOr<TpmKeyInfo> info = Describe(tpm, blobs, label);
    if (info.ok()) continue;
    if (IsUnavailable(info.status())) return info.status();
    return FailedPreconditionError(StrCat(
        "refusing to rotate: key version ", version, " in ", config.key_dir, " does not load in the TPM at '",
        config.tcti, "', so a new version would sit next to keys the plugin cannot load: ", info.status().message()));
  }
  return OkStatus();
}

// Creates `version` in the TPM, loads it back and fingerprints it, and only then writes its files:
// the directory only ever holds keys this TPM can use. The caller holds the directory's lock.
StatusOr<TpmKeyInfo> CreateAndWrite(Connection& tpm, const TpmConfig& config, uint64_t version,
                                    const std::string& label) {
  StatusOr<Scheme> scheme = ChooseScheme(config, tpm.caps);
  if (!scheme.ok()) return scheme.status();
  StatusOr<VersionBlobs> blobs = CreateVersion(*tpm.device, version, *scheme);
  if (!blobs.ok()) return blobs.status();
  StatusOr<TpmKeyInfo> info = Describe(tpm, *blobs, label);
  if (!info.ok()) return info.status();
  if (Status s = WriteVersion(config.key_dir, *blobs); !s.ok()) return s;
  return info;
}

// Locks the directory, and removes what runs that died while writing left behind.
StatusOr<KeyDirLock> LockKeyDir(const TpmConfig& config) {
  StatusOr<KeyDirLock> lock = KeyDirLock::Acquire(config.key_dir, config.lock_wait);
  if (lock.ok()) RemoveStaleTempFiles(config.key_dir);
  return lock;
}

}  // namespace

StatusOr<TpmKeyInfo> InitKeyDir(const TpmConfig& config, const std::string& family_label) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  if (Status s = EnsureKeyDir(config.key_dir); !s.ok()) return s;
  StatusOr<KeyDirLock> lock = LockKeyDir(config);
  if (!lock.ok()) return lock.status();
  StatusOr<Versions> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) {
    return AlreadyExistsError(StrCat(config.key_dir, " already holds TPM key versions (highest ",
                                     existing->rbegin()->first, "); use rotate to add one"));
  }
  StatusOr<Connection> tpm = Connect(config);
  if (!tpm.ok()) return tpm.status();
  return CreateAndWrite(*tpm, config, 1, family_label);
}

StatusOr<TpmKeyInfo> RotateKey(const TpmConfig& config, const std::string& family_label) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  if (Status s = CheckKeyDirForWriting(config.key_dir); !s.ok()) return s;
  StatusOr<KeyDirLock> lock = LockKeyDir(config);
  if (!lock.ok()) return lock.status();
  StatusOr<Versions> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (existing->empty()) {
    return FailedPreconditionError(StrCat(config.key_dir,
                                          " holds no TPM keys yet; create version 1 with "
                                          "`trousseau-hsm-init tpm init`"));
  }
  const uint64_t highest = existing->rbegin()->first;
  if (highest == std::numeric_limits<uint64_t>::max()) {
    return FailedPreconditionError(StrCat(config.key_dir, " already holds key version ", highest,
                                          ", the highest possible; no version can follow it"));
  }
  StatusOr<Connection> tpm = Connect(config);
  if (!tpm.ok()) return tpm.status();
  if (Status s = CheckExistingLoad(*tpm, *existing, config, family_label); !s.ok()) return s;
  return CreateAndWrite(*tpm, config, highest + 1, family_label);
}

Status RetireKey(const TpmConfig& config, uint64_t version) {
  if (Status s = CheckKeyDirForWriting(config.key_dir); !s.ok()) return s;
  StatusOr<KeyDirLock> lock = LockKeyDir(config);
  if (!lock.ok()) return lock.status();
  StatusOr<Versions> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (!existing->contains(version)) {
    return NotFoundError(StrCat("key version ", version, " is not in ", config.key_dir));
  }
  if (version == existing->rbegin()->first) {
    return FailedPreconditionError(StrCat("version ", version, " is the active (highest) version in ", config.key_dir,
                                          " and can never be retired: new encryptions use it"));
  }
  return RemoveVersion(config.key_dir, version);
}

StatusOr<std::vector<TpmKeyInfo>> ListKeys(const TpmConfig& config, const std::string& family_label) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  StatusOr<Versions> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  StatusOr<Connection> tpm = Connect(config);
  if (!tpm.ok()) return tpm.status();
  std::vector<TpmKeyInfo> keys;
  for (const auto& [version, blobs] : *existing) {
    StatusOr<TpmKeyInfo> info = Describe(*tpm, blobs, family_label);
    if (!info.ok()) return info.status();
    keys.push_back(*std::move(info));
  }
  return keys;
}

Status SelfTest(const TpmConfig& config) {
  if (Status s = CheckConfig(config); !s.ok()) return s;
  StatusOr<Connection> tpm = Connect(config);
  if (!tpm.ok()) return tpm.status();
  TpmDevice& device = *tpm->device;
  StatusOr<Versions> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (existing->empty()) return FailedPreconditionError(StrCat(config.key_dir, " holds no TPM keys"));
  const std::string plaintext(32, '\x42');
  for (const auto& [version, blobs] : *existing) {
    StatusOr<LoadedVersion> key = LoadVersion(device, tpm->caps, blobs);
    if (!key.ok()) return key.status();
    StatusOr<std::string> sealed = Seal(device, tpm->caps, *key, plaintext, "self-test");
    if (!sealed.ok()) return sealed.status();
    StatusOr<SecureBytes> opened = Open(device, tpm->caps, *key, *sealed, "self-test");
    if (!opened.ok()) return opened.status();
    if (opened->view() != plaintext) {
      return InternalError(StrCat("self-test: key version ", version, " returned wrong plaintext"));
    }
    std::string forged = *sealed;
    forged[forged.size() / 2] ^= 1;
    if (!IsInvalidArgument(Open(device, tpm->caps, *key, forged, "self-test").status())) {
      return InternalError(StrCat("self-test: key version ", version, " accepted a forged ciphertext"));
    }
  }
  return OkStatus();
}

}  // namespace trousseau::tpm
