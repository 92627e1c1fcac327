// The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802, RFC 7677), computed on this side so
// that the database is handed the verifier and never the password.
//
//   SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
//
// SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations), ClientKey = HMAC(SaltedPassword, "Client Key"),
// StoredKey = SHA-256(ClientKey), ServerKey = HMAC(SaltedPassword, "Server Key"). Every intermediate is wiped.
//
// SASLprep: PostgreSQL runs the password through SASLprep (RFC 4013) before hashing, and a string of printable
// ASCII is left as it is by SASLprep. The passwords trousseau generates are printable ASCII, so instead of a
// SASLprep implementation the password is refused when it holds any byte outside 0x20-0x7E: with such a byte
// the verifier might not be the one PostgreSQL would compute, and a login would fail.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::postgres {

// RFC 7677 asks for at least 4096 iterations; PostgreSQL's default (scram_iterations) is 4096 too.
inline constexpr uint32_t kScramMinIterations = 4096;
// PostgreSQL's salt length (SCRAM_DEFAULT_SALT_LEN).
inline constexpr size_t kScramSaltLength = 16;

// The verifier for `password` with `salt` (not empty) and `iterations` (>= 4096). The result is sensitive
// (with StoredKey and a recorded exchange a client can be impersonated; it allows an offline guess of the
// password), so it is held in SecureBytes and must never be logged.
StatusOr<SecureBytes> ScramSha256Verifier(std::string_view password, std::span<const uint8_t> salt,
                                          uint32_t iterations = kScramMinIterations);

// The same with a fresh random salt of kScramSaltLength bytes from OpenSSL's CSPRNG.
StatusOr<SecureBytes> ScramSha256Verifier(std::string_view password, uint32_t iterations = kScramMinIterations);

// OK when `password` is something the verifier can be computed for: not empty, printable ASCII only. The
// message names the position of the first byte refused, never the byte.
Status CheckScramPassword(std::string_view password);

}  // namespace trousseau::postgres
