#include "core/key_id.h"

#include <openssl/evp.h>

#include <array>
#include <cstdint>

#include "core/big_endian.h"
#include "core/strings.h"

namespace trousseau {
namespace {

// Length-prefixed fields, so ("ab","c") and ("a","bc") never hash alike.
void HashField(EVP_MD_CTX* ctx, std::string_view field) {
  std::array<uint8_t, 8> len{};
  StoreBigEndian<8>(field.size(), len);
  EVP_DigestUpdate(ctx, len.data(), len.size());
  EVP_DigestUpdate(ctx, field.data(), field.size());
}

}  // namespace

std::string DeriveKeyId(std::string_view backend_kind, std::string_view family_label, uint64_t version,
                        std::string_view fingerprint) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int digest_len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  HashField(ctx, "trousseau-hsm key_id v1");
  HashField(ctx, backend_kind);
  HashField(ctx, family_label);
  HashField(ctx, StrCat(version));
  HashField(ctx, fingerprint);
  EVP_DigestFinal_ex(ctx, digest.data(), &digest_len);
  EVP_MD_CTX_free(ctx);
  const std::string_view first16(reinterpret_cast<const char*>(digest.data()), 16);
  return StrCat("kek-v", version, "-", HexEncode(first16));
}

}  // namespace trousseau
