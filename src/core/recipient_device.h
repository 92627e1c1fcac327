// A device that holds one *recipient key* of a multi-recipient envelope (docs/ha.md): an ECC
// NIST P-256 private key created on the device, never exported. Anyone who has its public point can
// wrap a secret to it in software; only this device can open such a wrap, by computing the ECDH
// shared secret with the wrap's ephemeral public point. The device never sees the wrapped secret.
//
// Error contract and thread-safety as KeyBackend (core/key_backend.h): UNAVAILABLE while the device
// is unreachable (the implementation recovers by itself), FAILED_PRECONDITION for configuration or a
// key that is missing or not what it must be, INVALID_ARGUMENT for a point the device refuses.
// Implementations are thread-safe; every non-const call returns by its deadline.
#pragma once

#include <string>
#include <string_view>

#include "core/key_backend.h"  // Deadline
#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau {

// Uncompressed SEC1 encoding of a P-256 point: 0x04 || X (32 bytes) || Y (32 bytes).
inline constexpr size_t kP256PointSize = 65;
// The ECDH shared secret of P-256: the x-coordinate of the product point.
inline constexpr size_t kP256SharedSecretSize = 32;

class RecipientDevice {
 public:
  virtual ~RecipientDevice() = default;

  // "tpm2" or "pkcs11": what kind of device opens wraps for this recipient.
  virtual std::string_view RecipientKind() const = 0;
  // For logs and health, e.g. "TPM swtpm:path=/run/swtpm/sock, recipient key in /var/lib/...".
  virtual std::string DescribeRecipient() const = 0;

  // The recipient key's public point (kP256PointSize bytes, uncompressed SEC1), as the device holds
  // it now: a recipient set names this point, and a node checks it is among the set's members.
  virtual StatusOr<std::string> RecipientPublicPoint(Deadline deadline) = 0;

  // x(d * P): the ECDH shared secret (kP256SharedSecretSize bytes) of the device's private key d and
  // `peer_point` P (uncompressed SEC1; the caller has checked it lies on the curve). One device
  // operation (TPM2_ECDH_ZGen, C_DeriveKey with CKM_ECDH1_DERIVE).
  virtual StatusOr<SecureBytes> RecipientSharedSecret(std::string_view peer_point, Deadline deadline) = 0;
};

}  // namespace trousseau
