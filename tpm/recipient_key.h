// The TPM's recipient key of a multi-recipient envelope (docs/ha.md, core/recipient_device.h):
// an ECC NIST P-256 key created under the storage primary, fixedTPM | fixedParent |
// sensitiveDataOrigin | userWithAuth | noDA | decrypt, neither restricted nor sign, nameAlg SHA-256,
// empty auth. Anyone wraps to its public point in software; only this TPM opens such a wrap, with
// TPM2_ECDH_ZGen. Its blobs live in a directory (tpm/key_store.h: recipient.pub / recipient.priv).
#pragma once

#include <string>

#include "core/status.h"
#include "tpm/tpm_device.h"

namespace trousseau::tpm {

// OK if `pub` is a recipient key as described above: a key that could be duplicated, was imported,
// can sign or is restricted is FAILED_PRECONDITION (its public point would promise what it is not).
Status CheckRecipientTemplate(const TPM2B_PUBLIC& pub);

// Creates a new recipient key under a freshly derived storage primary (not loaded).
StatusOr<ObjectBlobs> CreateRecipientObject(TpmDevice& device);

// Loads the recipient key (derives the primary, loads the key, flushes the primary: one object stays
// loaded). A blob of another TPM (or from before an owner-hierarchy clear) is FAILED_PRECONDITION.
StatusOr<TransientObject> LoadRecipientObject(TpmDevice& device, const ObjectBlobs& blobs);

// The public point (uncompressed SEC1, 65 bytes) of checked recipient blobs (no TPM command).
StatusOr<std::string> RecipientPoint(const ObjectBlobs& blobs);

}  // namespace trousseau::tpm
