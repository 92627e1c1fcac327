// The sealed bytes of a multi-recipient envelope (envelope format 3, docs/envelope.md): the plaintext
// sealed once under a fresh content key, and that content key wrapped to every member of a recipient
// set with ECDH (one ephemeral key shared by all wraps) + HKDF-SHA256 + AES-256-GCM.
//
//   E (33, compressed ephemeral point) || n (1) || n x { index (1) || wrapped content key (32 + 16) }
//   || AES-256-GCM(content key, zero nonce, plaintext) (len + 16)
//
// Every wrap and the body authenticate `aad` (the envelope header: format and epoch) || E || n || the
// n indices, so no wrap can be dropped, reordered or moved to another envelope unnoticed; the body
// also authenticates every wrap, so an altered wrap fails the envelope on every member alike. Each
// member's wrap key is derived with its id, public point, the set name and the epoch in the HKDF
// info, which makes sharing one ephemeral key among recipients safe; every key (wrap keys, content
// key) is used once, so a zero nonce is too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "recipients/recipient_set.h"

namespace trousseau::recipients {

// Bytes SealToSet adds to the plaintext for a set of `recipients` members.
size_t SealOverheadFor(size_t recipients);

// Seals `plaintext` to every member of `set`. Needs no device: only the members' public points.
StatusOr<std::string> SealToSet(const RecipientSet& set, std::string_view plaintext, std::string_view aad);

struct ParsedWraps {
  std::string ephemeral_point;  // uncompressed, checked on the curve
  std::string compressed_ephemeral;
  std::vector<uint8_t> indices;         // member index of each wrap, in order
  std::vector<std::string_view> wraps;  // each 48 bytes, views into the sealed bytes
  std::string_view body;                // sealed plaintext
  std::string authenticated;            // aad || E || n || indices
};
// INVALID_ARGUMENT for bytes that cannot be such an envelope for `set` (size, an index outside the
// set or twice, a point not on the curve).
StatusOr<ParsedWraps> ParseWraps(const RecipientSet& set, std::string_view sealed, std::string_view aad);

// Where member `index`'s wrap is in `parsed`, if it has one.
std::optional<size_t> WrapOf(const ParsedWraps& parsed, size_t index);

// Opens the envelope with member `index`'s wrap, given x(d_index * E) from that member's device.
// INVALID_ARGUMENT when anything fails authentication.
StatusOr<SecureBytes> OpenWithSharedSecret(const RecipientSet& set, const ParsedWraps& parsed, size_t index,
                                           const SecureBytes& shared_secret);

}  // namespace trousseau::recipients
