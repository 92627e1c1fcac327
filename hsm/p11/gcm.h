// AES-GCM (96-bit IV, 128-bit tag) on the device, returning Status under the seam's one error policy:
// UNAVAILABLE = the connection is lost (the caller rebuilds it), INVALID_ARGUMENT = the ciphertext did
// not authenticate (the caller's bytes, never the device's fault), INTERNAL = anything else.
#pragma once

#include <string>
#include <string_view>

#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

inline constexpr size_t kGcmTagSize = 16;

// `out` gets ciphertext || tag. `what` names the step in errors ("AES-GCM encrypt on the device").
// A device that refuses the caller's IV (CKR_MECHANISM_PARAM_INVALID at C_EncryptInit, as FIPS-mode
// HSMs do), or writes its own over it, gives UNIMPLEMENTED: see IsCallerIvRefused.
Status GcmSeal(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
               std::string_view plaintext, std::string& out, std::string_view what = "AES-GCM encrypt on the device");

// `in` is ciphertext || tag; `out` gets the plaintext. A tag that does not verify (once the device took
// key and IV) gives INVALID_ARGUMENT; see IsTagMismatch in hsm/pkcs11_error.h.
Status GcmOpen(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad, std::string_view in,
               SecureBytes& out, std::string_view what = "AES-GCM decrypt on the device");

// The device wants to choose the GCM IV itself (GcmSeal's UNIMPLEMENTED).
bool IsCallerIvRefused(const Status& status);

// AES-GCM where the device chooses the IV (FIPS-mode HSMs such as Thales Luna refuse one from the
// caller): we hand it a zeroed 12-byte CK_GCM_PARAMS.pIv and it writes the IV it used there, which
// `iv` returns. A device that answers OK but leaves the IV zero is refused (FAILED_PRECONDITION): it
// did not say which IV it used, and all-zero IVs repeat.
Status GcmSealDeviceIv(const Session& session, CK_OBJECT_HANDLE key, std::string_view aad, std::string_view plaintext,
                       GcmIv& iv, std::string& out, std::string_view what = "AES-GCM encrypt on the device");

}  // namespace trousseau::hsm
