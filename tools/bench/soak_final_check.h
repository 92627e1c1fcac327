// The soak's final check: after the run, every key version still decrypts (up to
// kFinalCheckPerVersion kept items of each, plus every ciphertext never decrypted in the run).
#pragma once

#include <cstddef>
#include <vector>

#include "soak_corpus.h"
#include "soak_load.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::bench {

inline constexpr size_t kFinalCheckPerVersion = 512;

struct FinalCheck {
  size_t calls = 0, errors = 0, wrong = 0;
  std::vector<size_t> ok_by_version;
};

// Errors are also counted in counts.errors[kFinal].
FinalCheck DecryptAgain(v2::KeyManagementService::Stub& stub, Corpus& corpus, size_t versions, Counts& counts);

}  // namespace trousseau::bench
