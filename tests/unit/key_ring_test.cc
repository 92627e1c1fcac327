#include "core/key_ring.h"

#include <gtest/gtest.h>

#include "core/key_id.h"

namespace trousseau {
namespace {

TEST(KeyId, IsReadableHashedAndStable) {
  const std::string id = DeriveKeyId("pkcs11", "kek", 3, "fingerprint");
  EXPECT_EQ(id, DeriveKeyId("pkcs11", "kek", 3, "fingerprint"));
  EXPECT_EQ(id.rfind("kek-v3-", 0), 0u) << id;
  EXPECT_EQ(id.size(), std::string("kek-v3-").size() + 32);
  EXPECT_LE(id.size(), 1024u);
}

TEST(KeyId, ChangesWithEveryInput) {
  const std::string base = DeriveKeyId("pkcs11", "kek", 1, "fp");
  EXPECT_NE(base, DeriveKeyId("tpm2", "kek", 1, "fp"));
  EXPECT_NE(base, DeriveKeyId("pkcs11", "kek2", 1, "fp"));
  EXPECT_NE(base, DeriveKeyId("pkcs11", "kek", 2, "fp"));
  // A key re-created with the same label and version is a different key: never the same key_id.
  EXPECT_NE(base, DeriveKeyId("pkcs11", "kek", 1, "other fingerprint"));
}

TEST(KeyId, FieldBoundariesAreUnambiguous) {
  EXPECT_NE(DeriveKeyId("pkcs11", "ab", 1, "c"), DeriveKeyId("pkcs11", "a", 1, "bc"));
}

TEST(KeyRing, HighestVersionIsActiveAndAllResolve) {
  StatusOr<KeyRing> ring = KeyRing::Build("pkcs11", "kek", {{1, "a"}, {5, "b"}, {3, "c"}});
  ASSERT_TRUE(ring.ok());
  EXPECT_EQ(ring->active_version(), 5u);
  EXPECT_EQ(ring->active_key_id(), DeriveKeyId("pkcs11", "kek", 5, "b"));
  for (uint64_t v : {1, 3, 5}) {
    const std::string* id = ring->KeyIdOf(v);
    ASSERT_NE(id, nullptr);
    EXPECT_EQ(ring->VersionOf(*id), v);
  }
  EXPECT_EQ(ring->KeyIdOf(2), nullptr);
  EXPECT_FALSE(ring->VersionOf("kek-v2-unknown").has_value());
}

TEST(KeyRing, RefusesAnEmptyFamily) {
  StatusOr<KeyRing> ring = KeyRing::Build("pkcs11", "kek", {});
  EXPECT_TRUE(IsFailedPrecondition(ring.status()));
  EXPECT_NE(ring.status().message().find("trousseau-hsm-init"), std::string::npos);
}

TEST(KeyRing, RefusesDuplicateVersions) {
  EXPECT_TRUE(IsFailedPrecondition(KeyRing::Build("pkcs11", "kek", {{2, "a"}, {2, "b"}}).status()));
}

}  // namespace
}  // namespace trousseau
