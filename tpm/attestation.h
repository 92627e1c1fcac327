// The node's side of attesting its TPM recipient key (tpm/attestation_evidence.h, docs/ha.md): the
// evidence `tpm recipient export --attest` prints, and the answer to an administrator's challenge
// (`tpm recipient activate`). Each call opens its own TPM connection, as tpm/recipient_provisioning.h.
#pragma once

#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tpm/attestation_evidence.h"
#include "tpm/recipient_provisioning.h"

namespace trousseau::tpm {

// Loads the directory's recipient key, makes the EK and the attestation key (primaries in the
// endorsement hierarchy, the same on every call), certifies the recipient key with the AK over
// `qualifying_data` and reads the RSA EK certificate (empty if the TPM has none).
StatusOr<RecipientEvidence> AttestRecipient(const RecipientConfig& config, std::string_view qualifying_data);

// TPM2_ActivateCredential of an administrator's challenge with this TPM's EK and attestation key.
// INVALID_ARGUMENT for a challenge made for another TPM or key.
StatusOr<SecureBytes> AnswerChallenge(const RecipientConfig& config, std::string_view credential_blob,
                                      std::string_view encrypted_secret);

}  // namespace trousseau::tpm
