// What a module and a token say about themselves: C_GetInfo, C_GetTokenInfo, C_GetMechanismList and
// C_GetMechanismInfo, each wrapped once (the seam: raw C_* calls live in hsm/p11/). hsm/capabilities.h
// turns the answers into what trousseau-hsm can do with the token.
#pragma once

#include <optional>
#include <vector>

#include "core/status.h"
#include "hsm/pkcs11.h"

namespace trousseau::hsm::p11 {

// C_GetInfo: the module's manufacturer, library description and versions. Needs an initialised module.
StatusOr<CK_INFO> ModuleInfo(CK_FUNCTION_LIST* api);

// C_GetTokenInfo as a Status (calls.h's TokenInfo skips a slot that cannot answer; here it is an error).
StatusOr<CK_TOKEN_INFO> TokenInfoOf(CK_FUNCTION_LIST* api, CK_SLOT_ID slot);

// C_GetMechanismList of `slot`: once for the count, once for the list (again if it grew in between).
StatusOr<std::vector<CK_MECHANISM_TYPE>> MechanismList(CK_FUNCTION_LIST* api, CK_SLOT_ID slot);

// C_GetMechanismInfo: nullopt when the token does not know the mechanism (CKR_MECHANISM_INVALID),
// an error for any other refusal.
StatusOr<std::optional<CK_MECHANISM_INFO>> MechanismInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot,
                                                         CK_MECHANISM_TYPE mechanism);

}  // namespace trousseau::hsm::p11
