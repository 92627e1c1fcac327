#include "tpm/attestation.h"

#include "core/strings.h"
#include "tpm/key_store.h"
#include "tpm/recipient_key.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {
namespace {

constexpr auto kTimeout = std::chrono::seconds(30);

StatusOr<std::unique_ptr<TpmDevice>> Connect(const RecipientConfig& config) {
  if (config.tcti.empty()) return FailedPreconditionError(kEmptyTctiMessage);
  StatusOr<std::unique_ptr<TpmDevice>> device = TpmDevice::Open(config.tcti);
  if (device.ok()) (*device)->set_deadline(Clock::now() + kTimeout);
  return device;
}

}  // namespace

StatusOr<RecipientEvidence> AttestRecipient(const RecipientConfig& config, std::string_view qualifying_data) {
  if (config.recipient_dir.empty()) return FailedPreconditionError("no TPM recipient key directory configured");
  StatusOr<ObjectBlobs> blobs = ReadRecipientKey(config.recipient_dir);
  if (!blobs.ok()) return blobs.status();
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  RecipientEvidence evidence;
  evidence.recipient_public = blobs->public_area;
  // One object at a time where it can be: a TPM without a resource manager has three slots.
  StatusOr<std::string> certificate = (*device)->ReadNv(kRsaEkCertificateIndex);
  if (certificate.ok()) {
    evidence.ek_certificate = *std::move(certificate);
  } else if (!IsNotFound(certificate.status())) {
    return certificate.status();
  }
  {
    StatusOr<TransientObject> ek = (*device)->CreateEndorsementKey(&evidence.ek_public);
    if (!ek.ok()) return ek.status();
  }
  StatusOr<TransientObject> key = LoadRecipientObject(**device, *blobs);
  if (!key.ok()) return key.status();
  StatusOr<TransientObject> ak = (*device)->CreateAttestationKey(&evidence.ak_public);
  if (!ak.ok()) return ak.status();
  StatusOr<TpmDevice::Certification> certified = (*device)->Certify(*key, *ak, qualifying_data);
  if (!certified.ok()) return certified.status();
  evidence.certify_info = std::move(certified->attest);
  evidence.certify_signature = std::move(certified->signature);
  return evidence;
}

StatusOr<SecureBytes> AnswerChallenge(const RecipientConfig& config, std::string_view credential_blob,
                                      std::string_view encrypted_secret) {
  StatusOr<std::unique_ptr<TpmDevice>> device = Connect(config);
  if (!device.ok()) return device.status();
  StatusOr<TransientObject> ek = (*device)->CreateEndorsementKey(nullptr);
  if (!ek.ok()) return ek.status();
  StatusOr<TransientObject> ak = (*device)->CreateAttestationKey(nullptr);
  if (!ak.ok()) return ak.status();
  return (*device)->ActivateCredential(*ak, *ek, credential_blob, encrypted_secret);
}

}  // namespace trousseau::tpm
