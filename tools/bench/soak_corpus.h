// What the soak sealed, kept to decrypt again: every new ciphertext is decrypted once in order
// (FIFO), then joins a per-version reservoir sample that random later Decrypts draw from, so old
// key versions keep being exercised after each rotation. Touched only by the load thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace trousseau::bench {

inline constexpr size_t kSeedBytes = 32;  // kube-apiserver's DEK seed
// Sealed items kept per key version to decrypt again later (reservoir sample over the whole run).
inline constexpr size_t kReservoirPerVersion = 4096;

struct Item {
  std::string seed;
  std::string ciphertext;
  std::string key_id;
  std::vector<std::pair<std::string, std::string>> annotations;
  uint32_t key_index = 0;  // order in which this key_id first came back from Encrypt
};

class Corpus {
 public:
  explicit Corpus(uint64_t seed) : rng_(seed) {}

  // A new ciphertext that nobody has decrypted yet: the next FIFO Decrypt takes it.
  void AddUnverified(Item item) { unverified_.push_back(std::move(item)); }
  std::optional<Item> TakeUnverified();
  // Its Decrypt failed (an outage): it must still be decrypted later.
  void ReturnUnverified(Item item) { unverified_.push_front(std::move(item)); }
  size_t unverified() const { return unverified_.size(); }
  std::deque<Item>& unverified_items() { return unverified_; }

  // Decrypted once correctly: from now on a candidate for the random re-decrypts (reservoir sample,
  // so items from the whole life of each version are kept).
  void AddVerified(Item item);
  // A verified item of a version chosen uniformly (so old versions keep being exercised).
  const Item* RandomVerified();
  const std::vector<std::vector<Item>>& reservoirs() const { return reservoirs_; }

  std::string NewSeed();

 private:
  std::mt19937_64 rng_;
  std::deque<Item> unverified_;
  std::vector<std::vector<Item>> reservoirs_;
  std::vector<uint64_t> seen_;
};

}  // namespace trousseau::bench
