#include "tpm/attestation_evidence.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <tss2/tss2_mu.h>

#include <array>
#include <cstring>
#include <memory>

#include "core/big_endian.h"
#include "core/strings.h"
#include "tpm/recipient_key.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {
namespace {

template <typename T, void (*Free)(T*)>
struct Deleter {
  void operator()(T* p) const { Free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, Deleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using BnPtr = std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>>;
using BldPtr = std::unique_ptr<OSSL_PARAM_BLD, Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using ParamsPtr = std::unique_ptr<OSSL_PARAM, Deleter<OSSL_PARAM, OSSL_PARAM_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, Deleter<ECDSA_SIG, ECDSA_SIG_free>>;

constexpr std::string_view kQualifyingDomain = "trousseau-hsm recipient attestation v1";
constexpr size_t kSha256Size = 32;

std::string Sha256(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest.data()), len);
}

std::string Be16(size_t value) {
  std::array<uint8_t, 2> out{};
  StoreBigEndian<2>(value, out);
  return std::string(reinterpret_cast<const char*>(out.data()), out.size());
}

std::string Be32(size_t value) {
  std::array<uint8_t, 4> out{};
  StoreBigEndian<4>(value, out);
  return std::string(reinterpret_cast<const char*>(out.data()), out.size());
}

StatusOr<std::string> HmacSha256(std::string_view key, std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  size_t len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
                reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac.data(), mac.size(),
                &len) == nullptr) {
    return InternalError("HMAC-SHA256 failed");
  }
  std::string out(reinterpret_cast<const char*>(mac.data()), len);
  OPENSSL_cleanse(mac.data(), mac.size());
  return out;
}

// TPM 2.0 Part 1, 11.4.10.2: KDFa with HMAC-SHA256 in counter mode.
StatusOr<SecureBytes> KdfaSha256(std::string_view key, std::string_view label, std::string_view context_u,
                                 std::string_view context_v, size_t bits) {
  SecureBytes out(bits / 8);
  size_t filled = 0;
  for (uint32_t counter = 1; filled < out.size(); ++counter) {
    std::string input = Be32(counter);
    input.append(label);
    input.push_back('\0');
    input.append(context_u);
    input.append(context_v);
    input.append(Be32(bits));
    StatusOr<std::string> block = HmacSha256(key, input);
    if (!block.ok()) return block.status();
    const size_t take = std::min(block->size(), out.size() - filled);
    std::memcpy(out.data() + filled, block->data(), take);
    filled += take;
    OPENSSL_cleanse(block->data(), block->size());
  }
  return out;
}

StatusOr<TPM2B_PUBLIC> ParsePublicArea(std::string_view marshalled, std::string_view what) {
  StatusOr<TPM2B_PUBLIC> pub = TpmDevice::ParsePublic(marshalled);
  if (!pub.ok()) return InvalidArgumentError(StrCat(what, ": not a TPM2B_PUBLIC"));
  return pub;
}

// An OpenSSL public key from a TPM ECC P-256 or RSA public area.
StatusOr<PkeyPtr> PublicKeyOf(const TPM2B_PUBLIC& pub) {
  BldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld) return InternalError("OpenSSL allocation failed");
  const TPMT_PUBLIC& area = pub.publicArea;
  const char* type = nullptr;
  std::string point;
  BnPtr n, e;
  if (area.type == TPM2_ALG_ECC) {
    StatusOr<std::string> p = TpmDevice::EccPublicPoint(pub);
    if (!p.ok()) return p.status();
    point = *std::move(p);
    type = "EC";
    OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
    OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size());
  } else if (area.type == TPM2_ALG_RSA) {
    type = "RSA";
    n.reset(BN_bin2bn(area.unique.rsa.buffer, area.unique.rsa.size, nullptr));
    e.reset(BN_new());
    if (!n || !e ||
        BN_set_word(e.get(), area.parameters.rsaDetail.exponent ? area.parameters.rsaDetail.exponent : 65537) != 1) {
      return InternalError("OpenSSL allocation failed");
    }
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get());
    OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get());
  } else {
    return InvalidArgumentError("neither an ECC nor an RSA public area");
  }
  ParamsPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
    return InvalidArgumentError("the public area holds no usable public key");
  }
  return PkeyPtr(key);
}

}  // namespace

std::string AttestationQualifyingData(std::string_view member_id, std::string_view public_point) {
  std::string input;
  for (std::string_view field : {kQualifyingDomain, member_id, public_point}) {
    input.append(Be32(field.size()));
    input.append(field);
  }
  return Sha256(input);
}

StatusOr<std::string> NameOfPublic(std::string_view marshalled_public) {
  StatusOr<TPM2B_PUBLIC> pub = ParsePublicArea(marshalled_public, "public area");
  if (!pub.ok()) return pub.status();
  if (pub->publicArea.nameAlg != TPM2_ALG_SHA256) return InvalidArgumentError("nameAlg is not SHA-256");
  return Be16(TPM2_ALG_SHA256) + Sha256(marshalled_public.substr(2));  // TPM2B size prefix excluded
}

StatusOr<std::string> VerifyRecipientEvidence(const RecipientEvidence& evidence, std::string_view public_point,
                                              std::string_view tpm_name, std::string_view qualifying_data) {
  // The recipient key: the member's point, the recipient template, the member's name.
  StatusOr<TPM2B_PUBLIC> recipient = ParsePublicArea(evidence.recipient_public, "recipient_public");
  if (!recipient.ok()) return recipient.status();
  if (Status s = CheckRecipientTemplate(*recipient); !s.ok()) return PermissionDeniedError(s.message());
  StatusOr<std::string> point = TpmDevice::EccPublicPoint(*recipient);
  if (!point.ok() || *point != public_point) {
    return PermissionDeniedError("the attested key is not the member's public key");
  }
  StatusOr<std::string> recipient_name = NameOfPublic(evidence.recipient_public);
  if (!recipient_name.ok()) return recipient_name.status();
  if (!tpm_name.empty() && *recipient_name != tpm_name) {
    return PermissionDeniedError("the attested key's TPM name is not the member's tpm_name");
  }
  // The attestation key: restricted, signing, fixedTPM, ECDSA P-256 SHA-256.
  StatusOr<TPM2B_PUBLIC> ak = ParsePublicArea(evidence.ak_public, "ak_public");
  if (!ak.ok()) return ak.status();
  const TPMT_PUBLIC& ak_area = ak->publicArea;
  constexpr TPMA_OBJECT kAkRequired = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                                      TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
  if (ak_area.type != TPM2_ALG_ECC || ak_area.nameAlg != TPM2_ALG_SHA256 ||
      (ak_area.objectAttributes & kAkRequired) != kAkRequired || (ak_area.objectAttributes & TPMA_OBJECT_DECRYPT) ||
      ak_area.parameters.eccDetail.curveID != TPM2_ECC_NIST_P256 ||
      ak_area.parameters.eccDetail.scheme.scheme != TPM2_ALG_ECDSA ||
      ak_area.parameters.eccDetail.scheme.details.ecdsa.hashAlg != TPM2_ALG_SHA256) {
    return PermissionDeniedError(
        "the attestation key is not a fixedTPM, restricted ECDSA P-256 SHA-256 signing key, so its signature proves "
        "nothing about the TPM");
  }
  StatusOr<std::string> ak_name = NameOfPublic(evidence.ak_public);
  if (!ak_name.ok()) return ak_name.status();
  // The certification: generated by the TPM, of this key, for this member.
  TPMS_ATTEST attest{};
  size_t offset = 0;
  if (Tss2_MU_TPMS_ATTEST_Unmarshal(reinterpret_cast<const uint8_t*>(evidence.certify_info.data()),
                                    evidence.certify_info.size(), &offset, &attest) != TSS2_RC_SUCCESS ||
      offset != evidence.certify_info.size()) {
    return InvalidArgumentError("certify_info: not a TPMS_ATTEST");
  }
  if (attest.magic != TPM2_GENERATED_VALUE || attest.type != TPM2_ST_ATTEST_CERTIFY) {
    return PermissionDeniedError("certify_info is not a TPM2_Certify result generated by a TPM");
  }
  if (std::string_view(reinterpret_cast<const char*>(attest.extraData.buffer), attest.extraData.size) !=
      qualifying_data) {
    return PermissionDeniedError("the certification was made for another member (qualifying data differs)");
  }
  const TPM2B_NAME& certified = attest.attested.certify.name;
  if (std::string_view(reinterpret_cast<const char*>(certified.name), certified.size) != *recipient_name) {
    return PermissionDeniedError("the certification is of another key than the attested recipient key");
  }
  // The AK's signature over it.
  StatusOr<PkeyPtr> ak_key = PublicKeyOf(*ak);
  if (!ak_key.ok()) return ak_key.status();
  if (evidence.certify_signature.size() != 64) return InvalidArgumentError("certify_signature: not r || s of P-256");
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(evidence.certify_signature.data()), 32, nullptr);
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(evidence.certify_signature.data()) + 32, 32, nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    return InternalError("OpenSSL allocation failed");
  }
  unsigned char* der = nullptr;
  const int der_len = i2d_ECDSA_SIG(sig.get(), &der);
  if (der_len <= 0) return InternalError("cannot encode the ECDSA signature");
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> der_owner(der, [](unsigned char* p) { OPENSSL_free(p); });
  MdCtxPtr md(EVP_MD_CTX_new());
  if (!md || EVP_DigestVerifyInit(md.get(), nullptr, EVP_sha256(), nullptr, ak_key->get()) != 1 ||
      EVP_DigestVerify(md.get(), der, static_cast<size_t>(der_len),
                       reinterpret_cast<const unsigned char*>(evidence.certify_info.data()),
                       evidence.certify_info.size()) != 1) {
    return PermissionDeniedError("the attestation key's signature over the certification does not verify");
  }
  return *ak_name;
}

Status VerifyEkCertificate(const RecipientEvidence& evidence, std::string_view ca_bundle_pem) {
  if (evidence.ek_certificate.empty()) {
    return PermissionDeniedError(
        "the TPM holds no RSA EK certificate (NV index 0x01c00002): nothing ties its endorsement key to a TPM maker");
  }
  const unsigned char* p = reinterpret_cast<const unsigned char*>(evidence.ek_certificate.data());
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(evidence.ek_certificate.size())));
  if (!cert) return PermissionDeniedError("the EK certificate is not a DER X.509 certificate");
  StorePtr store(X509_STORE_new());
  BioPtr bio(BIO_new_mem_buf(ca_bundle_pem.data(), static_cast<int>(ca_bundle_pem.size())));
  if (!store || !bio) return InternalError("OpenSSL allocation failed");
  int loaded = 0;
  while (X509* ca = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    X509_STORE_add_cert(store.get(), ca);
    X509_free(ca);
    ++loaded;
  }
  if (loaded == 0) return InvalidArgumentError("the EK CA bundle holds no PEM certificate");
  // Intermediates may be in the bundle as trust anchors; a TPM maker's chain is short and pinned here.
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return InternalError("OpenSSL allocation failed");
  }
  if (X509_verify_cert(ctx.get()) != 1) {
    return PermissionDeniedError(StrCat("the EK certificate does not chain to the given CA: ",
                                        X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  }
  StatusOr<TPM2B_PUBLIC> ek = ParsePublicArea(evidence.ek_public, "ek_public");
  if (!ek.ok()) return ek.status();
  StatusOr<PkeyPtr> ek_key = PublicKeyOf(*ek);
  if (!ek_key.ok()) return ek_key.status();
  if (EVP_PKEY_eq(X509_get0_pubkey(cert.get()), ek_key->get()) != 1) {
    return PermissionDeniedError("the EK certificate names another key than the TPM's endorsement key");
  }
  return OkStatus();
}

StatusOr<CredentialChallenge> MakeCredential(std::string_view ek_public, std::string_view ak_name,
                                             const SecureBytes& secret) {
  StatusOr<TPM2B_PUBLIC> ek = ParsePublicArea(ek_public, "ek_public");
  if (!ek.ok()) return ek.status();
  const TPMT_PUBLIC& area = ek->publicArea;
  if (area.type != TPM2_ALG_RSA || area.nameAlg != TPM2_ALG_SHA256 ||
      area.parameters.rsaDetail.symmetric.algorithm != TPM2_ALG_AES ||
      area.parameters.rsaDetail.symmetric.keyBits.aes != 128 ||
      area.parameters.rsaDetail.symmetric.mode.aes != TPM2_ALG_CFB) {
    return InvalidArgumentError("ek_public is not an RSA EK with AES-128-CFB and SHA-256 (template L-1)");
  }
  if (secret.size() == 0 || secret.size() > kSha256Size) return InvalidArgumentError("credential of 1-32 bytes");
  // The seed, RSA-OAEP-SHA256 encrypted to the EK with the label "IDENTITY".
  SecureBytes seed(kSha256Size);
  if (RAND_priv_bytes(seed.data(), static_cast<int>(seed.size())) != 1) {
    return UnavailableError("the system random number generator failed");
  }
  StatusOr<PkeyPtr> ek_key = PublicKeyOf(*ek);
  if (!ek_key.ok()) return ek_key.status();
  PkeyCtxPtr rsa(EVP_PKEY_CTX_new_from_pkey(nullptr, ek_key->get(), nullptr));
  static const char kLabel[] = "IDENTITY";  // with its NUL byte, as the TPM checks it
  unsigned char* label = static_cast<unsigned char*>(OPENSSL_memdup(kLabel, sizeof kLabel));
  if (!rsa || !label || EVP_PKEY_encrypt_init(rsa.get()) != 1 ||
      EVP_PKEY_CTX_set_rsa_padding(rsa.get(), RSA_PKCS1_OAEP_PADDING) != 1 ||
      EVP_PKEY_CTX_set_rsa_oaep_md(rsa.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set_rsa_mgf1_md(rsa.get(), EVP_sha256()) != 1 ||
      EVP_PKEY_CTX_set0_rsa_oaep_label(rsa.get(), label, sizeof kLabel) != 1) {
    OPENSSL_free(label);
    return InternalError("RSA-OAEP set-up failed");
  }
  std::string encrypted(512, '\0');
  size_t encrypted_len = encrypted.size();
  if (EVP_PKEY_encrypt(rsa.get(), reinterpret_cast<unsigned char*>(encrypted.data()), &encrypted_len, seed.data(),
                       seed.size()) != 1) {
    return InternalError("RSA-OAEP encryption to the EK failed");
  }
  encrypted.resize(encrypted_len);
  // TPM 2.0 Part 1, 24: the credential protected like a duplicated object's inner wrapper.
  StatusOr<SecureBytes> sym_key = KdfaSha256(seed.view(), "STORAGE", ak_name, "", 128);
  StatusOr<SecureBytes> hmac_key = KdfaSha256(seed.view(), "INTEGRITY", "", "", 256);
  if (!sym_key.ok()) return sym_key.status();
  if (!hmac_key.ok()) return hmac_key.status();
  SecureBytes plain(2 + secret.size());  // TPM2B_DIGEST
  StoreBigEndian<2>(secret.size(), std::span<uint8_t, 2>(plain.data(), 2));
  std::memcpy(plain.data() + 2, secret.data(), secret.size());
  std::string enc_identity(plain.size(), '\0');
  CipherCtxPtr cipher(EVP_CIPHER_CTX_new());
  const std::array<unsigned char, 16> iv{};
  int out_len = 0, final_len = 0;
  if (!cipher || EVP_EncryptInit_ex(cipher.get(), EVP_aes_128_cfb128(), nullptr, sym_key->data(), iv.data()) != 1 ||
      EVP_EncryptUpdate(cipher.get(), reinterpret_cast<unsigned char*>(enc_identity.data()), &out_len, plain.data(),
                        static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(cipher.get(), reinterpret_cast<unsigned char*>(enc_identity.data()) + out_len, &final_len) !=
          1) {
    return InternalError("AES-128-CFB failed");
  }
  StatusOr<std::string> outer_hmac = HmacSha256(hmac_key->view(), enc_identity + std::string(ak_name));
  if (!outer_hmac.ok()) return outer_hmac.status();
  const std::string id_object = Be16(outer_hmac->size()) + *outer_hmac + enc_identity;
  CredentialChallenge challenge;
  challenge.credential_blob = Be16(id_object.size()) + id_object;
  challenge.encrypted_secret = Be16(encrypted.size()) + encrypted;
  return challenge;
}

}  // namespace trousseau::tpm
