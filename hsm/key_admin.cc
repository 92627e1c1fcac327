#include "hsm/key_admin.h"

#include <string>

#include "core/strings.h"
#include "hsm/pkcs11_error.h"
#include "hsm/token.h"

namespace trousseau::hsm {

StatusOr<CK_OBJECT_HANDLE> GenerateKekVersion(const Session& session, std::string_view label, uint64_t version,
                                              KekOptions options) {
  if (version == 0) return InvalidArgumentError("key versions start at 1");
  const std::string id = VersionToId(version);
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_KEY_TYPE key_type = CKK_AES;
  CK_ULONG value_len = kAes256KeySize;
  CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
  CK_BBOOL modifiable = options.modifiable ? CK_TRUE : CK_FALSE;
  CK_ATTRIBUTE attrs[] = {
      {CKA_CLASS, &key_class, sizeof key_class},
      {CKA_KEY_TYPE, &key_type, sizeof key_type},
      {CKA_VALUE_LEN, &value_len, sizeof value_len},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
      {CKA_ID, const_cast<char*>(id.data()), id.size()},
      {CKA_TOKEN, &yes, sizeof yes},
      {CKA_PRIVATE, &yes, sizeof yes},
      {CKA_SENSITIVE, &yes, sizeof yes},
      {CKA_EXTRACTABLE, &no, sizeof no},
      {CKA_ENCRYPT, &yes, sizeof yes},
      {CKA_DECRYPT, &yes, sizeof yes},
      {CKA_WRAP, &no, sizeof no},
      {CKA_UNWRAP, &no, sizeof no},
      {CKA_SIGN, &no, sizeof no},
      {CKA_VERIFY, &no, sizeof no},
      {CKA_DERIVE, &no, sizeof no},
      {CKA_MODIFIABLE, &modifiable, sizeof modifiable},
  };
  CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  if (CK_RV rv = session.api()->C_GenerateKey(session.handle(), &mechanism, attrs, std::size(attrs), &handle);
      rv != CKR_OK) {
    return RvStatus(rv, StrCat("generating AES-256 key '", label, "' version ", version));
  }
  return handle;
}

Status DestroyKeyObject(const Session& session, CK_OBJECT_HANDLE object) {
  if (CK_RV rv = session.api()->C_DestroyObject(session.handle(), object); rv != CKR_OK) {
    return RvStatus(rv, "C_DestroyObject");
  }
  return OkStatus();
}

}  // namespace trousseau::hsm
