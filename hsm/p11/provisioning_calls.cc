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

StatusOr<KeyPairHandles> GenerateKeyPair(const Session& session, CK_MECHANISM_TYPE mechanism_type,
                                         AttributeTemplate& public_template, AttributeTemplate& private_template,
                                         std::string_view what) {
  CK_MECHANISM mechanism{mechanism_type, nullptr, 0};
  KeyPairHandles made;
  if (CK_RV rv = session.api()->C_GenerateKeyPair(session.handle(), &mechanism, public_template.data(),
                                                  public_template.size(), private_template.data(),
                                                  private_template.size(), &made.public_key, &made.private_key);
      rv != CKR_OK) {
    return RvStatus(rv, what);
  }
  return made;
}

}  // namespace trousseau::hsm::p11
