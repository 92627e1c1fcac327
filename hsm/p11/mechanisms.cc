#include "hsm/p11/mechanisms.h"

#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {

StatusOr<CK_INFO> ModuleInfo(CK_FUNCTION_LIST* api) {
  CK_INFO info{};
  if (CK_RV rv = api->C_GetInfo(&info); rv != CKR_OK) return RvStatus(rv, "C_GetInfo");
  return info;
}

StatusOr<CK_TOKEN_INFO> TokenInfoOf(CK_FUNCTION_LIST* api, CK_SLOT_ID slot) {
  CK_TOKEN_INFO info{};
  if (CK_RV rv = api->C_GetTokenInfo(slot, &info); rv != CKR_OK) return RvStatus(rv, "C_GetTokenInfo");
  return info;
}

StatusOr<std::vector<CK_MECHANISM_TYPE>> MechanismList(CK_FUNCTION_LIST* api, CK_SLOT_ID slot) {
  // A module may add mechanisms between the two calls (CKR_BUFFER_TOO_SMALL): ask again a few times.
  for (int attempt = 0; attempt < 3; ++attempt) {
    CK_ULONG count = 0;
    if (CK_RV rv = api->C_GetMechanismList(slot, nullptr, &count); rv != CKR_OK) {
      return RvStatus(rv, "C_GetMechanismList");
    }
    std::vector<CK_MECHANISM_TYPE> mechanisms(count);
    const CK_RV rv = api->C_GetMechanismList(slot, mechanisms.data(), &count);
    if (rv == CKR_BUFFER_TOO_SMALL) continue;
    if (rv != CKR_OK) return RvStatus(rv, "C_GetMechanismList");
    mechanisms.resize(count);
    return mechanisms;
  }
  return RvStatus(CKR_BUFFER_TOO_SMALL, "C_GetMechanismList (the list kept growing)");
}

StatusOr<std::optional<CK_MECHANISM_INFO>> MechanismInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot,
                                                         CK_MECHANISM_TYPE mechanism) {
  CK_MECHANISM_INFO info{};
  const CK_RV rv = api->C_GetMechanismInfo(slot, mechanism, &info);
  if (rv == CKR_MECHANISM_INVALID) return std::optional<CK_MECHANISM_INFO>();
  if (rv != CKR_OK) return RvStatus(rv, "C_GetMechanismInfo");
  return std::optional<CK_MECHANISM_INFO>(info);
}

}  // namespace trousseau::hsm::p11
