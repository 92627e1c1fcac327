#include "tools/secret/value_format.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include <array>
#include <memory>

#include "core/strings.h"
#include "tools/kube/base64.h"

namespace trousseau::secret {
namespace {

constexpr std::string_view kAlnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
constexpr size_t kMaxLength = 4096;

SecureBytes Characters(MixedRandom& random, std::string_view alphabet, size_t length) {
  SecureBytes out(length);
  for (size_t i = 0; i < length; ++i)
    out.data()[i] = static_cast<uint8_t>(alphabet[UniformIndex(random, alphabet.size())]);
  return out;
}

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_clear_free>>;
using BnCtxPtr = std::unique_ptr<BN_CTX, Deleter<BN_CTX, BN_CTX_free>>;
using GroupPtr = std::unique_ptr<EC_GROUP, Deleter<EC_GROUP, EC_GROUP_free>>;
using PointPtr = std::unique_ptr<EC_POINT, Deleter<EC_POINT, EC_POINT_clear_free>>;
using ParamBldPtr = std::unique_ptr<OSSL_PARAM_BLD, Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
// Built from a secure BIGNUM: the builder puts d in secure memory, which OSSL_PARAM_free clears.
using ParamsPtr = std::unique_ptr<OSSL_PARAM, Deleter<OSSL_PARAM, OSSL_PARAM_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;

// A P-256 key whose scalar d is drawn from the stream: 32 bytes, tried again while d is 0 or >= the
// group order (FIPS 186-5 A.2.2, rejection sampling; a retry is needed with probability ~2^-32).
// OpenSSL only computes the public point and writes the PEM (in a secure-memory BIO).
StatusOr<SecureBytes> EcP256Pem(MixedRandom& random) {
  GroupPtr group(EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1));
  BnCtxPtr ctx(BN_CTX_secure_new());
  if (!group || !ctx) return InternalError("OpenSSL: cannot set up P-256");
  const BIGNUM* order = EC_GROUP_get0_order(group.get());
  BnPtr d(BN_secure_new());
  SecureBytes candidate(32);
  for (;;) {
    random.Fill(candidate.data(), candidate.size());
    if (BN_bin2bn(candidate.data(), static_cast<int>(candidate.size()), d.get()) == nullptr) {
      return InternalError("OpenSSL: BN_bin2bn failed");
    }
    if (!BN_is_zero(d.get()) && BN_cmp(d.get(), order) < 0) break;
  }
  PointPtr q(EC_POINT_new(group.get()));
  if (!q || EC_POINT_mul(group.get(), q.get(), d.get(), nullptr, nullptr, ctx.get()) != 1) {
    return InternalError("OpenSSL: cannot compute the public point");
  }
  std::array<unsigned char, 65> pub{};
  if (EC_POINT_point2oct(group.get(), q.get(), POINT_CONVERSION_UNCOMPRESSED, pub.data(), pub.size(), ctx.get()) !=
      pub.size()) {
    return InternalError("OpenSSL: cannot encode the public point");
  }
  ParamBldPtr build(OSSL_PARAM_BLD_new());
  if (!build || OSSL_PARAM_BLD_push_utf8_string(build.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) != 1 ||
      OSSL_PARAM_BLD_push_BN(build.get(), OSSL_PKEY_PARAM_PRIV_KEY, d.get()) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(build.get(), OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()) != 1) {
    return InternalError("OpenSSL: cannot build the key parameters");
  }
  ParamsPtr params(OSSL_PARAM_BLD_to_param(build.get()));
  PkeyCtxPtr pctx(EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!params || !pctx || EVP_PKEY_fromdata_init(pctx.get()) != 1 ||
      EVP_PKEY_fromdata(pctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1) {
    return InternalError("OpenSSL: cannot make the EC key");
  }
  PkeyPtr key(raw);
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return InternalError("OpenSSL: cannot write the key as PEM");
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  if (size <= 0) return InternalError("OpenSSL: empty PEM");
  return SecureBytes::CopyOf(std::string_view(data, static_cast<size_t>(size)));
}

}  // namespace

size_t UniformIndex(MixedRandom& random, size_t n) {
  const size_t limit = 256 - (256 % n);  // the largest multiple of n that is <= 256
  for (;;) {
    const size_t b = random.NextByte();
    if (b < limit) return b % n;
  }
}

StatusOr<ValueSpec> ParseValueSpec(const std::string& format, std::optional<size_t> length,
                                   const std::optional<std::string>& charset) {
  ValueSpec spec;
  if (format.empty()) {
    spec.format = charset ? ValueFormat::kCharset : ValueFormat::kAlnum;
  } else if (format == "hex") {
    spec.format = ValueFormat::kHex;
  } else if (format == "base64") {
    spec.format = ValueFormat::kBase64;
  } else if (format == "alnum") {
    spec.format = ValueFormat::kAlnum;
  } else if (format == "pem-ec-p256") {
    spec.format = ValueFormat::kPemEcP256;
  } else {
    return InvalidArgumentError(StrCat("--format '", format, "': one of hex, base64, alnum, pem-ec-p256"));
  }
  if (charset && spec.format != ValueFormat::kCharset) {
    return InvalidArgumentError("--charset goes without --format (the value is drawn from the charset)");
  }
  if (spec.format == ValueFormat::kPemEcP256) {
    if (length) return InvalidArgumentError("--length does not apply to pem-ec-p256 (a P-256 key has 256 bits)");
    spec.length = 0;
    return spec;
  }
  if (length) {
    if (*length < 1 || *length > kMaxLength) return InvalidArgumentError("--length must be between 1 and 4096");
    spec.length = *length;
  }
  if (spec.format == ValueFormat::kCharset) {
    std::array<bool, 256> seen{};
    for (unsigned char c : *charset) {
      if (c < 0x20 || c == 0x7f) return InvalidArgumentError("--charset: control characters are not allowed");
      if (!seen[c]) spec.charset.push_back(static_cast<char>(c));
      seen[c] = true;
    }
    if (spec.charset.size() < 2) return InvalidArgumentError("--charset needs at least 2 distinct characters");
  }
  return spec;
}

StatusOr<SecureBytes> GenerateValue(const ValueSpec& spec, MixedRandom& random) {
  switch (spec.format) {
    case ValueFormat::kHex: {
      static constexpr char kDigits[] = "0123456789abcdef";
      SecureBytes bytes(spec.length);
      random.Fill(bytes.data(), bytes.size());
      SecureBytes out(2 * spec.length);
      for (size_t i = 0; i < bytes.size(); ++i) {
        out.data()[2 * i] = static_cast<uint8_t>(kDigits[bytes.data()[i] >> 4]);
        out.data()[2 * i + 1] = static_cast<uint8_t>(kDigits[bytes.data()[i] & 0xf]);
      }
      return out;
    }
    case ValueFormat::kBase64: {
      SecureBytes bytes(spec.length);
      random.Fill(bytes.data(), bytes.size());
      kube::WipedString text = kube::Base64Encode(bytes.view());
      return SecureBytes::CopyOf(text.value);
    }
    case ValueFormat::kAlnum:
      return Characters(random, kAlnum, spec.length);
    case ValueFormat::kCharset:
      return Characters(random, spec.charset, spec.length);
    case ValueFormat::kPemEcP256:
      return EcP256Pem(random);
  }
  return InternalError("unknown format");
}

std::string Describe(const ValueSpec& spec) {
  switch (spec.format) {
    case ValueFormat::kHex:
      return StrCat("hex of ", spec.length, " random bytes");
    case ValueFormat::kBase64:
      return StrCat("base64 of ", spec.length, " random bytes");
    case ValueFormat::kAlnum:
      return StrCat(spec.length, " alphanumeric characters");
    case ValueFormat::kCharset:
      return StrCat(spec.length, " characters of a ", spec.charset.size(), "-character set");
    case ValueFormat::kPemEcP256:
      return "a P-256 private key (PKCS#8 PEM)";
  }
  return "";
}

}  // namespace trousseau::secret
