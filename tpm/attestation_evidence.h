// Evidence that a recipient key lives in a genuine TPM (docs/ha.md, "Attested TPM members"), and the
// administrator's side of checking it, in software (OpenSSL, tss2-mu; no TPM needed):
//   1. the node's TPM certifies its recipient key with an attestation key (AK): TPM2_Certify over the
//      key's name, whose public area says fixedTPM | fixedParent | sensitiveDataOrigin;
//   2. the AK is a restricted signing key, so it signs only what the TPM itself generated, and the
//      TPM proves it holds the AK beside its endorsement key (EK) by TPM2_ActivateCredential of a
//      challenge made here with MakeCredential to the EK for the AK's name;
//   3. the EK certificate, read from the TPM's NV, chains to the TPM maker's CA the administrator
//      trusts and names the EK's public key.
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::tpm {

// The NV index of the RSA 2048 EK certificate (TCG EK Credential Profile, low range).
inline constexpr uint32_t kRsaEkCertificateIndex = 0x01c00002;

struct RecipientEvidence {
  std::string ek_public;          // marshalled TPM2B_PUBLIC of the EK (template L-1, RSA 2048)
  std::string ek_certificate;     // DER; empty when the TPM holds none
  std::string ak_public;          // marshalled TPM2B_PUBLIC of the attestation key
  std::string recipient_public;   // marshalled TPM2B_PUBLIC of the recipient key
  std::string certify_info;       // marshalled TPMS_ATTEST of TPM2_Certify
  std::string certify_signature;  // the AK's ECDSA P-256 signature over certify_info: r || s
};

// What TPM2_Certify's qualifying data is for a member: SHA-256 of a domain string, its id and its public
// point, so that evidence cannot be presented for another member.
std::string AttestationQualifyingData(std::string_view member_id, std::string_view public_point);

// The name of an object from its marshalled TPM2B_PUBLIC: nameAlg (SHA-256 only) || H(TPMT_PUBLIC).
StatusOr<std::string> NameOfPublic(std::string_view marshalled_public);

// Checks 1. and the part of 2. that needs no TPM: the recipient public area is the member's key
// (`public_point`, and `tpm_name` when not empty) with the recipient template, the AK is a restricted
// ECDSA P-256 signing key that is fixedTPM, and its signature covers a TPM-generated certification of
// that key with `qualifying_data`. Returns the AK's name (what the challenge is made for).
// PERMISSION_DENIED naming what does not hold; INVALID_ARGUMENT for bytes that are no such structures.
StatusOr<std::string> VerifyRecipientEvidence(const RecipientEvidence& evidence, std::string_view public_point,
                                              std::string_view tpm_name, std::string_view qualifying_data);

// Checks 3.: the EK certificate chains to a CA of `ca_bundle_pem` (root and intermediates, PEM) and its
// public key is the EK's. PERMISSION_DENIED otherwise (a missing certificate included).
Status VerifyEkCertificate(const RecipientEvidence& evidence, std::string_view ca_bundle_pem);

// TPM2_MakeCredential in software: `secret` (at most 32 bytes) sealed to the RSA EK of `ek_public` for
// the object named `ak_name`; only a TPM holding both opens it (TPM2_ActivateCredential).
struct CredentialChallenge {
  std::string credential_blob;   // marshalled TPM2B_ID_OBJECT
  std::string encrypted_secret;  // marshalled TPM2B_ENCRYPTED_SECRET
};
StatusOr<CredentialChallenge> MakeCredential(std::string_view ek_public, std::string_view ak_name,
                                             const SecureBytes& secret);

}  // namespace trousseau::tpm
