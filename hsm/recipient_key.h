// The recipient key of a multi-recipient envelope on a PKCS#11 token (docs/ha.md "How it works",
// core/recipient_device.h): an ECC P-256 key pair under one CKA_LABEL (default "trousseau-recipient"),
// the private key sensitive, never extractable and allowed to derive (ECDH) and nothing else; the public
// key beside it with the same CKA_ID. Finding it and judging it, for the plugin (Pkcs11Backend) and the
// tools alike; creating it is provisioning (hsm/recipient_admin.h).
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

inline constexpr char kDefaultRecipientLabel[] = "trousseau-recipient";

// The recipient private key's attributes as the token reports them (unreported ones read as unsafe).
struct RecipientKeyPolicy {
  bool is_p256 = false;  // CKK_EC with CKA_EC_PARAMS = prime256v1
  bool token = false;
  bool is_private = false;
  bool sensitive = false;
  bool extractable = true;
  bool always_sensitive = false;
  bool never_extractable = false;
  bool derive = false;
  bool sign = false;
  bool decrypt = false;
  bool unwrap = false;
};

// Empty when the key may serve as a recipient key, else why not (one sentence): a P-256 token key that
// is private, sensitive, never extractable (CKA_EXTRACTABLE false and CKA_NEVER_EXTRACTABLE true) and may
// derive; signing, decrypting or unwrapping with it is refused too (a recipient key does ECDH only).
std::string RecipientPolicyViolation(const RecipientKeyPolicy& policy);

struct RecipientKeyObjects {
  CK_OBJECT_HANDLE private_key = CK_INVALID_HANDLE;
  CK_OBJECT_HANDLE public_key = CK_INVALID_HANDLE;
  std::string id;  // raw CKA_ID shared by both
};

// The recipient key pair labelled `label`: exactly one EC private key with that label, and the EC public
// key with its label and CKA_ID. NOT_FOUND when there is no such private key; FAILED_PRECONDITION when
// there are several (which one opens wraps would be a guess) or the public key is missing. Needs a
// logged-in session (the private key is CKA_PRIVATE).
StatusOr<RecipientKeyObjects> FindRecipientKey(const Session& session, std::string_view label);

// Whether a recipient key pair with `label` exists on the token at all (either half, any key type).
StatusOr<bool> RecipientLabelInUse(const Session& session, std::string_view label);

struct RecipientKeyInfo {
  std::string label;
  std::string id;            // raw CKA_ID
  std::string public_point;  // 65 bytes, 0x04 || X || Y
  RecipientKeyPolicy policy;
  std::string violation;  // RecipientPolicyViolation(policy): empty when the plugin would serve it
};

// The recipient key labelled `label` as an operator (or the plugin at connect) needs to see it: its
// public point (checked to be a P-256 point on the curve) and its private key's policy, judged. A
// violation is reported in `violation`, not as an error, so a tool can show it; FindRecipientKey's
// errors otherwise.
StatusOr<RecipientKeyInfo> ShowRecipient(const Session& session, std::string_view label);

// OK when `point` is an uncompressed P-256 point (65 bytes, 0x04 || X || Y) on the curve, else
// INVALID_ARGUMENT saying which. Checked on the host before any device sees the point: a token that
// skipped the check would otherwise compute with a point on another curve (an invalid-curve attack
// reveals the private key a little at a time).
Status CheckP256Point(std::string_view point);

}  // namespace trousseau::hsm
