#include "tpm/provisioning.h"

#include "core/key_id.h"
#include "core/strings.h"
#include "tpm/key_store.h"
#include "tpm/tpm_aead.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {
namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

StatusOr<std::unique_ptr<TpmDevice>> Connect(const TpmConfig& config) {
  StatusOr<std::unique_ptr<TpmDevice>> device = TpmDevice::Open(config.tcti);
  if (device.ok()) (*device)->set_deadline(Clock::now() + kTimeout);
  return device;
}

StatusOr<TpmKeyInfo> Describe(TpmDevice& device, const TpmCapabilities& caps, const VersionBlobs& blobs,
                              const std::string& label) {
  StatusOr<LoadedVersion> loaded = LoadVersion(device, caps, blobs);
  if (!loaded.ok()) return loaded.status();
  StatusOr<std::string> fingerprint = Fingerprint(device, *loaded);
  if (!fingerprint.ok()) return fingerprint.status();
  return TpmKeyInfo{blobs.version, *fingerprint, DeriveKeyId("tpm2", label, blobs.version, *fingerprint)};
}

StatusOr<TpmKeyInfo> CreateAndWrite(const TpmConfig& config, uint64_t version, const std::string& label) {
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  StatusOr<TpmCapabilities> caps = QueryCapabilities(**device);
  if (!caps.ok()) return caps.status();
  Scheme scheme = Scheme::kAesCfbHmac;
  switch (config.scheme) {
    case KeyScheme::kAuto:
      scheme = RequireAesScheme(*caps).ok() ? Scheme::kAesCfbHmac : Scheme::kRsaOaep;
      break;
    case KeyScheme::kAesCfbHmac:
      if (Status s = RequireAesScheme(*caps); !s.ok()) return s;
      break;
    case KeyScheme::kRsaOaep:
      scheme = Scheme::kRsaOaep;
      break;
  }
  StatusOr<VersionBlobs> blobs = CreateVersion(**device, version, scheme);
  if (!blobs.ok()) return blobs.status();
  // Load it back before writing: the files only ever hold keys this TPM can use.
  StatusOr<TpmKeyInfo> info = Describe(**device, *caps, *blobs, label);
  if (!info.ok()) return info.status();
  if (Status s = WriteVersion(config.key_dir, *blobs); !s.ok()) return s;
  return info;
}

}  // namespace

StatusOr<TpmKeyInfo> InitKeyDir(const TpmConfig& config, const std::string& family_label) {
  if (Status s = EnsureKeyDir(config.key_dir); !s.ok()) return s;
  StatusOr<std::map<uint64_t, VersionBlobs>> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (!existing->empty()) {
    return AlreadyExistsError(StrCat(config.key_dir, " already holds TPM key versions (highest ",
                                     existing->rbegin()->first, "); use rotate to add one"));
  }
  return CreateAndWrite(config, 1, family_label);
}

StatusOr<TpmKeyInfo> RotateKey(const TpmConfig& config, const std::string& family_label) {
  StatusOr<std::map<uint64_t, VersionBlobs>> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (existing->empty()) {
    return FailedPreconditionError(StrCat(config.key_dir, " holds no TPM keys; run init first"));
  }
  return CreateAndWrite(config, existing->rbegin()->first + 1, family_label);
}

StatusOr<std::vector<TpmKeyInfo>> ListKeys(const TpmConfig& config, const std::string& family_label) {
  StatusOr<std::map<uint64_t, VersionBlobs>> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  StatusOr<TpmCapabilities> caps = QueryCapabilities(**device);
  if (!caps.ok()) return caps.status();
  std::vector<TpmKeyInfo> keys;
  for (const auto& [version, blobs] : *existing) {
    StatusOr<TpmKeyInfo> info = Describe(**device, *caps, blobs, family_label);
    if (!info.ok()) return info.status();
    keys.push_back(*std::move(info));
  }
  return keys;
}

Status SelfTest(const TpmConfig& config) {
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  StatusOr<TpmCapabilities> caps = QueryCapabilities(**device);
  if (!caps.ok()) return caps.status();
  StatusOr<std::map<uint64_t, VersionBlobs>> existing = ReadKeyDir(config.key_dir);
  if (!existing.ok()) return existing.status();
  if (existing->empty()) return FailedPreconditionError(StrCat(config.key_dir, " holds no TPM keys"));
  const std::string plaintext(32, '\x42');
  for (const auto& [version, blobs] : *existing) {
    StatusOr<LoadedVersion> key = LoadVersion(**device, *caps, blobs);
    if (!key.ok()) return key.status();
    StatusOr<std::string> sealed = Seal(**device, *caps, *key, plaintext, "self-test");
    if (!sealed.ok()) return sealed.status();
    StatusOr<SecureBytes> opened = Open(**device, *caps, *key, *sealed, "self-test");
    if (!opened.ok()) return opened.status();
    if (opened->view() != plaintext) {
      return InternalError(StrCat("self-test: key version ", version, " returned wrong plaintext"));
    }
    std::string forged = *sealed;
    forged[forged.size() / 2] ^= 1;
    if (!IsInvalidArgument(Open(**device, *caps, *key, forged, "self-test").status())) {
      return InternalError(StrCat("self-test: key version ", version, " accepted a forged ciphertext"));
    }
  }
  return OkStatus();
}

}  // namespace trousseau::tpm
