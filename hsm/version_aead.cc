#include "hsm/version_aead.h"

#include <algorithm>

#include "hsm/p11/cbc_hmac.h"
#include "hsm/p11/gcm.h"

namespace trousseau::hsm {

StatusOr<std::string> SealWithVersion(const Session& session, const SealingKey& key, NonceSequence& ivs,
                                      std::string_view aad, std::string_view plaintext) {
  std::string sealed;
  if (key.handles.scheme == KeyScheme::kAesCbcHmac) {
    if (Status s = CbcHmacSeal(session, key.handles.cipher, key.handles.mac, aad, plaintext, sealed); !s.ok()) return s;
    return sealed;
  }
  GcmIv iv{};
  std::string body;
  if (key.gcm_iv_source == GcmIvSource::kDevice) {
    if (Status s = GcmSealDeviceIv(session, key.handles.cipher, aad, plaintext, iv, body); !s.ok()) return s;
  } else {
    StatusOr<GcmIv> next = ivs.Next();
    if (!next.ok()) return next.status();
    iv = *next;
    if (Status s = GcmSeal(session, key.handles.cipher, iv, aad, plaintext, body); !s.ok()) return s;
  }
  sealed.assign(reinterpret_cast<const char*>(iv.data()), iv.size());
  sealed += body;
  return sealed;
}

StatusOr<SecureBytes> OpenWithVersion(const Session& session, const SealingKey& key, std::string_view aad,
                                      std::string_view sealed) {
  SecureBytes plaintext;
  if (key.handles.scheme == KeyScheme::kAesCbcHmac) {
    if (Status s = CbcHmacOpen(session, key.handles.cipher, key.handles.mac, aad, sealed, plaintext); !s.ok()) return s;
    return plaintext;
  }
  if (sealed.size() < kGcmIvSize + kGcmTagSize) {
    return InvalidArgumentError("ciphertext is too short to hold an IV and an authentication tag");
  }
  GcmIv iv;
  std::copy(sealed.begin(), sealed.begin() + kGcmIvSize, iv.begin());
  if (Status s = GcmOpen(session, key.handles.cipher, iv, aad, sealed.substr(kGcmIvSize), plaintext); !s.ok()) return s;
  return plaintext;
}

size_t MaxSealOverhead(KeyScheme scheme) {
  return scheme == KeyScheme::kAesCbcHmac ? kCbcHmacMaxOverhead : kGcmIvSize + kGcmTagSize;
}

}  // namespace trousseau::hsm
