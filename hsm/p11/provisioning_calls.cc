#include "hsm/p11/provisioning_calls.h"

#include "core/strings.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {
namespace {

CK_UTF8CHAR* PinBytes(const SecureBytes& pin) { return const_cast<CK_UTF8CHAR*>(pin.data()); }

Status PinStatus(CK_RV rv, std::string_view which, std::string_view step) {
  if (IsPinRejected(rv)) {
    return PermissionDeniedError(StrCat(step, ": the token rejected the ", which, " (", RvName(rv), ")"));
  }
  return RvStatus(rv, step);
}

}  // namespace

Status InitToken(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, const SecureBytes& so_pin, std::string_view padded_label) {
  CK_UTF8CHAR* label = reinterpret_cast<CK_UTF8CHAR*>(const_cast<char*>(padded_label.data()));
  if (CK_RV rv = api->C_InitToken(slot, PinBytes(so_pin), so_pin.size(), label); rv != CKR_OK) {
    return PinStatus(rv, "SO PIN", "C_InitToken");
  }
  return OkStatus();
}

Status InitUserPin(const Session& session, const SecureBytes& user_pin) {
  if (CK_RV rv = session.api()->C_InitPIN(session.handle(), PinBytes(user_pin), user_pin.size()); rv != CKR_OK) {
    return PinStatus(rv, "user PIN", "C_InitPIN");
  }
  return OkStatus();
}

}  // namespace trousseau::hsm::p11
