// ECC P-256 on the device for recipient keys (docs/ha.md "How it works", core/recipient_device.h):
// read a public point, and ECDH (CKM_ECDH1_DERIVE) with a peer's point. Raw C_* calls stay here (the seam).
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// CKA_EC_PARAMS of P-256: the DER OID of prime256v1 (1.2.840.10045.3.1.7).
inline constexpr std::string_view kP256EcParams{"\x06\x08\x2A\x86\x48\xCE\x3D\x03\x01\x07", 10};

// How a token's CKM_ECDH1_DERIVE wants the peer point in CK_ECDH1_DERIVE_PARAMS.pPublicData. PKCS#11
// 2.40 says the raw point; some tokens (older NSS, some HSM firmware) want CKA_EC_POINT's DER OCTET
// STRING form. kUnknown: not found out yet.
enum class PeerPointForm { kUnknown, kRaw, kDerOctetString };

// CKA_EC_POINT of `public_key`, as an uncompressed P-256 point (0x04 || X || Y, 65 bytes). Tokens store
// it as a DER OCTET STRING (04 41 <point>, PKCS#11 2.40) or, some, raw: both are accepted. Anything else
// (another curve, a compressed point) is FAILED_PRECONDITION naming the length and first byte.
StatusOr<std::string> ReadP256PublicPoint(const Session& session, CK_OBJECT_HANDLE public_key);

struct EcdhSecret {
  SecureBytes secret;  // x(d * P), 32 bytes
  PeerPointForm form;  // the form the token took: pass it as `form` next time
};

// x(d * P) for the private key `private_key` (d) on the device and `peer_point` (P, 65 bytes, uncompressed,
// on the curve: the caller checked). C_DeriveKey with CKM_ECDH1_DERIVE, kdf CKD_NULL and no shared data,
// into a session object (CKO_SECRET_KEY/CKK_GENERIC_SECRET, 32 bytes, CKA_TOKEN false, CKA_SENSITIVE false,
// CKA_EXTRACTABLE true) whose CKA_VALUE is read and which is destroyed on every path.
// `form` kUnknown tries the raw point, then the DER OCTET STRING when the token refuses the parameters
// (CKR_ARGUMENTS_BAD, CKR_MECHANISM_PARAM_INVALID, CKR_DOMAIN_PARAMS_INVALID); a known form is used alone.
// A point refused in every form tried is INVALID_ARGUMENT (the caller's bytes); errors otherwise follow
// the seam (UNAVAILABLE: the connection is lost).
StatusOr<EcdhSecret> DeriveEcdhSecret(const Session& session, CK_OBJECT_HANDLE private_key, std::string_view peer_point,
                                      PeerPointForm form);

}  // namespace trousseau::hsm::p11
