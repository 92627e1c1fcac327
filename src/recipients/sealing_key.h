// Sender authentication of multi-recipient envelopes (docs/ha.md, "Who may seal").
//
// A recipient set is public, so without more anyone able to write etcd could wrap a content key of their
// choosing to every member and plant an envelope every node opens. Each epoch therefore carries a
// sealing secret: 32 random bytes the administrator's tool draws when it makes the epoch, sealed to every
// member exactly like an envelope (SealToSet) and covered by the administrators' signatures. A node opens
// it once per epoch on its own device and keeps it in memory; every envelope ends with a tag under a key
// derived from it, and Decrypt checks that tag before anything else, so an envelope not made by a member
// of the epoch costs no device call and is refused. The administrator never sees the secret: the tool
// draws it, seals it and wipes it.
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "recipients/recipient_set.h"

namespace trousseau::recipients {

inline constexpr size_t kSealingSecretSize = 32;
// HMAC-SHA256 truncated to 128 bits: a forgery succeeds with probability 2^-128 per try.
inline constexpr size_t kSenderTagSize = 16;
// What the sealed secret authenticates as AAD (its wraps are bound to the set by SealToSet already).
inline constexpr std::string_view kSealingKeyAad = "trousseau-hsm epoch sealing secret v1";

// Draws a fresh sealing secret and seals it to every member of `set` (name, epoch and members final) into
// set.sealing_key. The secret is wiped before this returns.
Status DrawSealingKey(RecipientSet& set);

// Whether set.sealing_key is a sealed secret of the right size with exactly one wrap for every member.
// INVALID_ARGUMENT naming what is wrong (an empty one: the set was made by a tool without sender
// authentication).
Status CheckSealingKey(const RecipientSet& set);

// The key envelopes of `set` are tagged with, from the opened sealing secret (HKDF-SHA256 bound to the
// set's digest).
StatusOr<SecureBytes> EnvelopeTagKey(const RecipientSet& set, const SecureBytes& sealing_secret);

// The tag of an envelope: HMAC-SHA256(tag key, len(aad) || aad || sealed), first kSenderTagSize bytes.
StatusOr<std::string> SenderTag(const SecureBytes& tag_key, std::string_view aad, std::string_view sealed);

// `tagged` = sealed || tag: whether the tag is right (constant-time comparison).
bool SenderTagMatches(const SecureBytes& tag_key, std::string_view aad, std::string_view tagged);

// Bytes a tagged multi-recipient envelope adds to the plaintext for a set of `recipients` members.
size_t TaggedSealOverheadFor(size_t recipients);

}  // namespace trousseau::recipients
