#include "soak_final_check.h"

#include "load.h"

namespace trousseau::bench {

FinalCheck DecryptAgain(v2::KeyManagementService::Stub& stub, Corpus& corpus, size_t versions, Counts& counts) {
  FinalCheck check;
  check.ok_by_version.assign(versions, 0);
  auto one = [&](const Item& item) {
    ++check.calls;
    v2::DecryptRequest request;
    request.set_ciphertext(item.ciphertext);
    request.set_uid(kSoakUid);
    request.set_key_id(item.key_id);
    for (const auto& [k, v] : item.annotations) (*request.mutable_annotations())[k] = v;
    v2::DecryptResponse response;
    const grpc::Status status = stub.Decrypt(NewContext().get(), request, &response);
    if (!status.ok()) {
      ++check.errors;
      const int code = static_cast<int>(status.error_code());
      ++counts.errors[kFinal][CountedCode(code)];
      return;
    }
    if (response.plaintext() != item.seed) {
      ++check.wrong;
      return;
    }
    if (item.key_index < versions) ++check.ok_by_version[item.key_index];
  };
  for (const std::vector<Item>& r : corpus.reservoirs()) {
    for (size_t i = 0; i < r.size() && i < kFinalCheckPerVersion; ++i) one(r[i]);
  }
  // Ciphertexts whose first Decrypt never came (the budget ended first, or it failed in the outage).
  for (const Item& item : corpus.unverified_items()) one(item);
  return check;
}

}  // namespace trousseau::bench
