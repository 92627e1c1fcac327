#include "core/nonce_sequence.h"

#include <openssl/rand.h>

#include <span>

#include "core/big_endian.h"
#include "core/status.h"

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
  // SP 800-38D §8.2.1: the 64-bit fixed field, then the 32-bit invocation counter.
  StoreBigEndian<8>(fixed_field_, std::span(iv).first<8>());
  StoreBigEndian<4>(counter_++, std::span(iv).subspan<8, 4>());
  return iv;
}

}  // namespace trousseau
