// FOR TESTS ONLY: a RecipientDevice whose P-256 private key lives in this process's memory, for the
// unit tests of recipient sets, wraps and RecipientBackend (the KmsEngine ones use SoftwareBackend
// alike). Real ECDH (OpenSSL); the TPM and PKCS#11 recipients are tested on swtpm and SoftHSM.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "core/recipient_device.h"
#include "recipients/p256.h"

namespace trousseau::testing {

class SoftwareRecipient final : public RecipientDevice {
 public:
  SoftwareRecipient();

  std::string_view RecipientKind() const override { return "software"; }
  std::string DescribeRecipient() const override { return "software recipient (tests only)"; }
  StatusOr<std::string> RecipientPublicPoint(Deadline deadline) override;
  StatusOr<SecureBytes> RecipientSharedSecret(std::string_view peer_point, Deadline deadline) override;

  const std::string& public_point() const { return key_.public_point(); }
  // While down, every call answers UNAVAILABLE, as a lost device does.
  void SetUnavailable(bool unavailable) { unavailable_ = unavailable; }
  int shared_secrets_computed() const { return computed_.load(); }
  // Every RecipientSharedSecret call, those answered UNAVAILABLE included.
  int calls() const { return calls_.load(); }

 private:
  recipients::EphemeralKey key_;  // kept for the device's life: its long-term key
  std::atomic<bool> unavailable_{false};
  std::atomic<int> computed_{0};
  std::atomic<int> calls_{0};
};

}  // namespace trousseau::testing
