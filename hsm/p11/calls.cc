#include "hsm/p11/calls.h"

#include "core/strings.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {

StatusOr<std::vector<CK_SLOT_ID>> SlotsWithToken(CK_FUNCTION_LIST* api) {
  CK_ULONG count = 0;
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, nullptr, &count); rv != CKR_OK) return RvStatus(rv, "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, slots.data(), &count); rv != CKR_OK) {
    return RvStatus(rv, "C_GetSlotList");
  }
  slots.resize(count);
  return slots;
}

std::optional<CK_SLOT_INFO> SlotInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot) {
  CK_SLOT_INFO info{};
  if (api->C_GetSlotInfo(slot, &info) != CKR_OK) return std::nullopt;
  return info;
}

std::optional<CK_TOKEN_INFO> TokenInfo(CK_FUNCTION_LIST* api, CK_SLOT_ID slot) {
  CK_TOKEN_INFO info{};
  if (api->C_GetTokenInfo(slot, &info) != CKR_OK) return std::nullopt;
  return info;
}

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write) {
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  CK_FLAGS flags = CKF_SERIAL_SESSION | (read_write ? CKF_RW_SESSION : 0);
  if (CK_RV rv = api->C_OpenSession(slot, flags, nullptr, nullptr, &handle); rv != CKR_OK) {
    return RvStatus(rv, "C_OpenSession");
  }
  return Session(api, handle);
}

Status Login(const Session& session, CK_USER_TYPE user, const SecureBytes* pin, std::string_view which_pin,
             std::string_view step, CK_RV* answered) {
  CK_UTF8CHAR* bytes = pin != nullptr ? const_cast<CK_UTF8CHAR*>(pin->data()) : nullptr;
  const CK_RV rv = session.api()->C_Login(session.handle(), user, bytes, pin != nullptr ? pin->size() : 0);
  if (answered != nullptr) *answered = rv;
  if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) return OkStatus();
  if (IsPinRejected(rv)) {
    return PermissionDeniedError(
        StrCat(step, step.empty() ? "" : ": ", "the token rejected the ", which_pin, " (", RvName(rv), ")"));
  }
  return RvStatus(rv, step.empty() ? "C_Login" : step);
}

void Logout(const Session& session) { session.api()->C_Logout(session.handle()); }

StatusOr<CK_OBJECT_HANDLE> GenerateKey(const Session& session, CK_MECHANISM_TYPE mechanism_type,
                                       AttributeTemplate& key_template, std::string_view what) {
  CK_MECHANISM mechanism{mechanism_type, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  if (CK_RV rv =
          session.api()->C_GenerateKey(session.handle(), &mechanism, key_template.data(), key_template.size(), &handle);
      rv != CKR_OK) {
    return RvStatus(rv, what);
  }
  return handle;
}

Status DestroyObject(const Session& session, CK_OBJECT_HANDLE object) {
  if (CK_RV rv = session.api()->C_DestroyObject(session.handle(), object); rv != CKR_OK) {
    return RvStatus(rv, "C_DestroyObject");
  }
  return OkStatus();
}

StatusOr<CK_OBJECT_HANDLE> CopyToSession(const Session& session, CK_OBJECT_HANDLE key) {
  AttributeTemplate copy_template;
  copy_template.Add(CKA_TOKEN, false);
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  if (CK_RV rv = session.api()->C_CopyObject(session.handle(), key, copy_template.data(), copy_template.size(), &copy);
      rv != CKR_OK) {
    return RvStatus(rv, "C_CopyObject");
  }
  return copy;
}

}  // namespace trousseau::hsm::p11
