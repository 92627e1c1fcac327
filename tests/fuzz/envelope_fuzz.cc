// Fuzzes the envelope parser (src/core/envelope.h) with arbitrary ciphertext bytes, as any
// client of the KMS socket can send them.
// Invariants: never crashes; what parses is exactly header || sealed, its header re-encodes to
// the same bytes (parse -> encode round trip), and version 0 never parses.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/envelope.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  trousseau::StatusOr<trousseau::ParsedEnvelope> parsed = trousseau::ParseEnvelope(input);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == trousseau::StatusCode::kInvalidArgument);
    FUZZ_CHECK(!parsed.status().message().empty());
    return 0;
  }
  FUZZ_CHECK(parsed->key_version != 0);
  FUZZ_CHECK(parsed->header.size() == trousseau::kEnvelopeHeaderSize);
  FUZZ_CHECK(!parsed->sealed.empty());
  FUZZ_CHECK(parsed->header.data() == input.data());  // views into the input, no copy
  FUZZ_CHECK(parsed->header.size() + parsed->sealed.size() == input.size());
  FUZZ_CHECK(trousseau::EncodeEnvelopeHeader(parsed->key_version, parsed->format) == parsed->header);
  return 0;
}
