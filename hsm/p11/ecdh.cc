#include "hsm/p11/ecdh.h"

#include <vector>

#include "core/recipient_device.h"
#include "core/strings.h"
#include "hsm/p11/attributes.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm::p11 {
namespace {

// DER OCTET STRING of a 65-byte point: tag 04, length 41 (65), the point.
constexpr std::string_view kPointOctetStringHeader{"\x04\x41", 2};

bool IsUncompressedP256Point(std::string_view point) { return point.size() == kP256PointSize && point[0] == '\x04'; }

// The token's answer to parameters it cannot take in this form (as opposed to a device failure).
bool IsParameterRefusal(CK_RV rv) {
  return rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID || rv == CKR_DOMAIN_PARAMS_INVALID;
}

struct DeriveAttempt {
  CK_RV rv = CKR_OK;
  SessionObject derived;
};

DeriveAttempt DeriveOnce(const Session& session, CK_OBJECT_HANDLE private_key, std::string_view public_data) {
  CK_ECDH1_DERIVE_PARAMS params{};
  params.kdf = CKD_NULL;
  params.ulSharedDataLen = 0;
  params.pSharedData = nullptr;
  params.ulPublicDataLen = public_data.size();
  params.pPublicData = reinterpret_cast<CK_BYTE*>(const_cast<char*>(public_data.data()));
  CK_MECHANISM mechanism{CKM_ECDH1_DERIVE, &params, sizeof params};
  // The shared secret leaves the device as a readable session object: the same exposure as a TPM's
  // TPM2_ECDH_ZGen output (docs/ha.md "How it works"). It is wiped (SecureBytes) once the caller derived
  // its wrap key, and the object is destroyed at once (SessionObject).
  AttributeTemplate secret_template;
  secret_template.Add(CKA_CLASS, CK_ULONG{CKO_SECRET_KEY})
      .Add(CKA_KEY_TYPE, CK_ULONG{CKK_GENERIC_SECRET})
      .Add(CKA_VALUE_LEN, CK_ULONG{kP256SharedSecretSize})
      .Add(CKA_TOKEN, false)
      .Add(CKA_SENSITIVE, false)
      .Add(CKA_EXTRACTABLE, true);
  CK_OBJECT_HANDLE handle = CK_INVALID_HANDLE;
  DeriveAttempt attempt;
  attempt.rv = session.api()->C_DeriveKey(session.handle(), &mechanism, private_key, secret_template.data(),
                                          secret_template.size(), &handle);
  if (attempt.rv == CKR_OK) attempt.derived = SessionObject(session.api(), session.handle(), handle);
  return attempt;
}

StatusOr<SecureBytes> ReadSecretValue(const Session& session, const SessionObject& derived) {
  SecureBytes value(kP256SharedSecretSize);
  CK_ATTRIBUTE attribute{CKA_VALUE, value.data(), static_cast<CK_ULONG>(value.size())};
  if (CK_RV rv = session.api()->C_GetAttributeValue(session.handle(), derived.handle(), &attribute, 1); rv != CKR_OK) {
    return RvStatus(rv, "reading the ECDH shared secret (C_GetAttributeValue CKA_VALUE)");
  }
  if (attribute.ulValueLen != kP256SharedSecretSize) {
    return InternalError(
        StrCat("the device's ECDH shared secret has ", attribute.ulValueLen, " bytes, not ", kP256SharedSecretSize));
  }
  return value;
}

}  // namespace

StatusOr<std::string> ReadP256PublicPoint(const Session& session, CK_OBJECT_HANDLE public_key) {
  // 2 bytes of DER header and the point; a little room to see (and name) longer encodings.
  StatusOr<AttributeReader> read = AttributeReader::Read(session, public_key, {{CKA_EC_POINT, 160}});
  if (!read.ok()) return read.status();
  std::optional<std::string> ec_point = read->Bytes(CKA_EC_POINT);
  if (!ec_point) return FailedPreconditionError("the recipient's public key has no CKA_EC_POINT the token reports");
  std::string_view point = *ec_point;
  if (point.size() == kPointOctetStringHeader.size() + kP256PointSize && point.starts_with(kPointOctetStringHeader)) {
    point.remove_prefix(kPointOctetStringHeader.size());
  }
  if (!IsUncompressedP256Point(point)) {
    return FailedPreconditionError(
        StrCat("the recipient's public key is not an uncompressed P-256 point (CKA_EC_POINT of ", ec_point->size(),
               " bytes, starting with 0x", HexEncode(ec_point->substr(0, 1)), ")"));
  }
  return std::string(point);
}

StatusOr<EcdhSecret> DeriveEcdhSecret(const Session& session, CK_OBJECT_HANDLE private_key, std::string_view peer_point,
                                      PeerPointForm form) {
  if (!IsUncompressedP256Point(peer_point)) {
    return InvalidArgumentError(StrCat("the peer point is not an uncompressed P-256 point (", peer_point.size(),
                                       " bytes; 65 starting with 0x04 expected)"));
  }
  const std::string der = StrCat(kPointOctetStringHeader, peer_point);
  std::vector<PeerPointForm> forms;
  if (form == PeerPointForm::kUnknown || form == PeerPointForm::kRaw) forms.push_back(PeerPointForm::kRaw);
  if (form == PeerPointForm::kUnknown || form == PeerPointForm::kDerOctetString) {
    forms.push_back(PeerPointForm::kDerOctetString);
  }
  CK_RV refused = CKR_OK;
  for (PeerPointForm tried : forms) {
    DeriveAttempt attempt =
        DeriveOnce(session, private_key, tried == PeerPointForm::kRaw ? peer_point : std::string_view(der));
    if (attempt.rv == CKR_OK) {
      StatusOr<SecureBytes> secret = ReadSecretValue(session, attempt.derived);
      if (!secret.ok()) return secret.status();
      return EcdhSecret{*std::move(secret), tried};
    }
    if (!IsParameterRefusal(attempt.rv))
      return RvStatus(attempt.rv, "ECDH on the device (C_DeriveKey CKM_ECDH1_DERIVE)");
    refused = attempt.rv;
  }
  return InvalidArgumentError(
      StrCat("the device refused the peer point for ECDH (C_DeriveKey CKM_ECDH1_DERIVE: ", RvName(refused), ")"));
}

}  // namespace trousseau::hsm::p11
