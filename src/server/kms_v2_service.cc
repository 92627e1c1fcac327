#include "server/kms_v2_service.h"

#include <spdlog/spdlog.h>

#include "core/secure_bytes.h"
#include "server/grpc_status.h"
#include "core/status.h"

namespace trousseau::server {

grpc::Status KmsV2Service::Status(grpc::ServerContext*, const v2::StatusRequest*, v2::StatusResponse* response) {
  HealthReport health = engine_.Health();
  response->set_version(kV2Version);
  response->set_healthz(health.detail);
  response->set_key_id(health.active_key_id);
  if (!health.ok) spdlog::warn("v2 Status: {}", health.detail);
  return grpc::Status::OK;
}

grpc::Status KmsV2Service::Encrypt(grpc::ServerContext*, const v2::EncryptRequest* request,
                                   v2::EncryptResponse* response) {
  StatusOr<EncryptResult> result = engine_.Encrypt(request->plaintext(), kV2MaxCiphertext);
  // The request buffer is ours to wipe once the seed is sealed.
  auto& plaintext = const_cast<std::string&>(request->plaintext());
  WipeMemory(plaintext.data(), plaintext.size());
  if (!result.ok()) {
    spdlog::warn("v2 Encrypt uid={} failed: {}", request->uid(), result.status().ToString());
    return ToGrpc(result.status());
  }
  spdlog::debug("v2 Encrypt uid={} key_id={}", request->uid(), result->key_id);
  response->set_ciphertext(std::move(result->ciphertext));
  response->set_key_id(std::move(result->key_id));
  return grpc::Status::OK;
}

grpc::Status KmsV2Service::Decrypt(grpc::ServerContext*, const v2::DecryptRequest* request,
                                   v2::DecryptResponse* response) {
  if (request->key_id().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key_id is required");
  }
  if (request->key_id().size() > kV2MaxKeyId) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key_id is longer than 1024 bytes");
  }
  if (request->ciphertext().size() > kV2MaxCiphertext) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ciphertext is longer than 1024 bytes");
  }
  StatusOr<SecureBytes> plaintext = engine_.Decrypt(request->ciphertext(), request->key_id());
  if (!plaintext.ok()) {
    spdlog::warn("v2 Decrypt uid={} failed: {}", request->uid(), plaintext.status().ToString());
    return ToGrpc(plaintext.status());
  }
  spdlog::debug("v2 Decrypt uid={} key_id={}", request->uid(), request->key_id());
  response->set_plaintext(plaintext->data(), plaintext->size());
  return grpc::Status::OK;
}

}  // namespace trousseau::server
