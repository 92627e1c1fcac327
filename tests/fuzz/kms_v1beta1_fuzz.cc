// Fuzzes the KMS v1beta1 request handlers (src/server/kms_v1beta1_service.h), like kms_v2_fuzz.cc:
// byte 0 picks the call, the rest is the protobuf request as it arrives on the wire. The engine
// behind them is real (KmsEngine + the tests-only software AES-GCM backend, fixed keys).
//   0 Version                         only "v1beta1" or empty accepted; the reply says "v1beta1"
//   1 Encrypt(req), then Decrypt      a version other than v1beta1 is refused; else the ciphertext
//     of the result                   decrypts to the request's plaintext (round trip)
//   2 Decrypt(req) as sent            OK only for an authentic envelope (v1beta1 has no key_id: the
//                                     header's version decides), with exactly its plaintext
//   3 Encrypt(req.plain), then        any change to a real envelope is refused
//     Decrypt it with req.version's
//     bytes XORed onto it from offset version[0]
#include <grpcpp/server_context.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "server/kms_v1beta1_service.h"
#include "tests/fuzz/fixed_key_engine.h"
#include "tests/fuzz/kms_fuzz_common.h"

namespace {

using trousseau::fuzz::FixedKeyEngine;
using trousseau::fuzz::FuzzInput;
using trousseau::fuzz::IsClientError;

trousseau::server::KmsV1beta1Service& Service() {
  static auto* service = new trousseau::server::KmsV1beta1Service(FixedKeyEngine(), "fuzz", /*observer=*/nullptr);
  return *service;
}

bool VersionAccepted(const std::string& version) { return version.empty() || version == "v1beta1"; }

void CheckDecrypt(const v1beta1::DecryptRequest& request) {
  grpc::ServerContext context;
  v1beta1::DecryptResponse response;
  const grpc::Status status = Service().Decrypt(&context, &request, &response);
  const std::optional<std::string> authentic = trousseau::fuzz::IndependentlyOpen(request.cipher());
  if (status.ok()) {
    FUZZ_CHECK(VersionAccepted(request.version()));
    FUZZ_CHECK(authentic.has_value());
    FUZZ_CHECK(response.plain() == *authentic);
  } else {
    FUZZ_CHECK(IsClientError(status));
    FUZZ_CHECK(response.plain().empty());
    if (VersionAccepted(request.version())) FUZZ_CHECK(!authentic.has_value());
  }
}

// Returns the ciphertext, or empty if Encrypt refused the request.
std::string CheckEncrypt(const v1beta1::EncryptRequest& request) {
  const std::string plain = request.plain();  // Encrypt wipes the request's copy
  grpc::ServerContext context;
  v1beta1::EncryptResponse response;
  const grpc::Status status = Service().Encrypt(&context, &request, &response);
  if (!status.ok()) {
    FUZZ_CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    FUZZ_CHECK(!VersionAccepted(request.version()) || plain.empty());
    return {};
  }
  FUZZ_CHECK(VersionAccepted(request.version()));
  FUZZ_CHECK(trousseau::fuzz::IndependentlyOpen(response.cipher()) == plain);
  v1beta1::DecryptRequest back;
  back.set_cipher(response.cipher());
  grpc::ServerContext decrypt_context;
  v1beta1::DecryptResponse opened;
  FUZZ_CHECK(Service().Decrypt(&decrypt_context, &back, &opened).ok());
  FUZZ_CHECK(opened.plain() == plain);
  return response.cipher();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const FuzzInput input(data, size, 4);
  switch (input.call) {
    case 0: {
      v1beta1::VersionRequest request;
      if (!input.Parse(request)) return 0;
      grpc::ServerContext context;
      v1beta1::VersionResponse response;
      const grpc::Status status = Service().Version(&context, &request, &response);
      FUZZ_CHECK(status.ok() == VersionAccepted(request.version()));
      if (status.ok()) FUZZ_CHECK(response.version() == "v1beta1" && response.runtime_name() == "trousseau-hsm");
      // The refusal quotes the caller's version bounded (a client could send megabytes).
      if (!status.ok()) FUZZ_CHECK(status.error_message().size() < 200);
      break;
    }
    case 1: {
      v1beta1::EncryptRequest request;
      if (!input.Parse(request)) return 0;
      CheckEncrypt(request);
      break;
    }
    case 2: {
      v1beta1::DecryptRequest request;
      if (!input.Parse(request)) return 0;
      CheckDecrypt(request);
      break;
    }
    case 3: {
      v1beta1::EncryptRequest request;
      if (!input.Parse(request)) return 0;
      const std::string mask = request.version();
      request.clear_version();
      std::string cipher = CheckEncrypt(request);
      if (cipher.empty() || mask.empty()) return 0;
      const std::string original = cipher;
      cipher = trousseau::fuzz::Forged(cipher, mask);
      v1beta1::DecryptRequest forged;
      forged.set_cipher(cipher);
      CheckDecrypt(forged);
      if (cipher != original) {
        grpc::ServerContext context;
        v1beta1::DecryptResponse response;
        FUZZ_CHECK(!Service().Decrypt(&context, &forged, &response).ok());
      }
      break;
    }
  }
  return 0;
}
