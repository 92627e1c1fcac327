#include "tests/testing/software_recipient.h"

namespace trousseau::testing {

SoftwareRecipient::SoftwareRecipient() : key_(*recipients::EphemeralKey::Generate()) {}

StatusOr<std::string> SoftwareRecipient::RecipientPublicPoint(Deadline) {
  if (unavailable_) return UnavailableError("software recipient is down");
  return key_.public_point();
}

StatusOr<SecureBytes> SoftwareRecipient::RecipientSharedSecret(std::string_view peer_point, Deadline) {
  ++calls_;
  if (unavailable_) return UnavailableError("software recipient is down");
  StatusOr<SecureBytes> secret = key_.SharedSecret(peer_point);
  if (secret.ok()) ++computed_;
  return secret;
}

}  // namespace trousseau::testing
