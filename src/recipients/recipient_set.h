// The recipient set: which devices every envelope is wrapped to, as a signed, numbered document
// (docs/ha.md). Every plugin of a cluster loads the same set, so every node wraps to the same members
// and reports the same key_id; only a set signed by enough administrator keys is accepted.
//
// The file is JSON (SerializeRecipientSet writes it; unknown fields are refused, so nothing in the
// file can be outside what the signatures cover):
//   {"kind": "trousseau-hsm/recipient-set", "name": "prod", "epoch": 3,
//    "recipients": [{"id": "cp-1", "device": "tpm2", "public_key": "04…(hex)", "tpm_name": "000b…(hex)"}, …],
//    "sealing_key": "(hex: the epoch's sealing secret sealed to every member, recipients/sealing_key.h)",
//    "signatures": [{"signer": "<AdminKey::id>", "signature": "(hex)"}]}
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace trousseau::recipients {

// An envelope carries 49 bytes per recipient beside 77 fixed bytes (the 16-byte sender tag among them) and
// kube-apiserver's 32-byte seed: 18 recipients fit in its 1024-byte ciphertext limit (docs/envelope.md).
inline constexpr size_t kMaxRecipients = 18;

struct Recipient {
  std::string id;          // node or device name: 1-63 of [A-Za-z0-9._-]
  std::string device;      // "tpm2" or "pkcs11": what opens its wraps
  std::string public_key;  // uncompressed P-256 point, 65 bytes
  std::string tpm_name;    // the TPM object name of a tpm2 recipient key (raw bytes; may be empty)
};

struct SetSignature {
  std::string signer;     // AdminKey::id() of the key that made it
  std::string signature;  // raw Ed25519 signature (64 bytes) over SigningBytes
};

struct RecipientSet {
  std::string name;  // the cluster's set name; part of every key_id: 1-63 of [A-Za-z0-9._-]
  uint64_t epoch = 0;
  std::vector<Recipient> recipients;  // a recipient's position is its index in envelopes
  // The epoch's sealing secret sealed to every member (DrawSealingKey); signed with the rest.
  std::string sealing_key;
  std::vector<SetSignature> signatures;
};

// Parses and checks a set file (well-formed, valid names, points on P-256, no duplicate id or key,
// 1 to kMaxRecipients members, epoch >= 1, a sealing key with one wrap per member). Signatures are parsed, not verified
// (VerifySet). INVALID_ARGUMENT naming the field otherwise.
StatusOr<RecipientSet> ParseRecipientSet(std::string_view json_text);
std::string SerializeRecipientSet(const RecipientSet& set);
// The same checks on a set built in code (the tool's add/remove), but for the sealing key
// (CheckSealingKey: it is drawn once the members are final).
Status CheckRecipientSet(const RecipientSet& set);

// One member as a device's provisioning exports it (`trousseau-hsm-init tpm recipient export`): the
// JSON of one entry of "recipients", checked as a set checks its members.
StatusOr<Recipient> ParseMember(std::string_view json_text);
std::string SerializeMember(const Recipient& member);

// What the administrators sign: a length-prefixed encoding of name, epoch, every member in order and
// the sealing key (signatures excluded).
std::string SigningBytes(const RecipientSet& set);
// SHA-256 of SigningBytes: the set's identity (the key_id is derived from it).
std::string SetDigest(const RecipientSet& set);

// An administrator's Ed25519 public key, as `openssl pkey -pubout` writes it (PEM).
class AdminKey {
 public:
  static StatusOr<AdminKey> FromPem(std::string_view pem);
  // 16 hex digits of SHA-256 over the raw 32-byte key: how signatures name their signer.
  const std::string& id() const { return id_; }
  bool Verifies(std::string_view message, std::string_view signature) const;

 private:
  std::string raw_;  // 32 bytes
  std::string id_;
};

struct AdminPolicy {
  std::vector<AdminKey> keys;
  size_t threshold = 1;  // distinct keys whose signature must verify
};

// OK when at least policy.threshold distinct keys of the policy signed the set. PERMISSION_DENIED
// naming how many valid signatures were found, and from whom, otherwise.
Status VerifySet(const RecipientSet& set, const AdminPolicy& policy);

// Signs `set` with an Ed25519 private key in PEM (the tool's `recipients sign`). The key's bytes are
// wiped by OpenSSL when freed; the caller wipes `private_pem`.
StatusOr<SetSignature> SignSet(const RecipientSet& set, std::string_view private_pem);

}  // namespace trousseau::recipients
