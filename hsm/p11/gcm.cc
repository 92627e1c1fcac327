#include "hsm/p11/gcm.h"

#include <algorithm>

#include "core/strings.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm {
namespace {

CK_BYTE* Bytes(std::string_view s) { return reinterpret_cast<CK_BYTE*>(const_cast<char*>(s.data())); }

CK_GCM_PARAMS GcmParams(const GcmIv& iv, std::string_view aad) {
  CK_GCM_PARAMS params{};
  params.pIv = const_cast<CK_BYTE*>(iv.data());
  params.ulIvLen = iv.size();
  params.ulIvBits = iv.size() * 8;  // some modules read Len, some Bits (PKCS#11 2.40 errata)
  params.pAAD = Bytes(aad);
  params.ulAADLen = aad.size();
  params.ulTagBits = kGcmTagSize * 8;
  return params;
}

Status AuthenticationFailed() {
  return InvalidArgumentError("ciphertext failed authentication (tampered, truncated or not ours)");
}

}  // namespace

bool IsCallerIvRefused(const Status& status) { return status.code() == StatusCode::kUnimplemented; }

namespace {

// C_EncryptInit + C_Encrypt with CKM_AES_GCM and `iv_buffer` as CK_GCM_PARAMS.pIv (the device may write
// into it); `out` gets ciphertext || tag. CKR_MECHANISM_PARAM_INVALID at C_EncryptInit is UNIMPLEMENTED.
Status EncryptGcm(const Session& session, CK_OBJECT_HANDLE key, GcmIv& iv_buffer, std::string_view aad,
                  std::string_view plaintext, std::string& out, std::string_view what) {
  CK_GCM_PARAMS params = GcmParams(iv_buffer, aad);
  CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_EncryptInit(session.handle(), &mechanism, key); rv != CKR_OK) {
    if (rv == CKR_MECHANISM_PARAM_INVALID) {
      return Status(StatusCode::kUnimplemented,
                    StrCat(what, ": the device refused the IV we chose (CKR_MECHANISM_PARAM_INVALID); devices in FIPS ",
                           "mode choose GCM IVs themselves"));
    }
    return RvStatus(rv, what);
  }
  out.resize(plaintext.size() + kGcmTagSize);
  CK_ULONG out_len = out.size();
  static const char kEmpty[1] = {0};
  CK_BYTE* in = Bytes(plaintext.empty() ? std::string_view(kEmpty, 0) : plaintext);
  CK_RV rv = api->C_Encrypt(session.handle(), in, plaintext.size(), reinterpret_cast<CK_BYTE*>(out.data()), &out_len);
  if (rv != CKR_OK) return RvStatus(rv, what);
  // A wrong length is a device that misbehaves: classified as CKR_GENERAL_ERROR is (see pkcs11_error.cc).
  if (out_len != plaintext.size() + kGcmTagSize) return RvStatus(CKR_GENERAL_ERROR, what);
  return OkStatus();
}

}  // namespace

Status GcmSeal(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad,
               std::string_view plaintext, std::string& out, std::string_view what) {
  // A device that makes its own IVs may take our buffer as the place to write one (the all-zero
  // fingerprint IV looks exactly like such a request): it gets a copy, compared afterwards.
  GcmIv used = iv;
  if (Status s = EncryptGcm(session, key, used, aad, plaintext, out, what); !s.ok()) return s;
  if (used != iv) {
    out.clear();
    return Status(StatusCode::kUnimplemented,
                  StrCat(what, ": the device replaced the IV we chose with its own; devices in FIPS mode choose GCM ",
                         "IVs themselves"));
  }
  return OkStatus();
}

Status GcmSealDeviceIv(const Session& session, CK_OBJECT_HANDLE key, std::string_view aad, std::string_view plaintext,
                       GcmIv& iv, std::string& out, std::string_view what) {
  iv.fill(0);  // the device writes the IV it used here
  if (Status s = EncryptGcm(session, key, iv, aad, plaintext, out, what); !s.ok()) return s;
  if (std::all_of(iv.begin(), iv.end(), [](uint8_t b) { return b == 0; })) {
    out.clear();
    return FailedPreconditionError(StrCat(what, ": the device returned no IV in CK_GCM_PARAMS.pIv; it does not ",
                                          "generate GCM IVs this way (remove x-gcm-iv=device from the URI if it ",
                                          "accepts the caller's IV)"));
  }
  return OkStatus();
}

Status GcmOpen(const Session& session, CK_OBJECT_HANDLE key, const GcmIv& iv, std::string_view aad, std::string_view in,
               SecureBytes& out, std::string_view what) {
  if (in.size() < kGcmTagSize) return RvStatus(CKR_ENCRYPTED_DATA_LEN_RANGE, what);
  CK_GCM_PARAMS params = GcmParams(iv, aad);
  CK_MECHANISM mechanism{CKM_AES_GCM, &params, sizeof params};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_DecryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return RvStatus(rv, what);
  // From here the device has taken key and IV: a failure may be about the bytes themselves.
  // Some modules want room for the whole input before they strip the tag.
  SecureBytes plain(in.size());
  CK_ULONG out_len = plain.size();
  CK_RV rv = api->C_Decrypt(session.handle(), Bytes(in), in.size(), plain.data(), &out_len);
  if (rv != CKR_OK) {
    if (IsTagMismatch(rv)) return AuthenticationFailed();
    return RvStatus(rv, what);
  }
  if (out_len != in.size() - kGcmTagSize) return AuthenticationFailed();  // as CKR_GENERAL_ERROR here always was
  plain.Truncate(out_len);
  out = std::move(plain);
  return OkStatus();
}

}  // namespace trousseau::hsm
