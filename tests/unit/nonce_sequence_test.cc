#include "core/nonce_sequence.h"

#include <gtest/gtest.h>

#include <set>

namespace trousseau {
namespace {

uint64_t FixedField(const GcmIv& iv) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | iv[i];
  return v;
}

uint32_t Counter(const GcmIv& iv) {
  uint32_t v = 0;
  for (int i = 8; i < 12; ++i) v = (v << 8) | iv[i];
  return v;
}

TEST(NonceSequence, CountsUpUnderOneRandomFixedField) {
  NonceSequence ivs;
  StatusOr<GcmIv> first = ivs.Next();
  StatusOr<GcmIv> second = ivs.Next();
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_NE(FixedField(*first), 0u);
  EXPECT_EQ(FixedField(*first), FixedField(*second));
  EXPECT_EQ(Counter(*first), 0u);
  EXPECT_EQ(Counter(*second), 1u);
}

TEST(NonceSequence, DrawsANewFixedFieldBeforeTheCounterWraps) {
  NonceSequence ivs(/*counter_limit=*/3);
  std::set<GcmIv> seen;
  std::set<uint64_t> fields;
  for (int i = 0; i < 9; ++i) {
    StatusOr<GcmIv> iv = ivs.Next();
    ASSERT_TRUE(iv.ok());
    EXPECT_LT(Counter(*iv), 3u);
    EXPECT_TRUE(seen.insert(*iv).second) << "IV repeated at invocation " << i;
    fields.insert(FixedField(*iv));
  }
  EXPECT_EQ(fields.size(), 3u);
}

TEST(NonceSequence, IndependentSequencesDoNotShareAFixedField) {
  NonceSequence a, b;
  EXPECT_NE(FixedField(*a.Next()), FixedField(*b.Next()));
}

TEST(NonceSequence, NeverHandsOutTheFingerprintIv) {
  NonceSequence ivs;
  for (int i = 0; i < 1000; ++i) EXPECT_NE(*ivs.Next(), NonceSequence::FingerprintIv());
}

}  // namespace
}  // namespace trousseau
