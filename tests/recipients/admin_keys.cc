#include "tests/recipients/admin_keys.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <stdexcept>

#include "core/strings.h"
#include "recipients/sealing_key.h"

namespace trousseau::testing {
namespace {

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<size_t>(len));
}

}  // namespace

AdminKeyPair MakeAdminKey() {
  EVP_PKEY* key = EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519");
  if (key == nullptr) throw std::runtime_error("Ed25519 keygen failed");
  BIO* priv = BIO_new(BIO_s_mem());
  BIO* pub = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(priv, key, nullptr, nullptr, 0, nullptr, nullptr);
  PEM_write_bio_PUBKEY(pub, key);
  AdminKeyPair pair{.private_pem = BioText(priv), .public_pem = BioText(pub)};
  BIO_free(priv);
  BIO_free(pub);
  EVP_PKEY_free(key);
  return pair;
}

recipients::RecipientSet MakeSet(const std::string& name, uint64_t epoch, const std::vector<std::string>& points) {
  recipients::RecipientSet set{.name = name, .epoch = epoch, .recipients = {}, .sealing_key = {}, .signatures = {}};
  for (size_t i = 0; i < points.size(); ++i) {
    set.recipients.push_back({.id = StrCat("node-", i), .device = "tpm2", .public_key = points[i], .tpm_name = ""});
  }
  // As the tool does once the members are final; a set no sealing key fits (empty, too big) stays without.
  if (recipients::CheckRecipientSet(set).ok() && !recipients::DrawSealingKey(set).ok()) {
    throw std::runtime_error("drawing the sealing key failed");
  }
  return set;
}

recipients::RecipientSet Signed(recipients::RecipientSet set, const std::vector<AdminKeyPair>& admins) {
  for (const AdminKeyPair& admin : admins) {
    StatusOr<recipients::SetSignature> sig = recipients::SignSet(set, admin.private_pem);
    if (!sig.ok()) throw std::runtime_error(std::string(sig.status().message()));
    set.signatures.push_back(*std::move(sig));
  }
  return set;
}

recipients::AdminPolicy PolicyOf(const std::vector<AdminKeyPair>& admins, size_t threshold) {
  recipients::AdminPolicy policy{.keys = {}, .threshold = threshold};
  for (const AdminKeyPair& admin : admins) {
    StatusOr<recipients::AdminKey> key = recipients::AdminKey::FromPem(admin.public_pem);
    if (!key.ok()) throw std::runtime_error(std::string(key.status().message()));
    policy.keys.push_back(*std::move(key));
  }
  return policy;
}

}  // namespace trousseau::testing
