// Seal and open with one key version's device objects, by its scheme (hsm/key_scheme.h). The sealed
// bytes are those of envelope format EnvelopeFormatOf(scheme):
//   aes-gcm        IV (12) || AES-GCM ciphertext || tag (16); the IV is ours (`ivs`) or the device's
//   aes-cbc-hmac   IV (16) || AES-CBC-PAD ciphertext || HMAC-SHA256 (32)   (hsm/p11/cbc_hmac.h)
// The plugin's backend and trousseau-hsm-init's selftest both seal through here, so they cannot
// disagree on a layout. Errors follow the seam's policy; a tag or MAC that does not verify is
// INVALID_ARGUMENT.
#pragma once

#include <string>
#include <string_view>

#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/key_family.h"
#include "hsm/key_scheme.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

// How a version seals on this device: its objects (token objects or session copies) and, for aes-gcm,
// who chooses the IV (VersionFingerprint found out).
struct SealingKey {
  VersionHandles handles;
  GcmIvSource gcm_iv_source = GcmIvSource::kCaller;
};

// `ivs` is drawn from only for aes-gcm with caller IVs.
StatusOr<std::string> SealWithVersion(const Session& session, const SealingKey& key, NonceSequence& ivs,
                                      std::string_view aad, std::string_view plaintext);
StatusOr<SecureBytes> OpenWithVersion(const Session& session, const SealingKey& key, std::string_view aad,
                                      std::string_view sealed);

// The most bytes SealWithVersion adds to a plaintext under `scheme`.
size_t MaxSealOverhead(KeyScheme scheme);

}  // namespace trousseau::hsm
