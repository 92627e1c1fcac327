#include "recipients/multi_wrap.h"

#include <openssl/rand.h>

#include <array>
#include <set>

#include "core/big_endian.h"
#include "core/strings.h"
#include "recipients/p256.h"

namespace trousseau::recipients {
namespace {

constexpr size_t kContentKeySize = 32;
constexpr size_t kWrapSize = kContentKeySize + kGcmTagSize;  // 48
constexpr size_t kPerRecipient = 1 + kWrapSize;              // 49
constexpr size_t kFixed = kCompressedPointSize + 1;          // E || n
constexpr std::string_view kWrapInfo = "trousseau-hsm recipient wrap v1";

void AppendField(std::string& out, std::string_view field) {
  std::array<uint8_t, 4> len{};
  StoreBigEndian<4>(field.size(), len);
  out.append(reinterpret_cast<const char*>(len.data()), len.size());
  out.append(field);
}

// The wrap key of member `index`: bound to who it is, the set and the epoch, and this envelope's E.
StatusOr<SecureBytes> WrapKey(const RecipientSet& set, size_t index, std::string_view compressed_ephemeral,
                              const SecureBytes& shared_secret) {
  const Recipient& member = set.recipients[index];
  std::string info;
  AppendField(info, kWrapInfo);
  AppendField(info, set.name);
  std::array<uint8_t, 8> epoch{};
  StoreBigEndian<8>(set.epoch, epoch);
  AppendField(info, {reinterpret_cast<const char*>(epoch.data()), epoch.size()});
  info.push_back(static_cast<char>(index));
  AppendField(info, member.id);
  AppendField(info, member.public_key);
  return Hkdf(shared_secret.view(), compressed_ephemeral, info, kWrapKeySize);
}

}  // namespace

size_t SealOverheadFor(size_t recipients) { return kFixed + recipients * kPerRecipient + kGcmTagSize; }

StatusOr<std::string> SealToSet(const RecipientSet& set, std::string_view plaintext, std::string_view aad) {
  if (set.recipients.empty() || set.recipients.size() > kMaxRecipients) {
    return FailedPreconditionError("recipient set has no usable size");
  }
  StatusOr<EphemeralKey> ephemeral = EphemeralKey::Generate();
  if (!ephemeral.ok()) return ephemeral.status();
  StatusOr<std::string> compressed = CompressedPoint(ephemeral->public_point());
  if (!compressed.ok()) return compressed.status();
  SecureBytes content_key(kContentKeySize);
  if (RAND_bytes(content_key.data(), static_cast<int>(content_key.size())) != 1) {
    return UnavailableError("the system random number generator failed");
  }
  std::string out = *compressed;
  out.push_back(static_cast<char>(set.recipients.size()));
  std::string authenticated(aad);
  authenticated.append(out);
  for (size_t i = 0; i < set.recipients.size(); ++i) authenticated.push_back(static_cast<char>(i));
  for (size_t i = 0; i < set.recipients.size(); ++i) {
    StatusOr<SecureBytes> z = ephemeral->SharedSecret(set.recipients[i].public_key);
    if (!z.ok()) return z.status();
    StatusOr<SecureBytes> key = WrapKey(set, i, *compressed, *z);
    if (!key.ok()) return key.status();
    StatusOr<std::string> wrap = SealOnce(*key, content_key.view(), authenticated);
    if (!wrap.ok()) return wrap.status();
    out.push_back(static_cast<char>(i));
    out.append(*wrap);
  }
  // The body authenticates every wrap too: an envelope with any wrap altered fails on every node
  // alike, not only on the node whose wrap it was.
  StatusOr<std::string> body = SealOnce(content_key, plaintext, authenticated + out.substr(kFixed));
  if (!body.ok()) return body.status();
  out.append(*body);
  return out;
}

StatusOr<ParsedWraps> ParseWraps(const RecipientSet& set, std::string_view sealed, std::string_view aad) {
  if (sealed.size() < kFixed + kPerRecipient + kGcmTagSize) {
    return InvalidArgumentError(StrCat("recipient envelope too short (", sealed.size(), " bytes)"));
  }
  ParsedWraps parsed;
  StatusOr<std::string> point = UncompressedPoint(sealed.substr(0, kCompressedPointSize));
  if (!point.ok()) return InvalidArgumentError("recipient envelope: its ephemeral key is not a P-256 point");
  parsed.ephemeral_point = *std::move(point);
  parsed.compressed_ephemeral = std::string(sealed.substr(0, kCompressedPointSize));
  const size_t count = static_cast<uint8_t>(sealed[kCompressedPointSize]);
  if (count == 0 || sealed.size() < kFixed + count * kPerRecipient + kGcmTagSize) {
    return InvalidArgumentError(
        StrCat("recipient envelope: ", count, " wraps do not fit in ", sealed.size(), " bytes"));
  }
  std::set<uint8_t> seen;
  size_t at = kFixed;
  for (size_t i = 0; i < count; ++i, at += kPerRecipient) {
    const auto index = static_cast<uint8_t>(sealed[at]);
    if (index >= set.recipients.size()) {
      return InvalidArgumentError(StrCat("recipient envelope: a wrap for member ", index, " of a set of ",
                                         set.recipients.size(), " (epoch ", set.epoch, ")"));
    }
    if (!seen.insert(index).second) return InvalidArgumentError("recipient envelope: two wraps for one member");
    parsed.indices.push_back(index);
    parsed.wraps.push_back(sealed.substr(at + 1, kWrapSize));
  }
  parsed.body = sealed.substr(at);
  parsed.authenticated = std::string(aad);
  parsed.authenticated.append(sealed.substr(0, kFixed));
  for (uint8_t index : parsed.indices) parsed.authenticated.push_back(static_cast<char>(index));
  return parsed;
}

std::optional<size_t> WrapOf(const ParsedWraps& parsed, size_t index) {
  for (size_t i = 0; i < parsed.indices.size(); ++i) {
    if (parsed.indices[i] == index) return i;
  }
  return std::nullopt;
}

StatusOr<SecureBytes> OpenWithSharedSecret(const RecipientSet& set, const ParsedWraps& parsed, size_t index,
                                           const SecureBytes& shared_secret) {
  const std::optional<size_t> at = WrapOf(parsed, index);
  if (!at.has_value() || index >= set.recipients.size()) {
    return NotFoundError(StrCat("the envelope has no wrap for member '",
                                index < set.recipients.size() ? set.recipients[index].id : "?", "'"));
  }
  StatusOr<SecureBytes> key = WrapKey(set, index, parsed.compressed_ephemeral, shared_secret);
  if (!key.ok()) return key.status();
  StatusOr<SecureBytes> content_key = OpenOnce(*key, parsed.wraps[*at], parsed.authenticated);
  if (!content_key.ok()) return content_key.status();
  std::string body_aad = parsed.authenticated;
  for (size_t i = 0; i < parsed.wraps.size(); ++i) {
    body_aad.push_back(static_cast<char>(parsed.indices[i]));
    body_aad.append(parsed.wraps[i]);
  }
  return OpenOnce(*content_key, parsed.body, body_aad);
}

}  // namespace trousseau::recipients
