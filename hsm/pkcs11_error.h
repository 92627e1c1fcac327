// CK_RV values as names and as status codes that follow the KeyBackend error contract.
#pragma once

#include <string>
#include <string_view>

#include "hsm/pkcs11.h"
#include "core/status.h"

namespace trousseau::hsm {

// "CKR_DEVICE_ERROR", or "CKR_0x000001A0" for codes without a name here.
std::string RvName(CK_RV rv);

// True when `rv` means our sessions, login or the device itself are gone: the connection must be
// rebuilt (re-initialise, re-open, log in again) before anything can work.
bool IsConnectionLost(CK_RV rv);

// What C_Decrypt answers, once C_DecryptInit took the key and IV, for a tag that does not verify.
// The standard code is CKR_ENCRYPTED_DATA_INVALID; SoftHSM says CKR_GENERAL_ERROR, others
// CKR_FUNCTION_FAILED or CKR_DATA_INVALID. It is the caller's bytes, not the device: never a probe
// failure, never an outage, so a flood of forged ciphertexts costs the device one operation each.
// Decided before IsConnectionLost, and only at that step (hsm/p11/gcm.cc).
bool IsTagMismatch(CK_RV rv);

// The token refused the PIN (incorrect, invalid, wrong length, expired, locked): PERMISSION_DENIED,
// never retried automatically (each try counts towards locking the token).
bool IsPinRejected(CK_RV rv);

// UNAVAILABLE when the connection is lost, INTERNAL otherwise. `what` names the failed step.
Status RvStatus(CK_RV rv, std::string_view what);

}  // namespace trousseau::hsm
