#include "core/nonce_sequence.h"
#include "core/status.h"

#include <openssl/rand.h>


namespace trousseau {
StatusOr<GcmIv> NonceSequence::Next() {
  std::lock_guard lock(mu_);
  if (fixed_field_ == 0 || counter_ >= counter_limit_) {
    uint64_t fresh = 0;
    while (fresh == 0) {
      if (RAND_bytes(reinterpret_cast<unsigned char*>(&fresh), sizeof fresh) != 1) {
        return InternalError("system random generator failed while drawing a GCM IV field");
      }
    }
    fixed_field_ = fresh;
    counter_ = 0;
  }
  GcmIv iv{};
  for (int i = 0; i < 8; ++i) iv[i] = static_cast<uint8_t>(fixed_field_ >> (8 * (7 - i)));
  const uint64_t invocation = counter_++;
  for (int i = 0; i < 4; ++i) iv[8 + i] = static_cast<uint8_t>(invocation >> (8 * (3 - i)));
  return iv;
}

}  // namespace trousseau
