#include "tests/testing/software_recipient.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#include <array>
#include <stdexcept>

namespace trousseau::testing {

SoftwareRecipient::SoftwareRecipient() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (key == nullptr) throw std::runtime_error("P-256 keygen failed");
  key_ = key;
  std::array<unsigned char, 133> pub{};
  size_t len = 0;
  EVP_PKEY_get_octet_string_param(key, OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size(), &len);
  public_point_.assign(reinterpret_cast<const char*>(pub.data()), len);
}

SoftwareRecipient::~SoftwareRecipient() { EVP_PKEY_free(static_cast<EVP_PKEY*>(key_)); }

StatusOr<std::string> SoftwareRecipient::RecipientPublicPoint(Deadline) {
  if (unavailable_) return UnavailableError("software recipient is down");
  return public_point_;
}

StatusOr<SecureBytes> SoftwareRecipient::RecipientSharedSecret(std::string_view peer_point, Deadline) {
  if (unavailable_) return UnavailableError("software recipient is down");
  char group[] = "P-256";
  std::string pub(peer_point);
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub.data(), pub.size()),
      OSSL_PARAM_construct_end(),
  };
  EVP_PKEY_CTX* from = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  EVP_PKEY* peer = nullptr;
  const bool parsed = from != nullptr && EVP_PKEY_fromdata_init(from) == 1 &&
                      EVP_PKEY_fromdata(from, &peer, EVP_PKEY_PUBLIC_KEY, params) == 1;
  EVP_PKEY_CTX_free(from);
  if (!parsed) return InvalidArgumentError("not a P-256 point");
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_from_pkey(nullptr, static_cast<EVP_PKEY*>(key_), nullptr);
  SecureBytes secret(kP256SharedSecretSize);
  size_t len = secret.size();
  const bool ok = ctx != nullptr && EVP_PKEY_derive_init(ctx) == 1 && EVP_PKEY_derive_set_peer(ctx, peer) == 1 &&
                  EVP_PKEY_derive(ctx, secret.data(), &len) == 1;
  EVP_PKEY_CTX_free(ctx);
  EVP_PKEY_free(peer);
  if (!ok) return InvalidArgumentError("ECDH failed");
  ++computed_;
  return secret;
}

}  // namespace trousseau::testing
