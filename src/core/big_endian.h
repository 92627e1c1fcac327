// Network byte order for the fixed-size integers of the wire formats (envelope header, key_id
// input, GCM nonce, CKA_ID): one place instead of hand-written shift loops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace trousseau {

// Writes the low `bytes` bytes of `value`, most significant first, into out[0..bytes).
template <std::size_t bytes>
constexpr void StoreBigEndian(std::uint64_t value, std::span<std::uint8_t, bytes> out) {
  static_assert(bytes >= 1 && bytes <= 8);
  for (std::size_t i = 0; i < bytes; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * (bytes - 1 - i)));
}

// Reads in[0..n) as an unsigned big-endian integer; n ≤ 8 (callers check lengths from the wire first).
constexpr std::uint64_t LoadBigEndian(std::span<const std::uint8_t> in) {
  std::uint64_t value = 0;
  for (std::uint8_t byte : in) value = (value << 8) | byte;
  return value;
}

}  // namespace trousseau
