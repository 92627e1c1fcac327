#include "tpm/recipient_key.h"

#include "core/strings.h"

namespace trousseau::tpm {
namespace {

constexpr TPMA_OBJECT kRequired =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_DECRYPT;
constexpr TPMA_OBJECT kForbidden = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;

StatusOr<TPM2B_PUBLIC> ParseRecipientPublic(const ObjectBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> pub = TpmDevice::ParsePublic(blobs.public_area);
  if (!pub.ok()) return FailedPreconditionError("the TPM recipient key's public area is unreadable");
  if (Status s = CheckRecipientTemplate(*pub); !s.ok()) return s;
  return pub;
}

}  // namespace

Status CheckRecipientTemplate(const TPM2B_PUBLIC& pub) {
  const TPMT_PUBLIC& area = pub.publicArea;
  const TPMS_ECC_PARMS& ecc = area.parameters.eccDetail;
  if (area.type != TPM2_ALG_ECC || ecc.curveID != TPM2_ECC_NIST_P256 || area.nameAlg != TPM2_ALG_SHA256) {
    return FailedPreconditionError("the TPM recipient key is not an ECC NIST P-256 key with nameAlg SHA-256");
  }
  if ((area.objectAttributes & kRequired) != kRequired || (area.objectAttributes & kForbidden) != 0 ||
      ecc.symmetric.algorithm != TPM2_ALG_NULL || ecc.kdf.scheme != TPM2_ALG_NULL ||
      (ecc.scheme.scheme != TPM2_ALG_NULL && ecc.scheme.scheme != TPM2_ALG_ECDH)) {
    return FailedPreconditionError(
        "refusing a TPM recipient key that could be duplicated, was imported, can sign or is restricted (needs "
        "fixedTPM, fixedParent, sensitiveDataOrigin, decrypt; not restricted, not sign)");
  }
  return OkStatus();
}

StatusOr<ObjectBlobs> CreateRecipientObject(TpmDevice& device) {
  StatusOr<TransientObject> primary = device.CreateStoragePrimary();
  if (!primary.ok()) return primary.status();
  return device.CreateKey(*primary, KeyKind::kEccP256Ecdh);
}

StatusOr<TransientObject> LoadRecipientObject(TpmDevice& device, const ObjectBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> pub = ParseRecipientPublic(blobs);
  if (!pub.ok()) return pub.status();
  StatusOr<TransientObject> primary = device.CreateStoragePrimary();
  if (!primary.ok()) return primary.status();
  StatusOr<TransientObject> key = device.Load(*primary, blobs);
  if (!key.ok() && IsFailedPrecondition(key.status())) {
    return FailedPreconditionError(StrCat(
        "the TPM recipient key cannot be loaded by this TPM: its blobs were made by another TPM, or the TPM's owner "
        "hierarchy was cleared since (",
        key.status().message(), ")"));
  }
  return key;  // the primary is flushed here: only the recipient key stays loaded
}

StatusOr<std::string> RecipientPoint(const ObjectBlobs& blobs) {
  StatusOr<TPM2B_PUBLIC> pub = ParseRecipientPublic(blobs);
  if (!pub.ok()) return pub.status();
  return TpmDevice::EccPublicPoint(*pub);
}

}  // namespace trousseau::tpm
