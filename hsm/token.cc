#include "hsm/token.h"

#include <algorithm>

#include "hsm/pin_source.h"
#include "hsm/pkcs11_error.h"
#include "core/status.h"
#include "core/strings.h"

namespace trousseau::hsm {
namespace {

CK_BYTE* Bytes(std::string_view s) { return reinterpret_cast<CK_BYTE*>(const_cast<char*>(s.data())); }

CK_GCM_PARAMS GcmParams(const GcmIv& iv, std::string_view aad) {
  CK_GCM_PARAMS params{};
  params.pIv = const_cast<CK_BYTE*>(iv.data());
  params.ulIvLen = iv.size();
  params.ulIvBits = iv.size() * 8;  // some modules read Len, some Bits (PKCS#11 2.40 errata)
  params.pAAD = Bytes(aad);
  params.ulAADLen = aad.size();
  params.ulTagBits = kGcmTagSize * 8;
  return params;
}

}  // namespace

StatusOr<TokenSlot> FindToken(CK_FUNCTION_LIST* api, const Pkcs11Uri& uri) {
  CK_ULONG count = 0;
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, nullptr, &count); rv != CKR_OK) {
    return RvStatus(rv, "C_GetSlotList");
  }
  std::vector<CK_SLOT_ID> slots(count);
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, slots.data(), &count); rv != CKR_OK) {
    return RvStatus(rv, "C_GetSlotList");
  }
  slots.resize(count);
  std::vector<TokenSlot> matches;
  for (CK_SLOT_ID slot : slots) {
    CK_SLOT_INFO slot_info{};
    if (api->C_GetSlotInfo(slot, &slot_info) != CKR_OK || !uri.MatchesSlot(slot_info, slot)) continue;
    TokenSlot candidate{slot, {}};
    if (api->C_GetTokenInfo(slot, &candidate.info) != CKR_OK) continue;
    if (!(candidate.info.flags & CKF_TOKEN_INITIALIZED)) continue;
    if (uri.MatchesToken(candidate.info)) matches.push_back(candidate);
  }
  if (matches.empty()) {
    return UnavailableError(StrCat("no ", uri.token_description(), " found in ", count,
                                               " slot(s) with a token of ", uri.module_path()));
  }
  if (matches.size() > 1) {
    std::vector<std::string> serials;
    for (const TokenSlot& m : matches) {
      serials.push_back(TrimPadded(m.info.serialNumber, sizeof m.info.serialNumber));
    }
    return FailedPreconditionError(StrCat(uri.token_description(), " matches ", matches.size(),
                                                      " tokens (serials ", StrJoin(serials, ", "),
                                                      "); add serial=... to the URI"));
  }
  return matches.front();
}

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write) {
  CK_SESSION_HANDLE handle = CK_INVALID_HANDLE;
  CK_FLAGS flags = CKF_SERIAL_SESSION | (read_write ? CKF_RW_SESSION : 0);
  if (CK_RV rv = api->C_OpenSession(slot, flags, nullptr, nullptr, &handle); rv != CKR_OK) {
    return RvStatus(rv, "C_OpenSession");
  }
  return Session(api, handle);
}

Status LoginUser(const Session& session, const TokenSlot& token, const std::optional<std::string>& pin_file) {
  StatusOr<std::optional<SecureBytes>> pin = LoadPin(pin_file);
  if (!pin.ok()) return pin.status();
  CK_RV rv;
  if (pin->has_value()) {
    rv = session.api()->C_Login(session.handle(), CKU_USER, (*pin)->data(), (*pin)->size());
  } else if (token.info.flags & CKF_PROTECTED_AUTHENTICATION_PATH) {
    rv = session.api()->C_Login(session.handle(), CKU_USER, nullptr, 0);
  } else if (token.info.flags & CKF_LOGIN_REQUIRED) {
    return FailedPreconditionError(StrCat(
        "the token needs a PIN: add pin-source=file:/path to the URI or set ", kPinEnvVar));
  } else {
    return OkStatus();
  }
  switch (rv) {
    case CKR_OK:
    case CKR_USER_ALREADY_LOGGED_IN:
      return OkStatus();
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
      return PermissionDeniedError(StrCat("the token rejected the user PIN (", RvName(rv), ")"));
    default:
      return RvStatus(rv, "C_Login");
  }
}

StatusOr<std::vector<KeyObject>> ListKeyFamily(const Session& session, std::string_view label) {
  CK_FUNCTION_LIST* api = session.api();
  CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
  CK_BBOOL on_token = CK_TRUE;  // not our own in-session copies of the keys
  CK_ATTRIBUTE query[] = {
      {CKA_CLASS, &key_class, sizeof key_class},
      {CKA_LABEL, Bytes(label), label.size()},
      {CKA_TOKEN, &on_token, sizeof on_token},
  };
  if (CK_RV rv = api->C_FindObjectsInit(session.handle(), query, std::size(query)); rv != CKR_OK) {
    return RvStatus(rv, "C_FindObjectsInit");
  }
  std::vector<CK_OBJECT_HANDLE> handles;
  CK_OBJECT_HANDLE batch[32];
  CK_ULONG found = 0;
  CK_RV rv;
  while ((rv = api->C_FindObjects(session.handle(), batch, 32, &found)) == CKR_OK && found > 0) {
    handles.insert(handles.end(), batch, batch + found);
  }
  api->C_FindObjectsFinal(session.handle());
  if (rv != CKR_OK) return RvStatus(rv, "C_FindObjects");

  std::vector<KeyObject> keys;
  for (CK_OBJECT_HANDLE handle : handles) {
    KeyObject key;
    key.handle = handle;
    CK_BBOOL sensitive, extractable, always_sensitive, never_extractable, local, encrypt, decrypt, wrap, unwrap,
        sign, verify, derive, modifiable, is_private;
    CK_BYTE id[64];
    CK_ATTRIBUTE attrs[] = {
        {CKA_ID, id, sizeof id},
        {CKA_KEY_TYPE, &key.key_type, sizeof key.key_type},
        {CKA_VALUE_LEN, &key.value_len, sizeof key.value_len},
        {CKA_SENSITIVE, &sensitive, sizeof sensitive},
        {CKA_EXTRACTABLE, &extractable, sizeof extractable},
        {CKA_ALWAYS_SENSITIVE, &always_sensitive, sizeof always_sensitive},
        {CKA_NEVER_EXTRACTABLE, &never_extractable, sizeof never_extractable},
        {CKA_LOCAL, &local, sizeof local},
        {CKA_ENCRYPT, &encrypt, sizeof encrypt},
        {CKA_DECRYPT, &decrypt, sizeof decrypt},
        {CKA_WRAP, &wrap, sizeof wrap},
        {CKA_UNWRAP, &unwrap, sizeof unwrap},
        {CKA_SIGN, &sign, sizeof sign},
        {CKA_VERIFY, &verify, sizeof verify},
        {CKA_DERIVE, &derive, sizeof derive},
        {CKA_MODIFIABLE, &modifiable, sizeof modifiable},
        {CKA_PRIVATE, &is_private, sizeof is_private},
    };
    // Attributes a module does not report come back with ulValueLen = -1 (CKR_ATTRIBUTE_TYPE_INVALID);
    // they keep their safe defaults (e.g. extractable = true, so an unknown key is refused).
    rv = api->C_GetAttributeValue(session.handle(), handle, attrs, std::size(attrs));
    if (rv != CKR_OK && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_ATTRIBUTE_SENSITIVE) {
      return RvStatus(rv, "C_GetAttributeValue");
    }
    auto flag = [&](const CK_ATTRIBUTE& a, bool fallback) {
      return a.ulValueLen == sizeof(CK_BBOOL) ? *static_cast<CK_BBOOL*>(a.pValue) == CK_TRUE : fallback;
    };
    const CK_ULONG id_len = attrs[0].ulValueLen;
    if (id_len == 0 || id_len > 8) {
      return FailedPreconditionError(StrCat(
          "a key labelled '", label, "' has a CKA_ID of ", static_cast<long>(id_len),
          " bytes; the CKA_ID of a family member is its version, 1 to 8 bytes big-endian (e.g. 01)"));
    }
    key.id.assign(reinterpret_cast<char*>(id), id_len);
    for (unsigned char b : key.id) key.version = (key.version << 8) | b;
    if (key.version == 0) {
      return FailedPreconditionError(StrCat("a key labelled '", label, "' has version 0; versions start at 1"));
    }
    if (attrs[1].ulValueLen != sizeof(CK_KEY_TYPE)) key.key_type = static_cast<CK_KEY_TYPE>(-1);
    if (attrs[2].ulValueLen != sizeof(CK_ULONG)) key.value_len = 0;
    key.sensitive = flag(attrs[3], false);
    key.extractable = flag(attrs[4], true);
    key.always_sensitive = flag(attrs[5], false);
    key.never_extractable = flag(attrs[6], false);
    key.local = flag(attrs[7], false);
    key.encrypt = flag(attrs[8], false);
    key.decrypt = flag(attrs[9], false);
    key.wrap = flag(attrs[10], false);
    key.unwrap = flag(attrs[11], false);
    key.sign = flag(attrs[12], false);
    key.verify = flag(attrs[13], false);
    key.derive = flag(attrs[14], false);
    key.modifiable = flag(attrs[15], true);
    key.is_private = flag(attrs[16], false);
    keys.push_back(std::move(key));
  }
  std::sort(keys.begin(), keys.end(), [](const KeyObject& a, const KeyObject& b) { return a.version < b.version; });
  return keys;
}

std::string KekPolicyViolation(const KeyObject& key) {
  if (key.key_type != CKK_AES) return "it is not an AES key";
  if (key.value_len != kAes256KeySize) return StrCat("it is AES-", key.value_len * 8, ", not AES-256");
  if (key.extractable) return "it is extractable (CKA_EXTRACTABLE=true): its value could leave the HSM";
  if (!key.sensitive) return "it is not sensitive (CKA_SENSITIVE=false): its value could be read";
  if (!key.is_private) {
    return "it is not private (CKA_PRIVATE=false): any process that can open a session could use it without the PIN";
  }
  if (!key.encrypt || !key.decrypt) return "it may not encrypt and decrypt (CKA_ENCRYPT/CKA_DECRYPT)";
  return "";
}

std::string VersionToId(uint64_t version) {
  std::string id;
  do {
    id.insert(id.begin(), static_cast<char>(version & 0xff));
    version >>= 8;
  } while (version != 0);
  return id;
}

StatusOr<std::string> KeyFingerprint(const Session& session, CK_OBJECT_HANDLE key) {
  std::string tag;
  if (CK_RV rv = GcmSeal(session, key, NonceSequence::FingerprintIv(), kFingerprintAad, "", tag); rv != CKR_OK) {
    return RvStatus(rv, "computing the key fingerprint (AES-GCM on the device)");
  }
  return tag;
}

CK_RV GcmSeal(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
              std::string_view plaintext, std::string& out) {
  CK_GCM_PARAMS params = GcmParams(iv, aad);
  CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_EncryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return rv;
  out.resize(plaintext.size() + kGcmTagSize);
  CK_ULONG out_len = out.size();
  static const char kEmpty[1] = {0};
  CK_BYTE* in = Bytes(plaintext.empty() ? std::string_view(kEmpty, 0) : plaintext);
  CK_RV rv = api->C_Encrypt(session.handle(), in, plaintext.size(), reinterpret_cast<CK_BYTE*>(out.data()), &out_len);
  if (rv != CKR_OK) return rv;
  if (out_len != plaintext.size() + kGcmTagSize) return CKR_GENERAL_ERROR;
  return CKR_OK;
}

CK_RV GcmOpen(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
              std::string_view in, SecureBytes& out, bool* reached_tag_check) {
  if (in.size() < kGcmTagSize) return CKR_ENCRYPTED_DATA_LEN_RANGE;
  CK_GCM_PARAMS params = GcmParams(iv, aad);
  CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_DecryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return rv;
  if (reached_tag_check != nullptr) *reached_tag_check = true;
  // Some modules want room for the whole input before they strip the tag.
  SecureBytes plain(in.size());
  CK_ULONG out_len = plain.size();
  CK_RV rv = api->C_Decrypt(session.handle(), Bytes(in), in.size(), plain.data(), &out_len);
  if (rv != CKR_OK) return rv;
  if (out_len != in.size() - kGcmTagSize) return CKR_GENERAL_ERROR;
  plain.Truncate(out_len);
  out = std::move(plain);
  return CKR_OK;
}

StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key) {
  CK_BBOOL session_only = CK_FALSE;
  CK_ATTRIBUTE copy_template[] = {{CKA_TOKEN, &session_only, sizeof session_only}};
  CK_OBJECT_HANDLE copy = CK_INVALID_HANDLE;
  if (CK_RV rv = session.api()->C_CopyObject(session.handle(), key, copy_template, 1, &copy); rv != CKR_OK) {
    return RvStatus(rv, "C_CopyObject");
  }
  return copy;
}

}  // namespace trousseau::hsm
