// The bytes trousseau-hsm hands to kube-apiserver as "ciphertext" (format in docs/envelope.md):
//
//   offset  size  field
//   0       2     magic "TH"
//   2       1     format version: how the sealed bytes are laid out (set by the key version's scheme)
//                   1: the backend's AEAD (PKCS#11 aes-gcm: 12-byte IV || AES-GCM ciphertext || 16-byte tag;
//                      TPM: see tpm/tpm_aead.h)
//                   2: PKCS#11 aes-cbc-hmac (16-byte IV || AES-CBC-PAD ciphertext || 32-byte HMAC-SHA256)
//                   3: multi-recipient, wrapped to every member of a recipient set (src/recipients/
//                      multi_wrap.h); the key version is the set's epoch
//   3       8     key version, unsigned big-endian
//   11      n     sealed bytes from the key backend
//
// The 11-byte header is the AEAD's associated data, so neither the format nor the key version
// can be altered without failing authentication on the device.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include "core/status.h"

namespace trousseau {

inline constexpr size_t kEnvelopeHeaderSize = 11;
inline constexpr uint8_t kEnvelopeFormatV1 = 1;
inline constexpr uint8_t kEnvelopeFormatV2 = 2;
inline constexpr uint8_t kEnvelopeFormatV3 = 3;

struct ParsedEnvelope {
  uint8_t format = kEnvelopeFormatV1;
  uint64_t key_version = 0;
  std::string_view header;  // the associated data
  std::string_view sealed;  // what the backend opens
};

std::string EncodeEnvelopeHeader(uint64_t key_version, uint8_t format = kEnvelopeFormatV1);

// Parses without copying; views point into `ciphertext`. INVALID_ARGUMENT for anything that is not
// a well-formed trousseau-hsm envelope.
StatusOr<ParsedEnvelope> ParseEnvelope(std::string_view ciphertext);

}  // namespace trousseau
