// The key family on the token: every secret key with the URI's object label, one per version
// (CKA_ID = the version, big-endian), and the one policy that decides whether a key or a whole
// family may serve as KEK. The plugin backend (LoadFamily) and trousseau-hsm-init apply the same
// checks through here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

inline constexpr size_t kAes256KeySize = 32;

// KeyObject::key_type of a key whose module did not report CKA_KEY_TYPE.
inline constexpr CK_KEY_TYPE kUnknownKeyType = static_cast<CK_KEY_TYPE>(-1);
inline constexpr CK_KEY_TYPE kAesKeyType = CKK_AES;
using ObjectHandle = CK_OBJECT_HANDLE;
inline constexpr ObjectHandle kNoObject = CK_INVALID_HANDLE;

// What the plugin and the tools need to know of one key object.
struct KeyObject {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  uint64_t version = 0;
  std::string id;  // raw CKA_ID
  CK_KEY_TYPE key_type = 0;
  CK_ULONG value_len = 0;
  bool sensitive = false;
  bool extractable = true;
  bool always_sensitive = false;
  bool never_extractable = false;
  bool local = false;
  bool encrypt = false;
  bool decrypt = false;
  bool wrap = false;
  bool unwrap = false;
  bool sign = false;
  bool verify = false;
  bool derive = false;
  bool modifiable = true;
  bool is_private = false;  // CKA_PRIVATE: usable only after C_Login
};

// Every secret key labelled `label`, with attributes, sorted by version. A key whose CKA_ID is not
// a 1..8 byte big-endian version >= 1 is an error (it would be ambiguous which version it is).
StatusOr<std::vector<KeyObject>> ListKeyFamily(const Session& session, std::string_view label);

// Empty when the key may serve as a KEK, else why not: it must be AES-256, sensitive,
// non-extractable, private (usable only after login), and allowed to encrypt and decrypt.
std::string KekPolicyViolation(const KeyObject& key);

// Why the plugin would refuse the family `keys` (as ListKeyFamily returns it) as a whole, or "" if it
// would load it: a version that breaks the KEK policy (KekPolicyViolation), as "version N: why", or two
// objects with one version, as "there are two keys with version N". The plugin loads nothing from such
// a family, so no version of it becomes active. `count_duplicates` false skips the second rule: right
// after creating a version, other runs' contests over a version may still be undecided.
std::string KekFamilyViolation(const std::vector<KeyObject>& keys, bool count_duplicates = true);

// Minimal big-endian bytes of `version` (1 -> "\x01").
std::string VersionToId(uint64_t version);

// The fixed associated data of the key fingerprint.
inline constexpr std::string_view kFingerprintAad = "trousseau-hsm key fingerprint v1";

// Public bytes that identify the key material: the AES-GCM tag of an empty message under the IV
// reserved for it (NonceSequence::FingerprintIv(), never drawn for data) and kFingerprintAad,
// computed on the device. The plugin and trousseau-hsm-init both derive key_ids from it, so they
// must agree byte for byte. Needs a logged-in session; the key must allow CKA_ENCRYPT.
StatusOr<std::string> KeyFingerprint(const Session& session, CK_OBJECT_HANDLE key);

// A copy of `key` that lives in `session` (CKA_TOKEN=false), as sensitive and non-extractable as the
// original. Ends with the session.
StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key);

}  // namespace trousseau::hsm
