// The randomness of `trousseauctl secret generate` (docs/secrets.md, "Where the bytes come from"):
// bytes from the device's RNG (C_GenerateRandom or TPM2_GetRandom) and as many from the OS CSPRNG
// (RAND_priv_bytes) go through HKDF-Extract (SHA-256) into one 32-byte key, and the stream is
// HMAC-SHA256(key, label || counter) block after block (a counter-mode KDF, NIST SP 800-108).
// Why mixed: the output is as unpredictable as the BETTER of the two sources. A device RNG that is
// weak or backdoored cannot make it worse than the OS's; an OS RNG that is weak (a VM snapshot restored
// twice, an early-boot pool) is rescued by the device's. Neither source alone is trusted with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::secret {

// Bytes each source gives: 64 from the device and 64 from the OS (at least 256 bits each).
inline constexpr size_t kSeedBytes = 64;

class MixedRandom {
 public:
  // The device's bytes mixed with kSeedBytes from RAND_priv_bytes. INTERNAL if the OS RNG fails.
  static StatusOr<MixedRandom> FromDevice(const SecureBytes& device_bytes);
  // A deterministic stream from `seed` alone: for tests only (the same seed gives the same bytes).
  static MixedRandom ForTest(std::string_view seed);

  void Fill(uint8_t* out, size_t size);
  uint8_t NextByte();

 private:
  MixedRandom() = default;
  void Refill();
  SecureBytes key_;
  SecureBytes block_;
  size_t used_ = 0;
  uint64_t counter_ = 0;
};

}  // namespace trousseau::secret
