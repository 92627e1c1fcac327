#include "tools/postgres/scram.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include <array>
#include <cstring>
#include <string>

namespace trousseau::postgres {
namespace {

constexpr size_t kKeyLength = SHA256_DIGEST_LENGTH;  // 32

// Base64 of `data` (no line breaks) appended to `out` at `pos`; returns the new position.
size_t AppendBase64(std::span<const uint8_t> data, SecureBytes& out, size_t pos) {
  const int written = EVP_EncodeBlock(out.data() + pos, data.data(), static_cast<int>(data.size()));
  return pos + static_cast<size_t>(written);
}

size_t Base64Length(size_t n) { return 4 * ((n + 2) / 3); }

size_t AppendText(std::string_view text, SecureBytes& out, size_t pos) {
  std::memcpy(out.data() + pos, text.data(), text.size());
  return pos + text.size();
}

bool Hmac(std::span<const uint8_t> key, std::string_view message, std::array<uint8_t, kKeyLength>& out) {
  unsigned int out_len = 0;
  const uint8_t* result = HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                               reinterpret_cast<const uint8_t*>(message.data()), message.size(), out.data(), &out_len);
  return result != nullptr && out_len == kKeyLength;
}

}  // namespace

Status CheckScramPassword(std::string_view password) {
  if (password.empty()) return InvalidArgumentError("the password for the SCRAM-SHA-256 verifier is empty");
  for (size_t i = 0; i < password.size(); ++i) {
    const auto c = static_cast<unsigned char>(password[i]);
    if (c < 0x20 || c > 0x7e) {
      return InvalidArgumentError("the password has a byte outside printable ASCII at position " + std::to_string(i) +
                                  ": PostgreSQL would SASLprep it (RFC 4013), which this hand-off does not implement, "
                                  "so the verifier might not match; generate the password with an ASCII charset");
    }
  }
  return OkStatus();
}

StatusOr<SecureBytes> ScramSha256Verifier(std::string_view password, std::span<const uint8_t> salt,
                                          uint32_t iterations) {
  if (Status s = CheckScramPassword(password); !s.ok()) return s;
  if (salt.empty()) return InvalidArgumentError("the SCRAM-SHA-256 salt is empty");
  if (iterations < kScramMinIterations) {
    return InvalidArgumentError("SCRAM-SHA-256 iteration count " + std::to_string(iterations) +
                                " is below RFC 7677's minimum of " + std::to_string(kScramMinIterations));
  }
  if (iterations > static_cast<uint32_t>(INT32_MAX)) {
    return InvalidArgumentError("SCRAM-SHA-256 iteration count " + std::to_string(iterations) + " is too large");
  }

  // Each intermediate lives in a buffer wiped on every way out.
  SecureBytes salted(kKeyLength);
  SecureBytes client_key(kKeyLength);
  SecureBytes stored_key(kKeyLength);
  SecureBytes server_key(kKeyLength);
  std::array<uint8_t, kKeyLength> mac{};
  struct WipeOnExit {
    std::array<uint8_t, kKeyLength>& m;
    ~WipeOnExit() { WipeMemory(m.data(), m.size()); }
  } wipe_mac{mac};

  if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()), salt.data(), static_cast<int>(salt.size()),
                        static_cast<int>(iterations), EVP_sha256(), static_cast<int>(kKeyLength), salted.data()) != 1) {
    return InternalError("OpenSSL PBKDF2-HMAC-SHA-256 failed");
  }
  const std::span<const uint8_t> salted_span(salted.data(), salted.size());
  if (!Hmac(salted_span, "Client Key", mac)) return InternalError("OpenSSL HMAC-SHA-256 failed");
  std::memcpy(client_key.data(), mac.data(), kKeyLength);
  if (!Hmac(salted_span, "Server Key", mac)) return InternalError("OpenSSL HMAC-SHA-256 failed");
  std::memcpy(server_key.data(), mac.data(), kKeyLength);
  unsigned int digest_len = 0;
  if (EVP_Digest(client_key.data(), client_key.size(), stored_key.data(), &digest_len, EVP_sha256(), nullptr) != 1 ||
      digest_len != kKeyLength) {
    return InternalError("OpenSSL SHA-256 failed");
  }

  const std::string prefix = "SCRAM-SHA-256$" + std::to_string(iterations) + ":";
  // EVP_EncodeBlock writes a terminating NUL after the text: one byte of room at the end.
  const size_t length = prefix.size() + Base64Length(salt.size()) + 1 + 2 * Base64Length(kKeyLength) + 1;
  SecureBytes buffer(length + 1);
  size_t pos = AppendText(prefix, buffer, 0);
  pos = AppendBase64(salt, buffer, pos);
  pos = AppendText("$", buffer, pos);
  pos = AppendBase64({stored_key.data(), stored_key.size()}, buffer, pos);
  pos = AppendText(":", buffer, pos);
  pos = AppendBase64({server_key.data(), server_key.size()}, buffer, pos);
  buffer.Truncate(pos);
  return buffer;
}

StatusOr<SecureBytes> ScramSha256Verifier(std::string_view password, uint32_t iterations) {
  std::array<uint8_t, kScramSaltLength> salt{};
  if (RAND_bytes(salt.data(), static_cast<int>(salt.size())) != 1) {
    return UnavailableError("OpenSSL's random generator gave no salt for the SCRAM-SHA-256 verifier");
  }
  return ScramSha256Verifier(password, std::span<const uint8_t>(salt.data(), salt.size()), iterations);
}

}  // namespace trousseau::postgres
