// How one key version seals on a PKCS#11 token. Real tokens differ: SoftHSM and most HSMs have AES-GCM;
// some (opencryptoki's soft token, older or restricted HSMs) have only AES-CBC and HMAC; in FIPS mode
// several (Thales Luna among them) refuse an IV chosen by the caller and generate it on the device.
// The scheme of a version is read from its key objects (hsm/key_family.h), so a token can hold versions
// of both schemes after a migration, and every envelope's format byte names the scheme it was made with
// (docs/envelope.md).
#pragma once

#include <cstdint>
#include <string_view>

#include "core/envelope.h"

namespace trousseau::hsm {

enum class KeyScheme {
  // One AES-256 key per version; CKM_AES_GCM, 96-bit IV, 128-bit tag. Envelope format 1.
  kAesGcm,
  // Two keys per version, both generated on the device under the same label and CKA_ID: an AES-256 key
  // (CKM_AES_CBC_PAD) and a 256-bit generic secret (CKM_SHA256_HMAC). Encrypt-then-MAC; the MAC is
  // verified on the device before anything is decrypted. Envelope format 2.
  kAesCbcHmac,
};

// Who chooses the AES-GCM IV. The sealed bytes are the same either way (IV || ciphertext || tag): only
// sealing and the key fingerprint differ.
enum class GcmIvSource {
  kCaller,  // we do (a counter sequence per key, core/nonce_sequence.h)
  kDevice,  // the device writes its own into CK_GCM_PARAMS.pIv (FIPS-mode HSMs)
};

// The format byte the engine writes (core/envelope.h) for each scheme.
inline constexpr uint8_t kEnvelopeFormatAesGcm = kEnvelopeFormatV1;
inline constexpr uint8_t kEnvelopeFormatAesCbcHmac = kEnvelopeFormatV2;

inline constexpr uint8_t EnvelopeFormatOf(KeyScheme scheme) {
  return scheme == KeyScheme::kAesCbcHmac ? kEnvelopeFormatAesCbcHmac : kEnvelopeFormatAesGcm;
}

// "aes-gcm", "aes-cbc-hmac": the names the tools print and `--scheme` accepts.
inline constexpr std::string_view SchemeName(KeyScheme scheme) {
  return scheme == KeyScheme::kAesCbcHmac ? "aes-cbc-hmac" : "aes-gcm";
}

// CBC-HMAC sizes: a fresh random 16-byte IV, PKCS#7 padding (1 to 16 bytes), a 32-byte HMAC-SHA256 tag.
inline constexpr size_t kCbcIvSize = 16;
inline constexpr size_t kCbcBlockSize = 16;
inline constexpr size_t kHmacTagSize = 32;
inline constexpr size_t kHmacKeySize = 32;
inline constexpr size_t kCbcHmacMaxOverhead = kCbcIvSize + kCbcBlockSize + kHmacTagSize;

}  // namespace trousseau::hsm
