// The key directory: per key version, the TPM-encrypted blobs of its two TPM objects, as
// tpm2-tools would write them (marshalled TPM2B_PUBLIC / TPM2B_PRIVATE):
//   v000001.hmac.pub  v000001.hmac.priv  v000001.aes.priv  v000001.aes.pub
// written in that order, each atomically (temp file, fsync, rename, then fsync of the directory),
// mode 0600. `vNNNNNN.aes.pub` is written last and is what makes a version exist: a crash half-way
// through leaves no version, only leftovers that the next rotation overwrites.
// The blobs are useless without the TPM that made them: the private parts are encrypted and
// integrity-protected under that TPM's storage primary key.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/status.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {

// How a version seals: AES-256-CFB + HMAC-SHA256 (two objects), or, for TPMs without
// TPM2_EncryptDecrypt(2), RSA-2048-OAEP-SHA256 (one object: `vNNNNNN.rsa.pub/.priv`, `.rsa.pub` last).
enum class Scheme { kAesCfbHmac, kRsaOaep };

struct VersionBlobs {
  uint64_t version = 0;
  Scheme scheme = Scheme::kAesCfbHmac;
  ObjectBlobs aes;
  ObjectBlobs hmac;
  ObjectBlobs rsa;
  bool operator==(const VersionBlobs& o) const {
    return version == o.version && scheme == o.scheme && aes.public_area == o.aes.public_area &&
           aes.private_area == o.aes.private_area && hmac.public_area == o.hmac.public_area &&
           hmac.private_area == o.hmac.private_area && rsa.public_area == o.rsa.public_area &&
           rsa.private_area == o.rsa.private_area;
  }
};

// "v000001" (at least 6 digits).
std::string VersionStem(uint64_t version);

// Every complete version in `dir`. FAILED_PRECONDITION if the directory is missing or unreadable,
// or a version's files are incomplete or unreadable. An empty map if there are no keys.
StatusOr<std::map<uint64_t, VersionBlobs>> ReadKeyDir(const std::string& dir);

// Writes one version's files (see above). Refuses to overwrite an existing complete version.
Status WriteVersion(const std::string& dir, const VersionBlobs& blobs);

// Creates `dir` (mode 0700) if missing.
Status EnsureKeyDir(const std::string& dir);

}  // namespace trousseau::tpm
