// The software half of multi-recipient envelopes, on OpenSSL 3: NIST P-256 points, ECDH with an
// ephemeral key, HKDF-SHA256 and AES-256-GCM. Everything a plugin computes without a device.
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::recipients {

inline constexpr size_t kCompressedPointSize = 33;
inline constexpr size_t kUncompressedPointSize = 65;
inline constexpr size_t kWrapKeySize = 32;
inline constexpr size_t kGcmTagSize = 16;

// `point` (compressed or uncompressed SEC1) as an uncompressed point, after checking it lies on
// P-256 and is not the point at infinity. INVALID_ARGUMENT otherwise.
StatusOr<std::string> UncompressedPoint(std::string_view point);
// The 33-byte compressed form of a valid point.
StatusOr<std::string> CompressedPoint(std::string_view point);

// A fresh ephemeral key pair; the private half is wiped when this goes away.
class EphemeralKey {
 public:
  static StatusOr<EphemeralKey> Generate();
  EphemeralKey(EphemeralKey&&) noexcept;
  EphemeralKey& operator=(EphemeralKey&&) noexcept;
  ~EphemeralKey();

  const std::string& public_point() const { return public_point_; }  // uncompressed
  // x(e * Q) for a recipient's public point Q (checked on the curve).
  StatusOr<SecureBytes> SharedSecret(std::string_view recipient_point) const;

 private:
  EphemeralKey() = default;
  void* key_ = nullptr;  // EVP_PKEY*
  std::string public_point_;
};

// HKDF-SHA256 (RFC 5869) of `secret` with `salt` and `info`, `size` bytes.
StatusOr<SecureBytes> Hkdf(std::string_view secret, std::string_view salt, std::string_view info, size_t size);

// AES-256-GCM with a zero nonce: only for keys used exactly once (every wrap key is). Output is
// ciphertext || 16-byte tag.
StatusOr<std::string> SealOnce(const SecureBytes& key, std::string_view plaintext, std::string_view aad);
// INVALID_ARGUMENT when the tag does not verify.
StatusOr<SecureBytes> OpenOnce(const SecureBytes& key, std::string_view sealed, std::string_view aad);

// Lower-case hex and back (nullopt-free: INVALID_ARGUMENT names `what`).
StatusOr<std::string> HexDecode(std::string_view hex, std::string_view what);

}  // namespace trousseau::recipients
