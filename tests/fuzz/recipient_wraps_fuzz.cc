// Fuzzes the multi-recipient envelope parser and opener (src/recipients/multi_wrap.h) with arbitrary
// sealed bytes, as anyone who can write to etcd can make kube-apiserver pass them to Decrypt.
// Invariants: never crashes; what parses has each wrap 48 bytes, distinct member indices inside the
// set and a body of at least a tag; opening it with a shared secret no device computed never succeeds
// (it would mean the wraps do not authenticate) and fails INVALID_ARGUMENT or NOT_FOUND only.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string_view>

#include "core/envelope.h"
#include "recipients/multi_wrap.h"
#include "recipients/p256.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

const trousseau::recipients::RecipientSet& FuzzSet() {
  static const trousseau::recipients::RecipientSet set = [] {
    trousseau::recipients::RecipientSet s{
        .name = "fuzz", .epoch = 3, .recipients = {}, .sealing_key = {}, .signatures = {}};
    for (const char* id : {"node-a", "node-b", "node-c"}) {
      trousseau::StatusOr<trousseau::recipients::EphemeralKey> key = trousseau::recipients::EphemeralKey::Generate();
      FUZZ_CHECK(key.ok());
      s.recipients.push_back({.id = id, .device = "tpm2", .public_key = key->public_point(), .tpm_name = ""});
    }
    return s;
  }();
  return set;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace trousseau;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const recipients::RecipientSet& set = FuzzSet();
  const std::string aad = EncodeEnvelopeHeader(set.epoch, kEnvelopeFormatV3);
  StatusOr<recipients::ParsedWraps> parsed = recipients::ParseWraps(set, input, aad);
  if (!parsed.ok()) {
    FUZZ_CHECK(parsed.status().code() == StatusCode::kInvalidArgument);
    return 0;
  }
  FUZZ_CHECK(parsed->ephemeral_point.size() == recipients::kUncompressedPointSize);
  FUZZ_CHECK(parsed->wraps.size() == parsed->indices.size() && !parsed->wraps.empty());
  std::set<uint8_t> seen;
  for (size_t i = 0; i < parsed->wraps.size(); ++i) {
    FUZZ_CHECK(parsed->wraps[i].size() == 48);
    FUZZ_CHECK(parsed->indices[i] < set.recipients.size());
    FUZZ_CHECK(seen.insert(parsed->indices[i]).second);
  }
  FUZZ_CHECK(parsed->body.size() >= recipients::kGcmTagSize);
  SecureBytes not_from_a_device = SecureBytes::CopyOf(input.substr(0, std::min<size_t>(32, input.size())));
  for (size_t member = 0; member < set.recipients.size(); ++member) {
    StatusOr<SecureBytes> opened = recipients::OpenWithSharedSecret(set, *parsed, member, not_from_a_device);
    FUZZ_CHECK(!opened.ok());
    FUZZ_CHECK(opened.status().code() == StatusCode::kInvalidArgument ||
               opened.status().code() == StatusCode::kNotFound);
  }
  return 0;
}
