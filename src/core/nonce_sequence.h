// 96-bit AES-GCM IVs that stay unique for billions of encryptions under one key.
//
// NIST SP 800-38D allows only 2^32 purely random 96-bit IVs per key. We use its deterministic
// construction instead (section 8.2.1): a 64-bit fixed field drawn at random when this process
// starts using the key, then a 32-bit invocation counter. When the counter would wrap, a new fixed
// field is drawn. IVs repeat only if two fixed fields ever collide: with P fields drawn for one key
// (one per process start per 2^32 encryptions) that probability is about P^2 / 2^65, below 2^-33 for
// 65,536 plugin starts per key version, however many encryptions each one does. The all-zero fixed
// field is reserved for the key fingerprint and never drawn.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include "core/status.h"

namespace trousseau {

inline constexpr size_t kGcmIvSize = 12;
using GcmIv = std::array<uint8_t, kGcmIvSize>;

class NonceSequence {
 public:
  NonceSequence() = default;
  // Only tests shrink the counter space, to watch a new fixed field being drawn.
  explicit NonceSequence(uint64_t counter_limit) : counter_limit_(counter_limit) {}
  NonceSequence(const NonceSequence&) = delete;
  NonceSequence& operator=(const NonceSequence&) = delete;

  // Fails only if the system random generator fails.
  StatusOr<GcmIv> Next();

  // The IV reserved for computing a key's fingerprint (never returned by Next()).
  static GcmIv FingerprintIv() { return GcmIv{}; }

 private:
  std::mutex mu_;
  uint64_t fixed_field_ = 0;  // 0: not drawn yet
  uint64_t counter_ = 0;      // next invocation value, < counter_limit_
  uint64_t counter_limit_ = uint64_t{1} << 32;
};

}  // namespace trousseau
