#include "recipients/p256.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/obj_mac.h>
#include <openssl/params.h>

#include <array>
#include <memory>
#include <utility>

#include "core/strings.h"

namespace trousseau::recipients {
namespace {

struct GroupFree {
  void operator()(EC_GROUP* g) const { EC_GROUP_free(g); }
};
struct PointFree {
  void operator()(EC_POINT* p) const { EC_POINT_free(p); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct PkeyCtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
struct KdfCtxFree {
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

constexpr std::array<unsigned char, 12> kZeroNonce{};

// Fetched once: an implicit fetch by name on every call costs more than the work itself
// (OpenSSL 3's provider lookup), and Encrypt does several per member.
EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}
EVP_CIPHER* AesGcm() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  return cipher;
}

StatusOr<std::string> Encode(std::string_view point, point_conversion_form_t form) {
  std::unique_ptr<EC_GROUP, GroupFree> group(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1));
  std::unique_ptr<EC_POINT, PointFree> p(group ? EC_POINT_new(group.get()) : nullptr);
  if (!p) return InternalError("OpenSSL could not allocate a P-256 point");
  if (point.empty() ||
      EC_POINT_oct2point(group.get(), p.get(), reinterpret_cast<const unsigned char*>(point.data()), point.size(),
                         nullptr) != 1 ||
      EC_POINT_is_at_infinity(group.get(), p.get()) || EC_POINT_is_on_curve(group.get(), p.get(), nullptr) != 1) {
    return InvalidArgumentError(StrCat("not a P-256 public point (", point.size(), " bytes)"));
  }
  std::string out(form == POINT_CONVERSION_COMPRESSED ? kCompressedPointSize : kUncompressedPointSize, '\0');
  if (EC_POINT_point2oct(group.get(), p.get(), form, reinterpret_cast<unsigned char*>(out.data()), out.size(),
                         nullptr) != out.size()) {
    return InternalError("OpenSSL could not encode a P-256 point");
  }
  return out;
}

// An EVP_PKEY holding only the public point, for EVP_PKEY_derive_set_peer.
StatusOr<std::unique_ptr<EVP_PKEY, PkeyFree>> PublicKeyOf(std::string_view uncompressed) {
  char group[] = "P-256";
  std::string pub(uncompressed);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()),
      OSSL_PARAM_construct_end(),
  };
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* key = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
    return InvalidArgumentError("OpenSSL refused the recipient's public point");
  }
  return std::unique_ptr<EVP_PKEY, PkeyFree>(key);
}

}  // namespace

StatusOr<std::string> UncompressedPoint(std::string_view point) { return Encode(point, POINT_CONVERSION_UNCOMPRESSED); }
StatusOr<std::string> CompressedPoint(std::string_view point) { return Encode(point, POINT_CONVERSION_COMPRESSED); }

StatusOr<EphemeralKey> EphemeralKey::Generate() {
  EphemeralKey key;
  EVP_PKEY* pkey = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (pkey == nullptr) return InternalError("OpenSSL could not generate an ephemeral P-256 key");
  key.key_ = pkey;
  std::array<unsigned char, 2 * kUncompressedPointSize> pub{};
  size_t len = 0;
  if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size(), &len) != 1) {
    return InternalError("OpenSSL could not read the ephemeral public point");
  }
  StatusOr<std::string> uncompressed = UncompressedPoint({reinterpret_cast<const char*>(pub.data()), len});
  if (!uncompressed.ok()) return uncompressed.status();
  key.public_point_ = *std::move(uncompressed);
  return key;
}

EphemeralKey::EphemeralKey(EphemeralKey&& other) noexcept { *this = std::move(other); }
EphemeralKey& EphemeralKey::operator=(EphemeralKey&& other) noexcept {
  if (this != &other) {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(key_));  // OpenSSL clears private key memory when freeing
    key_ = std::exchange(other.key_, nullptr);
    public_point_ = std::move(other.public_point_);
  }
  return *this;
}
EphemeralKey::~EphemeralKey() { EVP_PKEY_free(static_cast<EVP_PKEY*>(key_)); }

StatusOr<SecureBytes> EphemeralKey::SharedSecret(std::string_view recipient_point) const {
  StatusOr<std::string> point = UncompressedPoint(recipient_point);
  if (!point.ok()) return point.status();
  StatusOr<std::unique_ptr<EVP_PKEY, PkeyFree>> peer = PublicKeyOf(*point);
  if (!peer.ok()) return peer.status();
  std::unique_ptr<EVP_PKEY_CTX, PkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_pkey(nullptr, static_cast<EVP_PKEY*>(key_), nullptr));
  size_t len = kWrapKeySize;
  SecureBytes secret(kWrapKeySize);
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 || EVP_PKEY_derive_set_peer(ctx.get(), peer->get()) != 1 ||
      EVP_PKEY_derive(ctx.get(), secret.data(), &len) != 1 || len != kWrapKeySize) {
    return InternalError("OpenSSL ECDH with the recipient's point failed");
  }
  return secret;
}

StatusOr<SecureBytes> Hkdf(std::string_view secret, std::string_view salt, std::string_view info, size_t size) {
  std::unique_ptr<EVP_KDF_CTX, KdfCtxFree> ctx(HkdfAlgorithm() ? EVP_KDF_CTX_new(HkdfAlgorithm()) : nullptr);
  if (!ctx) return InternalError("OpenSSL has no HKDF");
  char digest[] = "SHA256";
  std::string key(secret), salt_copy(salt), info_copy(info);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, key.data(), key.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, salt_copy.data(), salt_copy.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info_copy.data(), info_copy.size()),
      OSSL_PARAM_construct_end(),
  };
  SecureBytes out(size);
  const bool ok = EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) == 1;
  WipeMemory(key.data(), key.size());
  if (!ok) return InternalError("OpenSSL HKDF failed");
  return out;
}

StatusOr<std::string> SealOnce(const SecureBytes& key, std::string_view plaintext, std::string_view aad) {
  if (key.size() != kWrapKeySize) return InternalError("wrap key of the wrong size");
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  std::string out(plaintext.size() + kGcmTagSize, '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  int len = 0, tail = 0;
  if (!ctx || AesGcm() == nullptr ||
      EVP_EncryptInit_ex(ctx.get(), AesGcm(), nullptr, key.data(), kZeroNonce.data()) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), o, &len, reinterpret_cast<const unsigned char*>(plaintext.data()),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), o + len, &tail) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kGcmTagSize, o + plaintext.size()) != 1) {
    return InternalError("OpenSSL AES-GCM failed");
  }
  return out;
}

StatusOr<SecureBytes> OpenOnce(const SecureBytes& key, std::string_view sealed, std::string_view aad) {
  if (key.size() != kWrapKeySize) return InternalError("wrap key of the wrong size");
  if (sealed.size() < kGcmTagSize) return InvalidArgumentError("wrap too short");
  const size_t body = sealed.size() - kGcmTagSize;
  std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
  SecureBytes out(body);
  std::string tag(sealed.substr(body));
  int len = 0, tail = 0;
  if (!ctx || AesGcm() == nullptr ||
      EVP_DecryptInit_ex(ctx.get(), AesGcm(), nullptr, key.data(), kZeroNonce.data()) != 1 ||
      EVP_DecryptUpdate(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &len, reinterpret_cast<const unsigned char*>(sealed.data()),
                        static_cast<int>(body)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kGcmTagSize, tag.data()) != 1) {
    return InternalError("OpenSSL AES-GCM failed");
  }
  if (EVP_DecryptFinal_ex(ctx.get(), out.data() + len, &tail) != 1) {
    return InvalidArgumentError("the wrap failed authentication");
  }
  return out;
}

StatusOr<std::string> HexDecode(std::string_view hex, std::string_view what) {
  if (hex.size() % 2 != 0) return InvalidArgumentError(StrCat(what, " is not hex (odd length)"));
  std::string out(hex.size() / 2, '\0');
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgumentError(StrCat(what, " is not hex"));
    out[i] = static_cast<char>(hi * 16 + lo);
  }
  return out;
}

}  // namespace trousseau::recipients
