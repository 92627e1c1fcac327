#include "tpm/tpm_aead.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <tuple>

#include <vector>

#include "core/strings.h"

namespace trousseau::tpm {
namespace {

constexpr std::string_view kAeadDomain = "trousseau-hsm tpm2 aead v1";
// Not 32 bytes long, so it can never equal a seal's MAC input (always a 32-byte digest).
constexpr std::string_view kFingerprintMessage = "trousseau-hsm tpm2 key fingerprint v1";

void AppendLength(std::string& out, uint64_t n) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((n >> shift) & 0xFF));
}

std::string Sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<char*>(digest), size);
}

StatusOr<std::string> Mac(TpmDevice& device, const LoadedVersion& key, std::string_view aad, std::string_view iv,
                          std::string_view ciphertext) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  if (!ctx) return InternalError("out of memory");
  std::string lengths;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  bool ok = EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1 &&
            EVP_DigestUpdate(ctx, kAeadDomain.data(), kAeadDomain.size()) == 1;
  AppendLength(lengths, aad.size());
  ok = ok && EVP_DigestUpdate(ctx, lengths.data(), lengths.size()) == 1 &&
       EVP_DigestUpdate(ctx, aad.data(), aad.size()) == 1 && EVP_DigestUpdate(ctx, iv.data(), iv.size()) == 1;
  lengths.clear();
  AppendLength(lengths, ciphertext.size());
  ok = ok && EVP_DigestUpdate(ctx, lengths.data(), lengths.size()) == 1 &&
       EVP_DigestUpdate(ctx, ciphertext.data(), ciphertext.size()) == 1 && EVP_DigestFinal_ex(ctx, digest, &size) == 1;
  EVP_MD_CTX_free(ctx);
  if (!ok) return InternalError("SHA-256 failed");
  StatusOr<std::string> mac = device.Hmac(key.hmac, std::string_view(reinterpret_cast<char*>(digest), size));
  if (mac.ok() && mac->size() != kMacSize) return UnavailableError("the TPM returned an HMAC of the wrong size");
  return mac;
}

// The OAEP label binding the aad (the envelope header): base64(SHA-256(domain || aad)) and a NUL, as
// the TPM wants NUL-terminated labels of at most 64 bytes.
std::string OaepLabel(std::string_view aad) {
  const std::string digest = Sha256(StrCat("trousseau-hsm tpm2 oaep label v1", aad));
  unsigned char encoded[64];
  const int n = EVP_EncodeBlock(encoded, reinterpret_cast<const unsigned char*>(digest.data()), 32);
  std::string label(reinterpret_cast<char*>(encoded), static_cast<size_t>(n));
  label.push_back('\0');
  return label;
}

StatusOr<std::string> RsaOaepSeal(const LoadedVersion& key, std::string_view plaintext, std::string_view aad) {
  if (plaintext.size() > kRsaMaxPlaintext) {
    return InvalidArgumentError(StrCat("plaintext of ", plaintext.size(),
                                       " bytes is too long for an RSA-OAEP key "
                                       "version (at most ",
                                       kRsaMaxPlaintext, ")"));
  }
  BIGNUM* n = BN_bin2bn(reinterpret_cast<const unsigned char*>(key.rsa_modulus.data()),
                        static_cast<int>(key.rsa_modulus.size()), nullptr);
  BIGNUM* e = BN_new();
  OSSL_PARAM_BLD* build = OSSL_PARAM_BLD_new();
  OSSL_PARAM* params = nullptr;
  EVP_PKEY_CTX* from = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  EVP_PKEY* pkey = nullptr;
  EVP_PKEY_CTX* ctx = nullptr;
  std::string sealed;
  bool ok = n && e && build && from && BN_set_word(e, 65537) == 1 &&
            OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_N, n) == 1 &&
            OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_E, e) == 1 &&
            (params = OSSL_PARAM_BLD_to_param(build)) != nullptr && EVP_PKEY_fromdata_init(from) == 1 &&
            EVP_PKEY_fromdata(from, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1 &&
            (ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, pkey, nullptr)) != nullptr && EVP_PKEY_encrypt_init(ctx) == 1 &&
            EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) == 1 &&
            EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha256()) == 1 &&
            EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha256()) == 1;
  if (ok) {
    const std::string label = OaepLabel(aad);
    void* copy = OPENSSL_memdup(label.data(), label.size());
    ok = copy && EVP_PKEY_CTX_set0_rsa_oaep_label(ctx, copy, static_cast<int>(label.size())) == 1;
    if (!ok) OPENSSL_free(copy);
  }
  size_t size = 0;
  if (ok) {
    ok = EVP_PKEY_encrypt(ctx, nullptr, &size, reinterpret_cast<const unsigned char*>(plaintext.data()),
                          plaintext.size()) == 1;
  }
  if (ok) {
    sealed.resize(size);
    ok = EVP_PKEY_encrypt(ctx, reinterpret_cast<unsigned char*>(sealed.data()), &size,
                          reinterpret_cast<const unsigned char*>(plaintext.data()), plaintext.size()) == 1 &&
         size == kRsaSealedSize;
    sealed.resize(size);
  }
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  EVP_PKEY_CTX_free(from);
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(build);
  BN_free(e);
  BN_free(n);
  if (!ok) return InternalError("RSA-OAEP encryption with the key version's public key failed");
  return sealed;
}

}  // namespace

StatusOr<TpmCapabilities> QueryCapabilities(TpmDevice& device) {
  StatusOr<std::set<TPM2_CC>> commands = device.SupportedCommands();
  if (!commands.ok()) return commands.status();
  TpmCapabilities caps;
  caps.encrypt_decrypt2 = commands->count(TPM2_CC_EncryptDecrypt2) > 0;
  const bool v1 = commands->count(TPM2_CC_EncryptDecrypt) > 0;
  caps.encrypt_decrypt1 = v1;
  caps.hmac = commands->count(TPM2_CC_HMAC) > 0;
  StatusOr<size_t> buffer = device.MaxInputBuffer();
  if (!buffer.ok()) return buffer.status();
  caps.max_buffer = *buffer;
  if (caps.max_buffer < 64) return FailedPreconditionError("the TPM's input buffer is implausibly small");
  return caps;
}

Status RequireAesScheme(const TpmCapabilities& caps) {
  std::vector<std::string> missing;
  if (!caps.encrypt_decrypt2 && !caps.encrypt_decrypt1)
    missing.push_back("TPM2_EncryptDecrypt2 nor TPM2_EncryptDecrypt");
  if (!caps.hmac) missing.push_back("TPM2_HMAC");
  if (missing.empty()) return OkStatus();
  return FailedPreconditionError(StrCat("this TPM does not implement ", StrJoin(missing, ", "),
                                        "; AES-CFB+HMAC key versions cannot be used on it (create RSA-OAEP versions "
                                        "instead, see docs/tpm.md, 'TPMs without EncryptDecrypt')"));
}

StatusOr<VersionBlobs> CreateVersion(TpmDevice& device, uint64_t version, Scheme scheme) {
  StatusOr<TransientObject> primary = device.CreateStoragePrimary();
  if (!primary.ok()) return primary.status();
  VersionBlobs blobs;
  blobs.version = version;
  blobs.scheme = scheme;
  if (scheme == Scheme::kRsaOaep) {
    StatusOr<ObjectBlobs> rsa = device.CreateKey(*primary, KeyKind::kRsa2048Oaep);
    if (!rsa.ok()) return rsa.status();
    blobs.rsa = *std::move(rsa);
    return blobs;
  }
  StatusOr<ObjectBlobs> aes = device.CreateKey(*primary, KeyKind::kAes256Cfb);
  if (!aes.ok()) return aes.status();
  StatusOr<ObjectBlobs> hmac = device.CreateKey(*primary, KeyKind::kHmacSha256);
  if (!hmac.ok()) return hmac.status();
  blobs.aes = *std::move(aes);
  blobs.hmac = *std::move(hmac);
  return blobs;
}

namespace {
constexpr TPMA_OBJECT kRequired = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN;

StatusOr<std::string> CheckRsaTemplate(const VersionBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> rsa = TpmDevice::ParsePublic(blobs.rsa.public_area);
  const std::string which = StrCat("key version ", blobs.version, ": ");
  if (!rsa.ok()) return FailedPreconditionError(StrCat(which, "unreadable public area"));
  const TPMT_PUBLIC& r = rsa->publicArea;
  if (r.type != TPM2_ALG_RSA || r.parameters.rsaDetail.keyBits != 2048 ||
      r.parameters.rsaDetail.scheme.scheme != TPM2_ALG_OAEP ||
      r.parameters.rsaDetail.scheme.details.oaep.hashAlg != TPM2_ALG_SHA256 ||
      (r.parameters.rsaDetail.exponent != 0 && r.parameters.rsaDetail.exponent != 65537) || r.unique.rsa.size != 256) {
    return FailedPreconditionError(StrCat(which, "the .rsa object is not an RSA-2048 OAEP-SHA256 key"));
  }
  if ((r.objectAttributes & kRequired) != kRequired) {
    return FailedPreconditionError(
        StrCat(which,
               "refusing a key that could be duplicated or was imported (needs fixedTPM, fixedParent, "
               "sensitiveDataOrigin)"));
  }
  return std::string(reinterpret_cast<const char*>(r.unique.rsa.buffer), r.unique.rsa.size);
}

Status CheckTemplate(const VersionBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> aes = TpmDevice::ParsePublic(blobs.aes.public_area);
  StatusOr<TPM2B_PUBLIC> hmac = TpmDevice::ParsePublic(blobs.hmac.public_area);
  const std::string which = StrCat("key version ", blobs.version, ": ");
  if (!aes.ok() || !hmac.ok()) return FailedPreconditionError(StrCat(which, "unreadable public area"));
  const TPMT_PUBLIC& a = aes->publicArea;
  const TPMT_PUBLIC& h = hmac->publicArea;
  if (a.type != TPM2_ALG_SYMCIPHER || a.parameters.symDetail.sym.algorithm != TPM2_ALG_AES ||
      a.parameters.symDetail.sym.keyBits.aes != 256 || a.parameters.symDetail.sym.mode.aes != TPM2_ALG_CFB) {
    return FailedPreconditionError(StrCat(which, "the .aes object is not an AES-256-CFB key"));
  }
  if (h.type != TPM2_ALG_KEYEDHASH || h.parameters.keyedHashDetail.scheme.scheme != TPM2_ALG_HMAC ||
      h.parameters.keyedHashDetail.scheme.details.hmac.hashAlg != TPM2_ALG_SHA256) {
    return FailedPreconditionError(StrCat(which, "the .hmac object is not an HMAC-SHA256 key"));
  }
  if ((a.objectAttributes & kRequired) != kRequired || (h.objectAttributes & kRequired) != kRequired) {
    return FailedPreconditionError(
        StrCat(which,
               "refusing a key that could be duplicated or was imported (needs fixedTPM, fixedParent, "
               "sensitiveDataOrigin)"));
  }
  return OkStatus();
}
}  // namespace

StatusOr<LoadedVersion> LoadVersion(TpmDevice& device, const TpmCapabilities& caps, const VersionBlobs& blobs) {
  LoadedVersion loaded;
  loaded.scheme = blobs.scheme;
  std::vector<std::tuple<const ObjectBlobs*, TransientObject*, const char*>> objects;
  if (blobs.scheme == Scheme::kRsaOaep) {
    StatusOr<std::string> modulus = CheckRsaTemplate(blobs);
    if (!modulus.ok()) return modulus.status();
    loaded.rsa_modulus = *std::move(modulus);
    objects = {{&blobs.rsa, &loaded.rsa, "RSA"}};
  } else {
    if (Status s = RequireAesScheme(caps); !s.ok()) {
      return FailedPreconditionError(StrCat("key version ", blobs.version, ": ", s.message()));
    }
    if (Status s = CheckTemplate(blobs); !s.ok()) return s;
    objects = {{&blobs.aes, &loaded.aes, "AES"}, {&blobs.hmac, &loaded.hmac, "HMAC"}};
  }
  StatusOr<TransientObject> primary = device.CreateStoragePrimary();
  if (!primary.ok()) return primary.status();
  for (auto [blob, into, what] : objects) {
    StatusOr<TransientObject> object = device.Load(*primary, *blob);
    if (!object.ok()) {
      if (IsFailedPrecondition(object.status())) {
        return FailedPreconditionError(
            StrCat("key version ", blobs.version, " (", what,
                   " object) cannot be loaded by this TPM: its blobs were made by another TPM, or the TPM's owner "
                   "hierarchy was cleared since (",
                   object.status().message(), ")"));
      }
      return object.status();
    }
    *into = *std::move(object);
  }
  return loaded;  // the primary is flushed here: only the two keys stay loaded
}

StatusOr<std::string> Fingerprint(TpmDevice& device, const LoadedVersion& key) {
  if (key.scheme == Scheme::kRsaOaep) {
    StatusOr<std::string> name = device.Name(key.rsa);
    if (!name.ok()) return name.status();
    std::string material = "trousseau-hsm tpm2 rsa-oaep key";
    AppendLength(material, name->size());
    material += *name;
    return Sha256(material).substr(0, 16);
  }
  StatusOr<std::string> mac = device.Hmac(key.hmac, kFingerprintMessage);
  if (!mac.ok()) return mac.status();
  StatusOr<std::string> name = device.Name(key.aes);
  if (!name.ok()) return name.status();
  std::string material;
  AppendLength(material, mac->size());
  material += *mac;
  AppendLength(material, name->size());
  material += *name;
  return Sha256(material).substr(0, 16);
}

StatusOr<std::string> Seal(TpmDevice& device, const TpmCapabilities& caps, const LoadedVersion& key,
                           std::string_view plaintext, std::string_view aad) {
  if (key.scheme == Scheme::kRsaOaep) return RsaOaepSeal(key, plaintext, aad);
  std::string sealed(kIvSize + plaintext.size(), '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(sealed.data()), kIvSize) != 1) {
    return UnavailableError("the system random generator failed");
  }
  const std::string_view iv(sealed.data(), kIvSize);
  if (Status s = device.Cfb(key.aes, /*decrypt=*/false, caps.encrypt_decrypt2, caps.max_buffer, iv, plaintext,
                            reinterpret_cast<uint8_t*>(sealed.data() + kIvSize));
      !s.ok()) {
    return s;
  }
  StatusOr<std::string> mac = Mac(device, key, aad, iv, std::string_view(sealed).substr(kIvSize));
  if (!mac.ok()) return mac.status();
  sealed += *mac;
  return sealed;
}

StatusOr<SecureBytes> Open(TpmDevice& device, const TpmCapabilities& caps, const LoadedVersion& key,
                           std::string_view sealed, std::string_view aad) {
  if (key.scheme == Scheme::kRsaOaep) {
    if (sealed.size() != kRsaSealedSize) {
      return InvalidArgumentError("ciphertext has the wrong size for an RSA-OAEP key version");
    }
    // The TPM rejects an input >= the modulus; say so without asking it.
    if (std::string_view(sealed) >= std::string_view(key.rsa_modulus)) {
      return InvalidArgumentError("ciphertext failed authentication (not below the RSA modulus)");
    }
    StatusOr<SecureBytes> opened = device.RsaOaepDecrypt(key.rsa, sealed, OaepLabel(aad));
    if (opened.ok() || IsInvalidArgument(opened.status()) || device.link_lost()) return opened;
    // TPMs disagree on how they report a bad OAEP padding or label: the spec says TPM_RC_VALUE,
    // libtpms (swtpm) answers TPM_RC_FAILURE without entering failure mode. A round trip that works
    // tells us the ciphertext, not the TPM, is at fault.
    constexpr std::string_view kProbe = "trousseau-hsm tpm2 oaep probe";
    StatusOr<std::string> probe = RsaOaepSeal(key, kProbe, kProbe);
    if (!probe.ok()) return opened;
    StatusOr<SecureBytes> probed = device.RsaOaepDecrypt(key.rsa, *probe, OaepLabel(kProbe));
    if (!probed.ok() || probed->view() != kProbe) return opened;
    return InvalidArgumentError("ciphertext failed authentication (RSA-OAEP padding or label mismatch)");
  }
  if (sealed.size() < kSealOverhead) {
    return InvalidArgumentError("ciphertext is too short to hold an IV and a MAC");
  }
  const std::string_view iv = sealed.substr(0, kIvSize);
  const std::string_view body = sealed.substr(kIvSize, sealed.size() - kSealOverhead);
  const std::string_view mac = sealed.substr(sealed.size() - kMacSize);
  StatusOr<std::string> expected = Mac(device, key, aad, iv, body);
  if (!expected.ok()) return expected.status();
  if (CRYPTO_memcmp(expected->data(), mac.data(), kMacSize) != 0) {
    return InvalidArgumentError("ciphertext failed authentication (tampered, truncated, other aad or not ours)");
  }
  SecureBytes plaintext(body.size());
  if (Status s =
          device.Cfb(key.aes, /*decrypt=*/true, caps.encrypt_decrypt2, caps.max_buffer, iv, body, plaintext.data());
      !s.ok()) {
    return s;
  }
  return plaintext;
}

}  // namespace trousseau::tpm
