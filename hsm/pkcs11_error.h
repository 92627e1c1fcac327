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

// UNAVAILABLE when the connection is lost, INTERNAL otherwise. `what` names the failed step.
Status RvStatus(CK_RV rv, std::string_view what);

}  // namespace trousseau::hsm
