// Fuzzes key_id derivation and lookup (src/core/key_id.h, KeyRing::Build / VersionOf / KeyIdOf):
// a key family as a device could list it (any versions, any fingerprints), then a key_id as a
// client could send it in a v2 DecryptRequest.
// Invariants: never crashes; a ring that builds has its highest version active, one distinct
// "kek-v<version>-<32 lowercase hex>" key_id per version, and VersionOf(KeyIdOf(v)) == v; a
// looked-up key_id resolves only to the version whose key_id it is; a duplicate version or
// version 0 is refused.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "core/key_id.h"
#include "core/key_ring.h"
#include "core/strings.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  const std::string kind = in.ConsumeRandomLengthString(16);
  const std::string family = in.ConsumeRandomLengthString(64);
  std::vector<trousseau::BackendKey> keys(in.ConsumeIntegralInRange<size_t>(0, 8));
  std::set<uint64_t> versions;
  bool duplicate_or_zero = false;
  for (trousseau::BackendKey& key : keys) {
    // Mostly small versions (so duplicates happen), sometimes any 64-bit value.
    key.version = in.ConsumeBool() ? in.ConsumeIntegralInRange<uint64_t>(0, 6) : in.ConsumeIntegral<uint64_t>();
    key.fingerprint = in.ConsumeRandomLengthString(48);
    duplicate_or_zero |= key.version == 0 || !versions.insert(key.version).second;
  }
  const std::string asked = in.ConsumeRemainingBytesAsString();

  trousseau::StatusOr<trousseau::KeyRing> ring = trousseau::KeyRing::Build(kind, family, keys);
  if (!ring.ok()) {
    FUZZ_CHECK(keys.empty() || duplicate_or_zero);
    return 0;
  }
  FUZZ_CHECK(!keys.empty() && !duplicate_or_zero);
  FUZZ_CHECK(ring->active_version() == *versions.rbegin());
  FUZZ_CHECK(ring->key_ids().size() == versions.size());
  std::set<std::string> distinct;
  for (const trousseau::BackendKey& key : keys) {
    const std::string* id = ring->KeyIdOf(key.version);
    FUZZ_CHECK(id != nullptr);
    FUZZ_CHECK(*id == trousseau::DeriveKeyId(kind, family, key.version, key.fingerprint));
    const std::string prefix = trousseau::StrCat("kek-v", key.version, "-");
    FUZZ_CHECK(id->size() == prefix.size() + 32 && id->compare(0, prefix.size(), prefix) == 0);
    FUZZ_CHECK(IsLowerHex(std::string_view(*id).substr(prefix.size())));
    FUZZ_CHECK(ring->VersionOf(*id) == key.version);
    distinct.insert(*id);
  }
  FUZZ_CHECK(distinct.size() == keys.size());
  FUZZ_CHECK(ring->active_key_id() == *ring->KeyIdOf(ring->active_version()));

  const std::optional<uint64_t> found = ring->VersionOf(asked);
  if (found) {
    FUZZ_CHECK(ring->KeyIdOf(*found) != nullptr && *ring->KeyIdOf(*found) == asked);
  } else {
    FUZZ_CHECK(distinct.count(asked) == 0);
  }
  return 0;
}
