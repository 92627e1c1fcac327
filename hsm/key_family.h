// The key family on the token: every secret key with the URI's object label, one per version
// (CKA_ID = the version, big-endian), and the one policy that decides whether a key or a whole
// family may serve as KEK. The plugin backend (LoadFamily) and trousseau-hsm-init apply the same
// checks through here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "hsm/key_scheme.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

inline constexpr size_t kAes256KeySize = 32;

// KeyObject::key_type of a key whose module did not report CKA_KEY_TYPE.
inline constexpr CK_KEY_TYPE kUnknownKeyType = static_cast<CK_KEY_TYPE>(-1);
inline constexpr CK_KEY_TYPE kAesKeyType = CKK_AES;
// The HMAC key of an aes-cbc-hmac version (hsm/key_scheme.h).
inline constexpr CK_KEY_TYPE kHmacKeyType = CKK_GENERIC_SECRET;
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

// The job of a key object in its version: the AES key that encrypts (every scheme), or the HMAC key of
// an aes-cbc-hmac version. A generic secret (CKK_GENERIC_SECRET, or CKK_SHA256_HMAC as some modules
// type HMAC keys) is a MAC key; anything else is judged as a cipher key (and refused if not AES).
enum class KeyRole { kCipher, kMac };
KeyRole RoleOf(const KeyObject& key);

// One version of the family: its AES key, and for aes-cbc-hmac its HMAC key (same label and CKA_ID).
struct KeyVersion {
  uint64_t version = 0;
  KeyScheme scheme = KeyScheme::kAesGcm;
  KeyObject cipher;
  KeyObject mac;  // handle kNoObject unless scheme is kAesCbcHmac
};

// Every secret key labelled `label`, with attributes, sorted by version. A key whose CKA_ID is not a
// version as trousseau-hsm-init writes it (VersionIdProblem) is an error naming the bytes and why, never
// read as some other number. A key destroyed by another process while the family is read is left
// out, not an error (as is a key ListTokenSecretKeys finds gone).
StatusOr<std::vector<KeyObject>> ListKeyFamily(const Session& session, std::string_view label);

// Why `id` (raw CKA_ID bytes) is not a family member's version as trousseau-hsm-init writes it, or ""
// if it is: 1 to 8 bytes, big-endian, minimal (no leading zero byte: 00 01 and 01 would both name
// version 1), at least 1, and not printable text of 2 bytes or more (tpm2_ptool writes `--id=01` as
// the ASCII bytes 3031, which read as a number is version 12337; no rotation ever reaches such numbers,
// and IdIsWritable keeps our own tools from writing them). The message names the bytes in hex.
std::string VersionIdProblem(std::string_view label, std::string_view id);
// Whether trousseau-hsm-init may give a new key `version`: its CKA_ID passes VersionIdProblem.
bool IdIsWritable(uint64_t version);

// One secret key on the token as the collision checks need it (every label, not only a family's).
struct TokenSecretKey {
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  std::string label;  // raw CKA_LABEL ("" when it has none)
  std::string id;     // raw CKA_ID ("" when it has none)
};
// Every secret key stored on the token (CKA_TOKEN=true), whatever its label.
StatusOr<std::vector<TokenSecretKey>> ListTokenSecretKeys(const Session& session);
// How many token objects of another class than secret key carry `label` (certificates, data objects,
// key pairs): they do not take part in a key family, but an operator deleting "the objects labelled
// kek" with another tool would take them too.
StatusOr<size_t> CountOtherObjectsLabelled(const Session& session, std::string_view label);
// "family 'other' version 2" for a key whose CKA_ID is a version, else "the secret key 'label' (CKA_ID 3031)".
std::string DescribeSecretKey(const TokenSecretKey& key);

// Empty when the key may serve as a KEK, else why not. Both roles: sensitive, non-extractable, private
// (usable only after login). A cipher key is AES-256 and may encrypt and decrypt; a MAC key is a 256-bit
// generic secret and may sign and verify.
std::string KekPolicyViolation(const KeyObject& key);

// What the plugin accepts but a KEK should not be, each as one sentence (empty: nothing): extra usages
// (wrap, unwrap, sign, verify, derive), modifiable, not always sensitive or once extractable. The one
// judgement `key list` and `selftest` both show (selftest --strict fails on it).
std::vector<std::string> KekPolicyWarnings(const KeyObject& key);

// Why the plugin would refuse the family `keys` (as ListKeyFamily returns it) as a whole, or "" if it
// would load it: a version that breaks the KEK policy (KekPolicyViolation), as "version N: why"; two
// objects of one role with one version, as "there are two AES keys with version N"; an HMAC key with
// no AES key beside it. The plugin loads nothing from such a family, so no version of it becomes
// active. `count_duplicates` false skips the duplicate rule: right after creating a version, other
// runs' contests over a version may still be undecided.
std::string KekFamilyViolation(const std::vector<KeyObject>& keys, bool count_duplicates = true);

// The family's versions, ascending: each AES key with the HMAC key of its version if there is one.
// Assumes KekFamilyViolation(keys) passed (with duplicates, the first object of a role wins).
std::vector<KeyVersion> GroupKeyVersions(const std::vector<KeyObject>& keys);

// Minimal big-endian bytes of `version` (1 -> "\x01").
std::string VersionToId(uint64_t version);

// The fixed associated data of the key fingerprint (and the HMAC message of an aes-cbc-hmac one).
inline constexpr std::string_view kFingerprintAad = "trousseau-hsm key fingerprint v1";

// The block whose AES-ECB encryption is the fingerprint when the device chooses GCM IVs: 0^96 || 1^32,
// a counter block that GCM under a 96-bit IV reaches only after 2^32 - 2 blocks of one message (never:
// a message is far shorter), and not the all-zero block whose encryption is GCM's hash key.
inline constexpr std::string_view kDeviceIvFingerprintBlock{"\0\0\0\0\0\0\0\0\0\0\0\0\xff\xff\xff\xff", 16};

// The device objects of one version, as a fingerprint or a seal needs them.
struct VersionHandles {
  KeyScheme scheme = KeyScheme::kAesGcm;
  CK_OBJECT_HANDLE cipher = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE mac = CK_INVALID_HANDLE;
};
VersionHandles HandlesOf(const KeyVersion& version);

struct Fingerprint {
  std::string bytes;
  // aes-gcm: who chooses the IV on this device (found out while fingerprinting, see VersionFingerprint).
  GcmIvSource gcm_iv_source = GcmIvSource::kCaller;
};

// Public bytes that identify the key material of a version, computed on the device. The plugin and
// trousseau-hsm-init both derive key_ids from them, so they must agree byte for byte:
//   aes-gcm, caller IV   the AES-GCM tag of an empty message under the IV reserved for it
//                        (NonceSequence::FingerprintIv(), never drawn for data) and kFingerprintAad
//   aes-gcm, device IV   AES-ECB of kDeviceIvFingerprintBlock (a device that picks its own IV cannot
//                        give a repeatable tag)
//   aes-cbc-hmac         HMAC-SHA256(mac, kFingerprintAad) || AES-CBC-PAD(cipher, zero IV, empty)
// `iv_source` nullopt: find out, by trying the caller's IV first; a device that refuses it with
// CKR_MECHANISM_PARAM_INVALID chooses its own. Needs a logged-in session.
StatusOr<Fingerprint> VersionFingerprint(const Session& session, const VersionHandles& version,
                                         std::optional<GcmIvSource> iv_source = std::nullopt);

// A copy of `key` that lives in `session` (CKA_TOKEN=false), as sensitive and non-extractable as the
// original. Ends with the session.
StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key);

}  // namespace trousseau::hsm
