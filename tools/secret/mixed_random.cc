#include "tools/secret/mixed_random.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstring>

namespace trousseau::secret {
namespace {

constexpr std::string_view kSalt = "trousseau-hsm secret generate v1 extract";
constexpr std::string_view kLabel = "trousseau-hsm secret generate v1 stream";

SecureBytes HmacSha256(const uint8_t* key, size_t key_size, const uint8_t* data, size_t size) {
  SecureBytes out(32);
  unsigned int n = 32;
  HMAC(EVP_sha256(), key, static_cast<int>(key_size), data, size, out.data(), &n);
  return out;
}

}  // namespace

StatusOr<MixedRandom> MixedRandom::FromDevice(const SecureBytes& device_bytes) {
  SecureBytes ikm(device_bytes.size() + kSeedBytes);
  std::memcpy(ikm.data(), device_bytes.data(), device_bytes.size());
  if (RAND_priv_bytes(ikm.data() + device_bytes.size(), static_cast<int>(kSeedBytes)) != 1) {
    return InternalError("the OS random number generator failed (RAND_priv_bytes)");
  }
  MixedRandom random;
  random.key_ = HmacSha256(reinterpret_cast<const uint8_t*>(kSalt.data()), kSalt.size(), ikm.data(), ikm.size());
  return random;
}

MixedRandom MixedRandom::ForTest(std::string_view seed) {
  MixedRandom random;
  random.key_ = HmacSha256(reinterpret_cast<const uint8_t*>(kSalt.data()), kSalt.size(),
                           reinterpret_cast<const uint8_t*>(seed.data()), seed.size());
  return random;
}

void MixedRandom::Refill() {
  uint8_t input[kLabel.size() + 8];
  std::memcpy(input, kLabel.data(), kLabel.size());
  for (int i = 0; i < 8; ++i) input[kLabel.size() + i] = static_cast<uint8_t>(counter_ >> (56 - 8 * i));
  ++counter_;
  block_ = HmacSha256(key_.data(), key_.size(), input, sizeof input);
  used_ = 0;
}

uint8_t MixedRandom::NextByte() {
  if (used_ >= block_.size()) Refill();
  return block_.data()[used_++];
}

void MixedRandom::Fill(uint8_t* out, size_t size) {
  for (size_t i = 0; i < size; ++i) out[i] = NextByte();
}

}  // namespace trousseau::secret
