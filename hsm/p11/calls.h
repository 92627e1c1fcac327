// The PKCS#11 seam: every raw C_* call of the project is made in hsm/p11/ (and the RAII owners in
// hsm/pkcs11_module.h), each wrapped once with one error policy: a failed call becomes a Status
// through RvStatus (hsm/pkcs11_error.h), so UNAVAILABLE always means "the connection is lost,
// rebuild it" and INTERNAL anything else. Callers above this layer never see a CK_RV.
// ci/check-seams fails the build's tests if a C_ call or a CK_ type appears outside hsm/.
#pragma once

#include <optional>
#include <string_view>
#include <vector>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/p11/attributes.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// Every slot that holds a token: C_GetSlotList once for the count, once for the list.
StatusOr<std::vector<CK_SLOT_ID>> SlotsWithToken(CK_FUNCTION_LIST* api);

// C_GetSlotInfo / C_GetTokenInfo; nullopt when the module cannot answer for that slot (callers skip it).
std::optional<CK_SLOT_INFO> SlotInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot);
std::optional<CK_TOKEN_INFO> TokenInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot);

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write);

// C_Login as `user` (CKU_USER or CKU_SO). An empty `pin` with `protected_path` logs in through the
// device's own PIN pad. Already logged in is success. A PIN the token refuses gives PERMISSION_DENIED
// "<step>: the token rejected the <which_pin> (CKR_...)" (never retry it: the token locks); anything
// else goes through RvStatus. `answered`, when given, receives what C_Login returned.
Status Login(const Session& session, CK_USER_TYPE user, const SecureBytes* pin, std::string_view which_pin,
             std::string_view step, CK_RV* answered = nullptr);
void Logout(const Session& session);

// C_GenerateKey with `mechanism` (no parameters) and `key_template`. `what` names the step in errors.
StatusOr<CK_OBJECT_HANDLE> GenerateKey(const Session& session, CK_MECHANISM_TYPE mechanism,
                                       AttributeTemplate& key_template, std::string_view what);

Status DestroyObject(const Session& session, CK_OBJECT_HANDLE object);

// C_CopyObject with CKA_TOKEN=false: a copy of `key` that lives (and ends) with `session`, as sensitive
// and non-extractable as the original.
StatusOr<CK_OBJECT_HANDLE> CopyToSession(const Session& session, CK_OBJECT_HANDLE key);

}  // namespace trousseau::hsm::p11
