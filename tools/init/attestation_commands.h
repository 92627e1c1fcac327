// Attested TPM members (docs/ha.md, tpm/attestation_evidence.h), in three steps between a node and the
// administrators:
//   node:   tpm recipient export --attest        the member JSON with its TPM's evidence
//   admin:  recipients challenge --member --ek-ca --out   checks the evidence, writes a challenge
//   node:   tpm recipient activate --challenge   the answer only that TPM can give
//   admin:  recipients add --member --ek-ca --challenge --answer   checks it all again and adds the member
// Everything exchanged is public: evidence, challenge and answer prove, they do not protect.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "recipients/recipient_set.h"
#include "tpm/attestation_evidence.h"

namespace trousseau::init {

struct AttestationOptions {
  std::string member_file;     // challenge
  std::string ek_ca_file;      // challenge, add: the TPM makers' CA certificates (PEM bundle)
  std::string challenge_file;  // challenge: written; activate, add: read
  std::string answer_file;     // add: what `tpm recipient activate` printed
  std::string tcti;            // activate
  std::string recipient_dir;   // activate
};

// The "attestation" object of a member JSON, and back.
nlohmann::json EvidenceToJson(const tpm::RecipientEvidence& evidence);
StatusOr<tpm::RecipientEvidence> EvidenceFromJson(const nlohmann::json& object);

// Reads a member file: the member and, if present, its evidence (the "attestation" object).
struct MemberFile {
  recipients::Recipient member;
  std::optional<tpm::RecipientEvidence> evidence;
};
StatusOr<MemberFile> ReadMemberFile(const std::string& path);

int RecipientsChallenge(const AttestationOptions& options);
int TpmRecipientActivate(const AttestationOptions& options);

// What `recipients add` checks when given --ek-ca: the evidence, the EK certificate, that the challenge
// was made for this member's TPM and that the answer opens it. OK with a line saying what was proven;
// PERMISSION_DENIED (or INVALID_ARGUMENT for unreadable files) otherwise.
StatusOr<std::string> CheckAttestedMember(const MemberFile& member, const AttestationOptions& options);

}  // namespace trousseau::init
