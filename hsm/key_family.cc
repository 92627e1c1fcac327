#include "hsm/key_family.h"

#include <algorithm>
#include <set>
#include <span>

#include "core/big_endian.h"
#include "core/nonce_sequence.h"
#include "core/strings.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/gcm.h"
#include "hsm/p11/object_finder.h"

namespace trousseau::hsm {
namespace {

// Every attribute ListKeyFamily reads, with room for its value.
const std::vector<p11::AttributeReader::Request>& KeyAttributeRequests() {
  static const std::vector<p11::AttributeReader::Request> requests = [] {
    std::vector<p11::AttributeReader::Request> r = {
        {CKA_ID, 64}, {CKA_KEY_TYPE, sizeof(CK_KEY_TYPE)}, {CKA_VALUE_LEN, sizeof(CK_ULONG)}};
    for (CK_ATTRIBUTE_TYPE flag :
         {CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL, CKA_ENCRYPT,
          CKA_DECRYPT, CKA_WRAP, CKA_UNWRAP, CKA_SIGN, CKA_VERIFY, CKA_DERIVE, CKA_MODIFIABLE, CKA_PRIVATE}) {
      r.push_back({flag, sizeof(CK_BBOOL)});
    }
    return r;
  }();
  return requests;
}

// The version a family member's CKA_ID carries: 1 to 8 bytes big-endian, at least 1.
StatusOr<uint64_t> VersionOf(std::string_view label, const std::optional<std::string>& id) {
  const size_t id_len = id ? id->size() : 0;
  if (id_len == 0 || id_len > 8) {
    return FailedPreconditionError(
        StrCat("a key labelled '", label, "' has a CKA_ID of ", id ? static_cast<long>(id_len) : -1L,
               " bytes; the CKA_ID of a family member is its version, 1 to 8 bytes big-endian (e.g. 01)"));
  }
  const uint64_t version =
      LoadBigEndian(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(id->data()), id->size()));
  if (version == 0)
    return FailedPreconditionError(StrCat("a key labelled '", label, "' has version 0; versions start at 1"));
  return version;
}

// One family member as its attributes describe it. Attributes the module does not report keep safe
// defaults (e.g. extractable = true, so an unknown key is refused).
StatusOr<KeyObject> ReadKeyObject(const Session& session, std::string_view label, CK_OBJECT_HANDLE handle) {
  StatusOr<p11::AttributeReader> attrs = p11::AttributeReader::Read(session, handle, KeyAttributeRequests());
  if (!attrs.ok()) return attrs.status();
  KeyObject key;
  key.handle = handle;
  std::optional<std::string> id = attrs->Bytes(CKA_ID);
  StatusOr<uint64_t> version = VersionOf(label, id);
  if (!version.ok()) return version.status();
  key.version = *version;
  key.id = *id;
  key.key_type = attrs->Ulong(CKA_KEY_TYPE).value_or(kUnknownKeyType);
  key.value_len = attrs->Ulong(CKA_VALUE_LEN).value_or(0);
  key.sensitive = attrs->Bool(CKA_SENSITIVE).value_or(false);
  key.extractable = attrs->Bool(CKA_EXTRACTABLE).value_or(true);
  key.always_sensitive = attrs->Bool(CKA_ALWAYS_SENSITIVE).value_or(false);
  key.never_extractable = attrs->Bool(CKA_NEVER_EXTRACTABLE).value_or(false);
  key.local = attrs->Bool(CKA_LOCAL).value_or(false);
  key.encrypt = attrs->Bool(CKA_ENCRYPT).value_or(false);
  key.decrypt = attrs->Bool(CKA_DECRYPT).value_or(false);
  key.wrap = attrs->Bool(CKA_WRAP).value_or(false);
  key.unwrap = attrs->Bool(CKA_UNWRAP).value_or(false);
  key.sign = attrs->Bool(CKA_SIGN).value_or(false);
  key.verify = attrs->Bool(CKA_VERIFY).value_or(false);
  key.derive = attrs->Bool(CKA_DERIVE).value_or(false);
  key.modifiable = attrs->Bool(CKA_MODIFIABLE).value_or(true);
  key.is_private = attrs->Bool(CKA_PRIVATE).value_or(false);
  return key;
}

}  // namespace

StatusOr<std::vector<KeyObject>> ListKeyFamily(const Session& session, std::string_view label) {
  p11::AttributeTemplate query;
  query.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY}).Add(CKA_LABEL, label);
  query.Add(CKA_TOKEN, true);  // not our own in-session copies of the keys
  StatusOr<std::vector<CK_OBJECT_HANDLE>> handles = p11::FindObjects(session, query);
  if (!handles.ok()) return handles.status();
  std::vector<KeyObject> keys;
  for (CK_OBJECT_HANDLE handle : *handles) {
    StatusOr<KeyObject> key = ReadKeyObject(session, label, handle);
    if (!key.ok()) return key.status();
    keys.push_back(*std::move(key));
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

std::string KekFamilyViolation(const std::vector<KeyObject>& keys, bool count_duplicates) {
  std::set<uint64_t> versions;
  for (const KeyObject& key : keys) {
    if (std::string why = KekPolicyViolation(key); !why.empty()) return StrCat("version ", key.version, ": ", why);
    if (!versions.insert(key.version).second && count_duplicates) {
      return StrCat("there are two keys with version ", key.version);
    }
  }
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
  if (Status s = GcmSeal(session, key, NonceSequence::FingerprintIv(), kFingerprintAad, "", tag,
                         "computing the key fingerprint (AES-GCM on the device)");
      !s.ok()) {
    return s;
  }
  return tag;
}

StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key) {
  return p11::CopyToSession(session, key);
}

}  // namespace trousseau::hsm
