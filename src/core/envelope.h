// The bytes trousseau-hsm hands to kube-apiserver as "ciphertext" (format in docs/envelope.md):
//
//   offset  size  field
//   0       2     magic "TH"
//   2       1     format version (1)
//   3       8     key version, unsigned big-endian
//   11      n     sealed bytes from the key backend (for PKCS#11: 12-byte IV || AES-GCM ciphertext || 16-byte tag)
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

struct ParsedEnvelope {
  uint64_t key_version = 0;
  std::string_view header;  // the associated data
  std::string_view sealed;  // what the backend opens
};

std::string EncodeEnvelopeHeader(uint64_t key_version);

// Parses without copying; views point into `ciphertext`. INVALID_ARGUMENT for anything that is not
// a well-formed trousseau-hsm envelope.
StatusOr<ParsedEnvelope> ParseEnvelope(std::string_view ciphertext);

}  // namespace trousseau
