// Encrypt-then-MAC for tokens without AES-GCM (KeyScheme::kAesCbcHmac, docs/envelope.md): AES-256-CBC
// with PKCS#7 padding (CKM_AES_CBC_PAD) under one key, HMAC-SHA256 (CKM_SHA256_HMAC) under another,
// both on the device. Sealed bytes:
//
//   IV (16, random) || C = AES-CBC-PAD(cipher key, IV, plaintext) || T = HMAC(mac key, L || aad || IV || C)
//
// with L the length of `aad` as 8 bytes big-endian, so no two (aad, IV || C) splits give one MAC input.
// Opening verifies T on the device (C_Verify) before anything is decrypted: a flipped bit anywhere is
// INVALID_ARGUMENT and the cipher key never sees forged bytes (no padding oracle). Errors follow the
// seam's policy (hsm/p11/calls.h).
#pragma once

#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

Status CbcHmacSeal(const Session& session, CK_OBJECT_HANDLE cipher_key, CK_OBJECT_HANDLE mac_key, std::string_view aad,
                   std::string_view plaintext, std::string& sealed);

Status CbcHmacOpen(const Session& session, CK_OBJECT_HANDLE cipher_key, CK_OBJECT_HANDLE mac_key, std::string_view aad,
                   std::string_view sealed, SecureBytes& plaintext);

// The two device operations a CBC-HMAC key fingerprint is made of (hsm/key_family.h): HMAC-SHA256 of
// `message`, and AES-CBC-PAD of the empty message under the all-zero IV (one block: AES(key, 16 x 0x10)).
StatusOr<std::string> HmacSha256(const Session& session, CK_OBJECT_HANDLE mac_key, std::string_view message,
                                 std::string_view what);
StatusOr<std::string> CbcPadEncryptOfNothing(const Session& session, CK_OBJECT_HANDLE cipher_key,
                                             std::string_view what);

// AES-ECB of one 16-byte block (the fingerprint of a key whose device chooses GCM IVs itself).
StatusOr<std::string> AesEncryptBlock(const Session& session, CK_OBJECT_HANDLE key, std::string_view block,
                                      std::string_view what);

}  // namespace trousseau::hsm
