#include "recipients/sealing_key.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <set>

#include "core/big_endian.h"
#include "core/strings.h"
#include "recipients/multi_wrap.h"
#include "recipients/p256.h"

namespace trousseau::recipients {
namespace {

constexpr std::string_view kTagKeyInfo = "trousseau-hsm envelope sender tag v1";

}  // namespace

Status DrawSealingKey(RecipientSet& set) {
  SecureBytes secret(kSealingSecretSize);
  if (RAND_priv_bytes(secret.data(), static_cast<int>(secret.size())) != 1) {
    return UnavailableError("the system random number generator failed");
  }
  set.sealing_key.clear();
  StatusOr<std::string> sealed = SealToSet(set, secret.view(), kSealingKeyAad);
  if (!sealed.ok()) return sealed.status();
  set.sealing_key = *std::move(sealed);
  return OkStatus();
}

Status CheckSealingKey(const RecipientSet& set) {
  if (set.sealing_key.empty()) {
    return InvalidArgumentError(
        "recipient set: it has no sealing_key (made by a trousseau-hsm-init without sender authentication): make a "
        "new epoch with recipients add or remove and sign it");
  }
  if (set.sealing_key.size() != SealOverheadFor(set.recipients.size()) + kSealingSecretSize) {
    return InvalidArgumentError(StrCat("recipient set: sealing_key is ", set.sealing_key.size(), " bytes, not ",
                                       SealOverheadFor(set.recipients.size()) + kSealingSecretSize, " for ",
                                       set.recipients.size(), " member(s)"));
  }
  StatusOr<ParsedWraps> parsed = ParseWraps(set, set.sealing_key, kSealingKeyAad);
  if (!parsed.ok()) return InvalidArgumentError(StrCat("recipient set: sealing_key: ", parsed.status().message()));
  // ParseWraps refuses an index twice or outside the set; the size above allows exactly one per member.
  return OkStatus();
}

StatusOr<SecureBytes> EnvelopeTagKey(const RecipientSet& set, const SecureBytes& sealing_secret) {
  return Hkdf(sealing_secret.view(), SetDigest(set), kTagKeyInfo, 32);
}

StatusOr<std::string> SenderTag(const SecureBytes& tag_key, std::string_view aad, std::string_view sealed) {
  // Public bytes only (header and ciphertext): a plain copy is fine.
  std::array<uint8_t, 4> aad_len{};
  StoreBigEndian<4>(aad.size(), aad_len);
  std::string message(reinterpret_cast<const char*>(aad_len.data()), aad_len.size());
  message.append(aad);
  message.append(sealed);
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  size_t mac_len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, tag_key.data(), tag_key.size(),
                reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac.data(), mac.size(),
                &mac_len) == nullptr ||
      mac_len < kSenderTagSize) {
    return InternalError("HMAC-SHA256 failed");
  }
  const std::string tag(reinterpret_cast<const char*>(mac.data()), kSenderTagSize);
  OPENSSL_cleanse(mac.data(), mac.size());
  return tag;
}

bool SenderTagMatches(const SecureBytes& tag_key, std::string_view aad, std::string_view tagged) {
  if (tagged.size() < kSenderTagSize) return false;
  const std::string_view sealed = tagged.substr(0, tagged.size() - kSenderTagSize);
  StatusOr<std::string> expected = SenderTag(tag_key, aad, sealed);
  return expected.ok() && CRYPTO_memcmp(expected->data(), tagged.data() + sealed.size(), kSenderTagSize) == 0;
}

size_t TaggedSealOverheadFor(size_t recipients) { return SealOverheadFor(recipients) + kSenderTagSize; }

}  // namespace trousseau::recipients
