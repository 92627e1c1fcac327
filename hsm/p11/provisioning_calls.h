// The seam's provisioning calls (token initialisation), built into trousseau_hsm_provisioning only, so
// the plugin binary carries no code that can initialise a token.
#pragma once

#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/p11/attributes.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// C_InitToken on `slot` with the SO PIN and `padded_label` (exactly 32 bytes, space-padded).
// A PIN the token refuses gives PERMISSION_DENIED.
Status InitToken(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, const SecureBytes& so_pin, std::string_view padded_label);

// C_InitPIN (the session is logged in as SO) with the user PIN.
Status InitUserPin(const Session& session, const SecureBytes& user_pin);

struct KeyPairHandles {
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
};
// C_GenerateKeyPair with `mechanism` (no parameters) and the two templates. `what` names the step in
// errors. (Only recipient keys are key pairs, and only provisioning makes them.)
StatusOr<KeyPairHandles> GenerateKeyPair(const Session& session, CK_MECHANISM_TYPE mechanism,
                                         AttributeTemplate& public_template, AttributeTemplate& private_template,
                                         std::string_view what);

}  // namespace trousseau::hsm::p11
