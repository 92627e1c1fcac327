// Fuzzes the KMS v2 request handlers (src/server/kms_v2_service.h) with the request bytes a client
// of the socket controls: byte 0 picks the call, the rest is the protobuf request as it arrives on
// the wire (what gRPC would hand the service after parsing it). The engine behind them is real
// (KmsEngine + the tests-only software AES-GCM backend, fixed keys; see fixed_key_engine.h).
//   0 Status                          healthy, version "v2", the active key_id
//   1 Encrypt(req), then Decrypt      ciphertext <= 1024 bytes under the Status key_id, and it
//     of the result                   decrypts to the request's plaintext (round trip)
//   2 Decrypt(req) as sent            OK only for an authentic envelope under a key_id naming its
//                                     version, with exactly the plaintext it holds; else a client
//                                     error (INVALID_ARGUMENT / NOT_FOUND), never a device error
//   3 Encrypt(req.plaintext), then    any change to a real envelope is refused
//     Decrypt it with req.uid XORed
//     onto the ciphertext from offset uid[0]
#include <grpcpp/server_context.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "server/kms_v2_service.h"
#include "tests/fuzz/fixed_key_engine.h"
#include "tests/fuzz/kms_fuzz_common.h"

namespace {

using trousseau::fuzz::FixedKeyEngine;
using trousseau::fuzz::FuzzInput;
using trousseau::fuzz::IsClientError;

trousseau::server::KmsV2Service& Service() {
  static auto* service = new trousseau::server::KmsV2Service(FixedKeyEngine(), /*observer=*/nullptr);
  return *service;
}

std::string ActiveKeyId() { return FixedKeyEngine().key_ring()->active_key_id(); }

void CheckDecrypt(const v2::DecryptRequest& request) {
  grpc::ServerContext context;
  v2::DecryptResponse response;
  const grpc::Status status = Service().Decrypt(&context, &request, &response);
  const std::optional<std::string> authentic = trousseau::fuzz::IndependentlyOpen(request.ciphertext());
  if (status.ok()) {
    FUZZ_CHECK(authentic.has_value());
    FUZZ_CHECK(response.plaintext() == *authentic);
    // The key_id named the envelope's version.
    const std::optional<uint64_t> version = FixedKeyEngine().key_ring()->VersionOf(request.key_id());
    FUZZ_CHECK(version.has_value());
    FUZZ_CHECK(static_cast<uint8_t>(request.ciphertext()[10]) == *version);
  } else {
    FUZZ_CHECK(IsClientError(status));
    FUZZ_CHECK(response.plaintext().empty());
  }
}

// Returns the ciphertext, or empty if Encrypt refused the request.
std::string CheckEncrypt(const v2::EncryptRequest& request) {
  const std::string plaintext = request.plaintext();  // Encrypt wipes the request's copy
  grpc::ServerContext context;
  v2::EncryptResponse response;
  const grpc::Status status = Service().Encrypt(&context, &request, &response);
  if (!status.ok()) {
    FUZZ_CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    FUZZ_CHECK(plaintext.empty() || plaintext.size() > 1024 - trousseau::kEnvelopeHeaderSize - 28);
    return {};
  }
  FUZZ_CHECK(!response.ciphertext().empty() && response.ciphertext().size() <= trousseau::server::kV2MaxCiphertext);
  FUZZ_CHECK(response.key_id() == ActiveKeyId());
  FUZZ_CHECK(trousseau::fuzz::IndependentlyOpen(response.ciphertext()) == plaintext);
  v2::DecryptRequest back;
  back.set_ciphertext(response.ciphertext());
  back.set_key_id(response.key_id());
  grpc::ServerContext decrypt_context;
  v2::DecryptResponse opened;
  FUZZ_CHECK(Service().Decrypt(&decrypt_context, &back, &opened).ok());
  FUZZ_CHECK(opened.plaintext() == plaintext);
  return response.ciphertext();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const FuzzInput input(data, size, 4);
  switch (input.call) {
    case 0: {
      v2::StatusRequest request;
      if (!input.Parse(request)) return 0;
      grpc::ServerContext context;
      v2::StatusResponse response;
      FUZZ_CHECK(Service().Status(&context, &request, &response).ok());
      FUZZ_CHECK(response.version() == "v2" && response.healthz() == "ok");
      FUZZ_CHECK(response.key_id() == ActiveKeyId());
      break;
    }
    case 1: {
      v2::EncryptRequest request;
      if (!input.Parse(request)) return 0;
      CheckEncrypt(request);
      break;
    }
    case 2: {
      v2::DecryptRequest request;
      if (!input.Parse(request)) return 0;
      CheckDecrypt(request);
      break;
    }
    case 3: {
      v2::EncryptRequest request;
      if (!input.Parse(request)) return 0;
      const std::string mask = request.uid();
      std::string ciphertext = CheckEncrypt(request);
      if (ciphertext.empty() || mask.empty()) return 0;
      const std::string original = ciphertext;
      ciphertext = trousseau::fuzz::Forged(ciphertext, mask);
      v2::DecryptRequest forged;
      forged.set_ciphertext(ciphertext);
      forged.set_key_id(ActiveKeyId());
      CheckDecrypt(forged);
      if (ciphertext != original) {
        grpc::ServerContext context;
        v2::DecryptResponse response;
        FUZZ_CHECK(!Service().Decrypt(&context, &forged, &response).ok());
      }
      break;
    }
  }
  return 0;
}
