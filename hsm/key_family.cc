#include "hsm/key_family.h"

#include <algorithm>
#include <map>
#include <set>
#include <span>

#include "core/big_endian.h"
#include "core/nonce_sequence.h"
#include "core/strings.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/cbc_hmac.h"
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

// Token text (labels) made printable for a message, at most 64 bytes shown.
std::string Printable(std::string_view text) {
  std::string quoted = QuoteForMessage(text, 64);  // "text" or "text"...
  const size_t close = quoted.rfind('"');
  return quoted.substr(1, close - 1) + quoted.substr(close + 1);
}

// CKA_ID bytes for a message: hex, the first 32 bytes.
std::string IdHex(std::string_view id) {
  return id.size() <= 32 ? HexEncode(id) : StrCat(HexEncode(id.substr(0, 32)), "... (", id.size(), " bytes)");
}

// Printable ASCII, as text typed into a tool's --id would be.
bool LooksLikeText(std::string_view id) {
  return id.size() >= 2 && std::all_of(id.begin(), id.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

uint64_t VersionFromId(std::string_view id) {
  return LoadBigEndian(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(id.data()), id.size()));
}

// The version a family member's CKA_ID carries (VersionIdProblem says which ones are refused).
StatusOr<uint64_t> VersionOf(std::string_view label, const std::optional<std::string>& id) {
  if (std::string why = VersionIdProblem(label, id.value_or("")); !why.empty()) return FailedPreconditionError(why);
  return VersionFromId(*id);
}

// One family member as its attributes describe it. Attributes the module does not report keep safe
// defaults (e.g. extractable = true, so an unknown key is refused).
// nullopt: the object is gone (destroyed by another process since it was found).
StatusOr<std::optional<KeyObject>> ReadKeyObject(const Session& session, std::string_view label,
                                                 CK_OBJECT_HANDLE handle) {
  StatusOr<std::optional<p11::AttributeReader>> read =
      p11::AttributeReader::ReadIfPresent(session, handle, KeyAttributeRequests());
  if (!read.ok()) return read.status();
  if (!read->has_value()) return std::optional<KeyObject>();
  const p11::AttributeReader* attrs = &**read;
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
  return std::optional<KeyObject>(std::move(key));
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
    StatusOr<std::optional<KeyObject>> key = ReadKeyObject(session, label, handle);
    if (!key.ok()) return key.status();
    if (key->has_value()) keys.push_back(**std::move(key));
  }
  std::sort(keys.begin(), keys.end(), [](const KeyObject& a, const KeyObject& b) { return a.version < b.version; });
  return keys;
}

std::string VersionIdProblem(std::string_view label, std::string_view id) {
  constexpr std::string_view kHow =
      "; trousseau-hsm-init writes the version as big-endian bytes, e.g. 01 for version 1, 0100 for 256. Remove the "
      "key, or give it the CKA_ID of the version it should be, with the token's own tools";
  const std::string key = StrCat("a key labelled '", Printable(label), "'");
  if (id.empty()) return StrCat(key, " has no CKA_ID; the CKA_ID of a family member is its version", kHow);
  if (id.size() > 8) {
    return StrCat(key, " has CKA_ID ", IdHex(id), ", ", id.size(), " bytes: a version is 1 to 8 bytes", kHow);
  }
  if (VersionFromId(id) == 0) return StrCat(key, " has CKA_ID ", IdHex(id), ", version 0; versions start at 1", kHow);
  if (id.front() == 0) {
    return StrCat(key, " has CKA_ID ", IdHex(id), ", which starts with a zero byte: not how a version is written (",
                  HexEncode(VersionToId(VersionFromId(id))), " is version ", VersionFromId(id),
                  "), and two objects could then name one version", kHow);
  }
  if (LooksLikeText(id)) {
    return StrCat(key, " has CKA_ID ", IdHex(id), ", which looks like ASCII text '", Printable(id),
                  "' (tpm2_ptool writes IDs that way), not a version; refused rather than read as version ",
                  VersionFromId(id), kHow);
  }
  return "";
}

bool IdIsWritable(uint64_t version) { return version != 0 && VersionIdProblem("", VersionToId(version)).empty(); }

StatusOr<std::vector<TokenSecretKey>> ListTokenSecretKeys(const Session& session) {
  p11::AttributeTemplate query;
  query.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY}).Add(CKA_TOKEN, true);
  StatusOr<std::vector<CK_OBJECT_HANDLE>> handles = p11::FindObjects(session, query);
  if (!handles.ok()) return handles.status();
  static const std::vector<p11::AttributeReader::Request> kRequests = {{CKA_LABEL, 256}, {CKA_ID, 64}};
  std::vector<TokenSecretKey> keys;
  for (CK_OBJECT_HANDLE handle : *handles) {
    StatusOr<std::optional<p11::AttributeReader>> attrs =
        p11::AttributeReader::ReadIfPresent(session, handle, kRequests);
    if (!attrs.ok()) return attrs.status();
    if (!attrs->has_value()) continue;  // destroyed since it was found
    const p11::AttributeReader& found = **attrs;
    keys.push_back(
        {.handle = handle, .label = found.Bytes(CKA_LABEL).value_or(""), .id = found.Bytes(CKA_ID).value_or("")});
  }
  return keys;
}

StatusOr<size_t> CountOtherObjectsLabelled(const Session& session, std::string_view label) {
  p11::AttributeTemplate query;
  query.Add(CKA_LABEL, label).Add(CKA_TOKEN, true);
  StatusOr<std::vector<CK_OBJECT_HANDLE>> all = p11::FindObjects(session, query);
  if (!all.ok()) return all.status();
  p11::AttributeTemplate secret;
  secret.Add(CKA_LABEL, label).Add(CKA_TOKEN, true).Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY});
  StatusOr<std::vector<CK_OBJECT_HANDLE>> keys = p11::FindObjects(session, secret);
  if (!keys.ok()) return keys.status();
  return all->size() - std::min(all->size(), keys->size());
}

std::string DescribeSecretKey(const TokenSecretKey& key) {
  if (key.label.empty()) return StrCat("a secret key with no label (CKA_ID ", IdHex(key.id), ")");
  if (VersionIdProblem(key.label, key.id).empty()) {
    return StrCat("family '", Printable(key.label), "' version ", VersionFromId(key.id), " (CKA_ID ", IdHex(key.id),
                  ")");
  }
  return StrCat("the secret key '", Printable(key.label), "' (CKA_ID ", IdHex(key.id), ")");
}

KeyRole RoleOf(const KeyObject& key) {
  return key.key_type == CKK_GENERIC_SECRET || key.key_type == CKK_SHA256_HMAC ? KeyRole::kMac : KeyRole::kCipher;
}

std::string KekPolicyViolation(const KeyObject& key) {
  const bool mac = RoleOf(key) == KeyRole::kMac;
  if (mac) {
    if (key.value_len != kHmacKeySize) {
      return StrCat("it is an HMAC key of ", key.value_len * 8, " bits, not ", kHmacKeySize * 8);
    }
  } else {
    if (key.key_type != CKK_AES) return "it is not an AES key";
    if (key.value_len != kAes256KeySize) return StrCat("it is AES-", key.value_len * 8, ", not AES-256");
  }
  if (key.extractable) return "it is extractable (CKA_EXTRACTABLE=true): its value could leave the HSM";
  if (!key.sensitive) return "it is not sensitive (CKA_SENSITIVE=false): its value could be read";
  if (!key.is_private) {
    return "it is not private (CKA_PRIVATE=false): any process that can open a session could use it without the PIN";
  }
  if (mac && (!key.sign || !key.verify)) return "the HMAC key may not sign and verify (CKA_SIGN/CKA_VERIFY)";
  if (!mac && (!key.encrypt || !key.decrypt)) return "it may not encrypt and decrypt (CKA_ENCRYPT/CKA_DECRYPT)";
  return "";
}

std::vector<std::string> KekPolicyWarnings(const KeyObject& key) {
  const bool mac = RoleOf(key) == KeyRole::kMac;
  std::vector<std::string> warnings;
  std::vector<std::string> extra;
  if (mac && key.encrypt) extra.push_back("encrypt");
  if (mac && key.decrypt) extra.push_back("decrypt");
  if (key.wrap) extra.push_back("wrap");
  if (key.unwrap) extra.push_back("unwrap");
  if (!mac && key.sign) extra.push_back("sign");
  if (!mac && key.verify) extra.push_back("verify");
  if (key.derive) extra.push_back("derive");
  if (!extra.empty()) {
    warnings.push_back(StrCat("extra usages ", StrJoin(extra, ", "),
                              mac ? ": an HMAC key needs only sign and verify"
                                  : ": a KEK needs only encrypt and decrypt (unwrap could import keys under it)"));
  }
  if (key.modifiable) {
    warnings.push_back("modifiable (CKA_MODIFIABLE=true): its label, id or usages can still be changed");
  }
  if (!key.always_sensitive || !key.never_extractable) {
    warnings.push_back("it was not always sensitive and never extractable: its value may exist outside the token");
  }
  return warnings;
}

std::string KekFamilyViolation(const std::vector<KeyObject>& keys, bool count_duplicates) {
  std::set<uint64_t> ciphers;
  std::set<uint64_t> macs;
  for (const KeyObject& key : keys) {
    if (std::string why = KekPolicyViolation(key); !why.empty()) return StrCat("version ", key.version, ": ", why);
    const bool mac = RoleOf(key) == KeyRole::kMac;
    if (!(mac ? macs : ciphers).insert(key.version).second && count_duplicates) {
      return StrCat("there are two ", mac ? "HMAC" : "AES", " keys with version ", key.version);
    }
  }
  for (uint64_t version : macs) {
    if (!ciphers.contains(version)) {
      return StrCat("version ", version, " has an HMAC key but no AES key (an aes-cbc-hmac version needs both)");
    }
  }
  return "";
}

std::vector<KeyVersion> GroupKeyVersions(const std::vector<KeyObject>& keys) {
  std::map<uint64_t, KeyVersion> versions;
  for (const KeyObject& key : keys) {  // ciphers first, so a MAC key always finds its version's entry
    if (RoleOf(key) != KeyRole::kCipher || versions.contains(key.version)) continue;
    KeyVersion& v = versions[key.version];
    v.version = key.version;
    v.cipher = key;
    v.mac.handle = kNoObject;
  }
  for (const KeyObject& key : keys) {
    if (RoleOf(key) != KeyRole::kMac) continue;
    auto v = versions.find(key.version);
    if (v == versions.end() || v->second.scheme == KeyScheme::kAesCbcHmac) continue;
    v->second.scheme = KeyScheme::kAesCbcHmac;
    v->second.mac = key;
  }
  std::vector<KeyVersion> grouped;
  for (auto& [version, v] : versions) grouped.push_back(std::move(v));
  return grouped;
}

VersionHandles HandlesOf(const KeyVersion& version) {
  return {.scheme = version.scheme,
          .cipher = version.cipher.handle,
          .mac = version.scheme == KeyScheme::kAesCbcHmac ? version.mac.handle : kNoObject};
}

std::string VersionToId(uint64_t version) {
  std::string id;
  do {
    id.insert(id.begin(), static_cast<char>(version & 0xff));
    version >>= 8;
  } while (version != 0);
  return id;
}

StatusOr<Fingerprint> VersionFingerprint(const Session& session, const VersionHandles& version,
                                         std::optional<GcmIvSource> iv_source) {
  Fingerprint fingerprint;
  if (version.scheme == KeyScheme::kAesCbcHmac) {
    StatusOr<std::string> mac =
        HmacSha256(session, version.mac, kFingerprintAad, "computing the key fingerprint (HMAC-SHA256 on the device)");
    if (!mac.ok()) return mac.status();
    StatusOr<std::string> block =
        CbcPadEncryptOfNothing(session, version.cipher, "computing the key fingerprint (AES-CBC on the device)");
    if (!block.ok()) return block.status();
    fingerprint.bytes = *mac + *block;
    return fingerprint;
  }
  if (iv_source.value_or(GcmIvSource::kCaller) == GcmIvSource::kCaller) {
    Status tagged = GcmSeal(session, version.cipher, NonceSequence::FingerprintIv(), kFingerprintAad, "",
                            fingerprint.bytes, "computing the key fingerprint (AES-GCM on the device)");
    if (tagged.ok()) return fingerprint;
    // FIPS-mode devices refuse an IV from the caller this way; anything else is an error of its own.
    if (!IsCallerIvRefused(tagged)) return tagged;
    if (iv_source.has_value()) {
      return FailedPreconditionError(
          StrCat(tagged.message(), "; the URI says x-gcm-iv=caller: remove it to let the ", "device choose"));
    }
  }
  StatusOr<std::string> block = AesEncryptBlock(session, version.cipher, kDeviceIvFingerprintBlock,
                                                "computing the key fingerprint (AES-ECB on the device, which chooses "
                                                "its own GCM IVs)");
  if (!block.ok()) return block.status();
  fingerprint.bytes = *std::move(block);
  fingerprint.gcm_iv_source = GcmIvSource::kDevice;
  return fingerprint;
}

StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key) {
  return p11::CopyToSession(session, key);
}

}  // namespace trousseau::hsm
