#include "soak_corpus.h"

#include <algorithm>
#include <cstring>

namespace trousseau::bench {

std::optional<Item> Corpus::TakeUnverified() {
  if (unverified_.empty()) return std::nullopt;
  Item item = std::move(unverified_.front());
  unverified_.pop_front();
  return item;
}

void Corpus::AddVerified(Item item) {
  const uint32_t k = item.key_index;
  if (reservoirs_.size() <= k) {
    reservoirs_.resize(k + 1);
    seen_.resize(k + 1, 0);
  }
  const uint64_t n = ++seen_[k];
  if (reservoirs_[k].size() < kReservoirPerVersion) {
    reservoirs_[k].push_back(std::move(item));
  } else if (const uint64_t slot = rng_() % n; slot < kReservoirPerVersion) {
    reservoirs_[k][slot] = std::move(item);
  }
}

const Item* Corpus::RandomVerified() {
  std::vector<uint32_t> versions;
  for (uint32_t k = 0; k < reservoirs_.size(); ++k) {
    if (!reservoirs_[k].empty()) versions.push_back(k);
  }
  if (versions.empty()) return nullptr;
  const auto& r = reservoirs_[versions[rng_() % versions.size()]];
  return &r[rng_() % r.size()];
}

std::string Corpus::NewSeed() {
  std::string seed(kSeedBytes, '\0');
  for (size_t i = 0; i < kSeedBytes; i += 8) {
    const uint64_t r = rng_();
    std::memcpy(seed.data() + i, &r, std::min<size_t>(8, kSeedBytes - i));
  }
  return seed;
}

}  // namespace trousseau::bench
