// Token-level PKCS#11 steps shared by the plugin backend and the provisioning tool: find the token a
// URI names, open sessions, log in, list and inspect the key family, and AES-GCM on the device.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/nonce_sequence.h"
#include "core/secure_bytes.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "core/status.h"

namespace trousseau::hsm {

inline constexpr size_t kGcmTagSize = 16;
inline constexpr size_t kAes256KeySize = 32;

struct TokenSlot {
  CK_SLOT_ID slot = 0;
  CK_TOKEN_INFO info{};
};

// The one token the URI names. Slot ids are not stable (SoftHSM draws them at random), so tokens
// are matched by label/serial/manufacturer/model; zero or several matches are errors.
StatusOr<TokenSlot> FindToken(CK_FUNCTION_LIST* api, const Pkcs11Uri& uri);

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write);

// Logs the application in as CKU_USER (one login covers every session). The PIN comes from the
// URI's pin-source or TROUSSEAU_HSM_PIN and is wiped after use. A rejected PIN gives
// PERMISSION_DENIED: callers must not retry it, or the token locks.
Status LoginUser(const Session& session, const TokenSlot& token, const std::optional<std::string>& pin_file);

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

// Minimal big-endian bytes of `version` (1 -> "\x01").
std::string VersionToId(uint64_t version);

// The fixed associated data of the key fingerprint.
inline constexpr std::string_view kFingerprintAad = "trousseau-hsm key fingerprint v1";

// Public bytes that identify the key material: the AES-GCM tag of an empty message under the IV
// reserved for it (NonceSequence::FingerprintIv(), never drawn for data) and kFingerprintAad,
// computed on the device. The plugin and trousseau-hsm-init both derive key_ids from it, so they
// must agree byte for byte. Needs a logged-in session; the key must allow CKA_ENCRYPT.
StatusOr<std::string> KeyFingerprint(const Session& session, CK_OBJECT_HANDLE key);

// AES-GCM (96-bit IV, 128-bit tag) on the device. `out` gets ciphertext || tag.
CK_RV GcmSeal(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
              std::string_view plaintext, std::string& out);
// `in` is ciphertext || tag; `out` gets the plaintext. `reached_tag_check` (optional) tells whether
// the device took key and IV (C_DecryptInit) and so a failure is about the bytes themselves.
CK_RV GcmOpen(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
              std::string_view in, SecureBytes& out, bool* reached_tag_check = nullptr);

// A copy of `key` that lives in `session` (CKA_TOKEN=false), as sensitive and non-extractable as the
// original. Ends with the session.
StatusOr<CK_OBJECT_HANDLE> CopyToSessionObject(const Session& session, CK_OBJECT_HANDLE key);

}  // namespace trousseau::hsm
