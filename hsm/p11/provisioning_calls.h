// The seam's provisioning calls (token initialisation), built into trousseau_hsm_provisioning only, so
// the plugin binary carries no code that can initialise a token.
#pragma once

#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// C_InitToken on `slot` with the SO PIN and `padded_label` (exactly 32 bytes, space-padded).
// A PIN the token refuses gives PERMISSION_DENIED.
Status InitToken(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, const SecureBytes& so_pin, std::string_view padded_label);

// C_InitPIN (the session is logged in as SO) with the user PIN.
Status InitUserPin(const Session& session, const SecureBytes& user_pin);

}  // namespace trousseau::hsm::p11
