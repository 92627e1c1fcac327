// The AEAD the TPM backend offers, built from two TPM-resident keys per key version (the TPM has
// no GCM): AES-256-CFB (TPM2_EncryptDecrypt2, or TPM2_EncryptDecrypt) and HMAC-SHA256
// (TPM2_HMAC), encrypt-then-MAC.
//
//   sealed = iv(16) || ciphertext(n) || mac(32)
//   digest = SHA-256( "trousseau-hsm tpm2 aead v1" || u64be(|aad|) || aad || iv || u64be(n) || ciphertext )
//   mac    = HMAC-SHA256_tpm(hmac key, digest)                     (TPM2_HMAC over 32 bytes)
//
// Open recomputes the MAC in the TPM and compares in constant time BEFORE anything is decrypted.
// See docs/tpm.md for why the digest is computed on the host and how IVs are chosen.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tpm/key_store.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {

inline constexpr size_t kIvSize = 16;
inline constexpr size_t kMacSize = 32;
inline constexpr size_t kSealOverhead = kIvSize + kMacSize;
// RSA-2048-OAEP-SHA256 fallback: the sealed bytes are always 256; at most 190 bytes of plaintext.
inline constexpr size_t kRsaSealedSize = 256;
inline constexpr size_t kRsaMaxPlaintext = 256 - 2 * 32 - 2;

// What the TPM can do, asked once per connection.
struct TpmCapabilities {
  bool encrypt_decrypt2 = false;  // else TPM2_EncryptDecrypt
  bool encrypt_decrypt1 = false;  // TPM2_EncryptDecrypt is there too
  bool hmac = false;
  size_t max_buffer = 1024;
};
// What the TPM implements (TPM2_GetCapability).
StatusOr<TpmCapabilities> QueryCapabilities(TpmDevice& device);
// OK if AES-CFB + HMAC versions can be used here, else FAILED_PRECONDITION naming the missing
// commands (TPM2_EncryptDecrypt2 nor TPM2_EncryptDecrypt, TPM2_HMAC).
Status RequireAesScheme(const TpmCapabilities& caps);

// A key version's objects, loaded.
struct LoadedVersion {
  Scheme scheme = Scheme::kAesCfbHmac;
  TransientObject aes;
  TransientObject hmac;
  TransientObject rsa;
  std::string rsa_modulus;  // big-endian, for sealing on the host
  void Abandon() {
    aes.Abandon();
    hmac.Abandon();
    rsa.Abandon();
  }
};

// Creates a new key version's objects under a freshly derived storage primary (not loaded).
StatusOr<VersionBlobs> CreateVersion(TpmDevice& device, uint64_t version, Scheme scheme);
// Loads a version's objects (derives the primary, loads them, flushes the primary). A blob of
// another TPM (or from before an owner-hierarchy clear) is FAILED_PRECONDITION, as is an AES version
// on a TPM without the commands it needs.
StatusOr<LoadedVersion> LoadVersion(TpmDevice& device, const TpmCapabilities& caps, const VersionBlobs& blobs);
// 16 public bytes naming the key material: SHA-256 over the TPM HMAC of a fixed message with the
// version's HMAC key and the AES key's TPM name, truncated (RSA versions: over the key's TPM name,
// which covers its unique modulus). Stable across restarts; a new key gives
// a new fingerprint.
StatusOr<std::string> Fingerprint(TpmDevice& device, const LoadedVersion& key);

StatusOr<std::string> Seal(TpmDevice& device, const TpmCapabilities& caps, const LoadedVersion& key,
                           std::string_view plaintext, std::string_view aad);
StatusOr<SecureBytes> Open(TpmDevice& device, const TpmCapabilities& caps, const LoadedVersion& key,
                           std::string_view sealed, std::string_view aad);

}  // namespace trousseau::tpm
