#include "hsm/p11/cbc_hmac.h"

#include <sys/random.h>

#include <array>
#include <cerrno>

#include "core/big_endian.h"
#include "core/strings.h"
#include "hsm/key_scheme.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm {
namespace {

CK_BYTE* Bytes(std::string_view s) {
  static char empty[1] = {0};
  return reinterpret_cast<CK_BYTE*>(s.empty() ? empty : const_cast<char*>(s.data()));
}

Status AuthenticationFailed() {
  return InvalidArgumentError("ciphertext failed authentication (tampered, truncated or not ours)");
}

// CBC needs an IV nobody can predict; the kernel's CSPRNG gives it without a device round trip.
Status RandomIv(std::array<uint8_t, kCbcIvSize>& iv) {
  size_t filled = 0;
  while (filled < iv.size()) {
    const ssize_t n = getrandom(iv.data() + filled, iv.size() - filled, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return InternalError("getrandom failed: no IV for AES-CBC");
    filled += static_cast<size_t>(n);
  }
  return OkStatus();
}

// L || aad || IV || C, the bytes the tag covers.
std::string MacInput(std::string_view aad, std::string_view iv_and_ciphertext) {
  std::array<uint8_t, 8> length{};
  StoreBigEndian<8>(aad.size(), length);
  std::string input(reinterpret_cast<const char*>(length.data()), length.size());
  input.reserve(length.size() + aad.size() + iv_and_ciphertext.size());
  input += aad;
  input += iv_and_ciphertext;
  return input;
}

Status CbcPad(const Session& session, CK_OBJECT_HANDLE key, bool encrypt, std::string_view iv, std::string_view in,
              CK_BYTE* out, CK_ULONG& out_len, std::string_view what) {
  CK_MECHANISM mechanism{CKM_AES_CBC_PAD, Bytes(iv), static_cast<CK_ULONG>(iv.size())};
  CK_FUNCTION_LIST* api = session.api();
  if (encrypt) {
    if (CK_RV rv = api->C_EncryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return RvStatus(rv, what);
    if (CK_RV rv = api->C_Encrypt(session.handle(), Bytes(in), in.size(), out, &out_len); rv != CKR_OK) {
      return RvStatus(rv, what);
    }
    return OkStatus();
  }
  if (CK_RV rv = api->C_DecryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return RvStatus(rv, what);
  if (CK_RV rv = api->C_Decrypt(session.handle(), Bytes(in), in.size(), out, &out_len); rv != CKR_OK) {
    return RvStatus(rv, what);
  }
  return OkStatus();
}

}  // namespace

StatusOr<std::string> HmacSha256(const Session& session, CK_OBJECT_HANDLE mac_key, std::string_view message,
                                 std::string_view what) {
  CK_MECHANISM mechanism{CKM_SHA256_HMAC, nullptr, 0};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_SignInit(session.handle(), &mechanism, mac_key); rv != CKR_OK) return RvStatus(rv, what);
  std::string tag(kHmacTagSize, '\0');
  CK_ULONG tag_len = tag.size();
  if (CK_RV rv = api->C_Sign(session.handle(), Bytes(message), message.size(), reinterpret_cast<CK_BYTE*>(tag.data()),
                             &tag_len);
      rv != CKR_OK) {
    return RvStatus(rv, what);
  }
  if (tag_len != kHmacTagSize) return RvStatus(CKR_GENERAL_ERROR, what);
  return tag;
}

StatusOr<std::string> CbcPadEncryptOfNothing(const Session& session, CK_OBJECT_HANDLE cipher_key,
                                             std::string_view what) {
  const std::string zero_iv(kCbcIvSize, '\0');
  std::string block(kCbcBlockSize, '\0');
  CK_ULONG len = block.size();
  if (Status s = CbcPad(session, cipher_key, true, zero_iv, "", reinterpret_cast<CK_BYTE*>(block.data()), len, what);
      !s.ok()) {
    return s;
  }
  if (len != kCbcBlockSize) return RvStatus(CKR_GENERAL_ERROR, what);
  return block;
}

StatusOr<std::string> AesEncryptBlock(const Session& session, CK_OBJECT_HANDLE key, std::string_view block,
                                      std::string_view what) {
  if (block.size() != kCbcBlockSize) return InternalError(StrCat(what, ": not one AES block"));
  CK_MECHANISM mechanism{CKM_AES_ECB, nullptr, 0};
  CK_FUNCTION_LIST* api = session.api();
  if (CK_RV rv = api->C_EncryptInit(session.handle(), &mechanism, key); rv != CKR_OK) return RvStatus(rv, what);
  std::string out(kCbcBlockSize, '\0');
  CK_ULONG len = out.size();
  if (CK_RV rv =
          api->C_Encrypt(session.handle(), Bytes(block), block.size(), reinterpret_cast<CK_BYTE*>(out.data()), &len);
      rv != CKR_OK) {
    return RvStatus(rv, what);
  }
  if (len != kCbcBlockSize) return RvStatus(CKR_GENERAL_ERROR, what);
  return out;
}

Status CbcHmacSeal(const Session& session, CK_OBJECT_HANDLE cipher_key, CK_OBJECT_HANDLE mac_key, std::string_view aad,
                   std::string_view plaintext, std::string& sealed) {
  std::array<uint8_t, kCbcIvSize> iv{};
  if (Status s = RandomIv(iv); !s.ok()) return s;
  const size_t padded = (plaintext.size() / kCbcBlockSize + 1) * kCbcBlockSize;
  std::string body(kCbcIvSize + padded, '\0');
  std::copy(iv.begin(), iv.end(), body.begin());
  CK_ULONG len = padded;
  const std::string_view iv_view(reinterpret_cast<const char*>(iv.data()), iv.size());
  if (Status s = CbcPad(session, cipher_key, true, iv_view, plaintext,
                        reinterpret_cast<CK_BYTE*>(body.data() + kCbcIvSize), len, "AES-CBC encrypt on the device");
      !s.ok()) {
    return s;
  }
  // A length other than PKCS#7's is a device that misbehaves (as for GCM, hsm/p11/gcm.cc).
  if (len != padded) return RvStatus(CKR_GENERAL_ERROR, "AES-CBC encrypt on the device");
  StatusOr<std::string> tag = HmacSha256(session, mac_key, MacInput(aad, body), "HMAC-SHA256 on the device");
  if (!tag.ok()) return tag.status();
  sealed = std::move(body);
  sealed += *tag;
  return OkStatus();
}

Status CbcHmacOpen(const Session& session, CK_OBJECT_HANDLE cipher_key, CK_OBJECT_HANDLE mac_key, std::string_view aad,
                   std::string_view sealed, SecureBytes& plaintext) {
  if (sealed.size() < kCbcIvSize + kCbcBlockSize + kHmacTagSize ||
      (sealed.size() - kCbcIvSize - kHmacTagSize) % kCbcBlockSize != 0) {
    return AuthenticationFailed();
  }
  const std::string_view body = sealed.substr(0, sealed.size() - kHmacTagSize);
  const std::string_view tag = sealed.substr(body.size());
  CK_MECHANISM mechanism{CKM_SHA256_HMAC, nullptr, 0};
  CK_FUNCTION_LIST* api = session.api();
  constexpr std::string_view kVerify = "HMAC-SHA256 verify on the device";
  if (CK_RV rv = api->C_VerifyInit(session.handle(), &mechanism, mac_key); rv != CKR_OK) return RvStatus(rv, kVerify);
  const std::string input = MacInput(aad, body);
  const CK_RV verified = api->C_Verify(session.handle(), Bytes(input), input.size(), Bytes(tag), tag.size());
  if (verified == CKR_SIGNATURE_INVALID || verified == CKR_SIGNATURE_LEN_RANGE) return AuthenticationFailed();
  if (verified != CKR_OK) return RvStatus(verified, kVerify);
  // Authentic: from here a failure is the device's, never the caller's bytes.
  const std::string_view ciphertext = body.substr(kCbcIvSize);
  SecureBytes plain(ciphertext.size());
  CK_ULONG len = plain.size();
  if (Status s = CbcPad(session, cipher_key, false, body.substr(0, kCbcIvSize), ciphertext, plain.data(), len,
                        "AES-CBC decrypt on the device");
      !s.ok()) {
    return s;
  }
  if (len > ciphertext.size() || ciphertext.size() - len == 0 || ciphertext.size() - len > kCbcBlockSize) {
    return RvStatus(CKR_GENERAL_ERROR, "AES-CBC decrypt on the device");
  }
  plain.Truncate(len);
  plaintext = std::move(plain);
  return OkStatus();
}

}  // namespace trousseau::hsm
