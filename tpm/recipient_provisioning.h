// Provisioning of the TPM recipient key (multi-recipient envelopes, docs/ha.md), for the tool.
// Like tpm/provisioning.h, each call opens its own TPM connection and closes it before returning.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "core/defaults.h"
#include "core/status.h"

namespace trousseau::tpm {

struct RecipientConfig {
  std::string tcti = defaults::kTpmTcti;  // empty: FAILED_PRECONDITION, never tpm2-tss' default
  std::string recipient_dir;              // may be the key directory of the versions too
  // How long a call waits for another run holding the directory's lock (then ABORTED).
  std::chrono::milliseconds lock_wait = std::chrono::seconds(60);
};

// What the recipient key is, read from its public area after the key loaded in this TPM.
struct RecipientInfo {
  std::string public_point;        // uncompressed SEC1 P-256 point, 65 bytes
  std::string tpm_name;            // nameAlg (0x000b, SHA-256) || SHA-256(public area): 34 bytes
  std::string public_area;         // the marshalled TPM2B_PUBLIC (recipient.pub), for TPM2_Certify evidence
  uint32_t object_attributes = 0;  // TPMA_OBJECT as in the public area
  bool fixed_tpm = false;
  bool fixed_parent = false;
  bool sensitive_data_origin = false;
};

// Creates the directory (0700) if needed and a new recipient key in it: created in the TPM, loaded
// back, and only then written (recipient.priv, then recipient.pub). ALREADY_EXISTS if the directory
// already holds one; FAILED_PRECONDITION for a group/world-writable directory or one owned by
// another user. Holds the directory's lock (tpm/key_store.h) throughout.
StatusOr<RecipientInfo> CreateRecipientKey(const RecipientConfig& config);

// The recipient key of the directory, after checking it loads in this TPM: FAILED_PRECONDITION
// naming the TCTI if it does not (blobs of another TPM, owner hierarchy cleared), NOT_FOUND if the
// directory holds none.
StatusOr<RecipientInfo> ShowRecipient(const RecipientConfig& config);

}  // namespace trousseau::tpm
