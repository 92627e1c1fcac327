// Fuzzes the recipient set parser (src/recipients/recipient_set.h) with arbitrary files, as a node
// reads whatever was distributed to it before any signature is checked.
// Invariants: never crashes or throws; a refusal is INVALID_ARGUMENT with a message; what parses
// passes CheckRecipientSet, serializes and parses again to the same set (same digest, same
// signatures), and no signature ever verifies against a key that signed nothing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "recipients/recipient_set.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trousseau;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  StatusOr<recipients::RecipientSet> set = recipients::ParseRecipientSet(input);
  if (!set.ok()) {
    FUZZ_CHECK(set.status().code() == StatusCode::kInvalidArgument);
    FUZZ_CHECK(!set.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(recipients::CheckRecipientSet(*set).ok());
  StatusOr<recipients::RecipientSet> again = recipients::ParseRecipientSet(recipients::SerializeRecipientSet(*set));
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(recipients::SetDigest(*again) == recipients::SetDigest(*set));
  FUZZ_CHECK(again->signatures.size() == set->signatures.size());
  static const char kPem[] =
      "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC "
      "KEY-----\n";
  static const StatusOr<recipients::AdminKey> admin = recipients::AdminKey::FromPem(kPem);
  FUZZ_CHECK(admin.ok());
  FUZZ_CHECK(!recipients::VerifySet(*set, {.keys = {*admin}, .threshold = 1}).ok());
  return 0;
}
