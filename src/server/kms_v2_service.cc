#include "server/kms_v2_service.h"

#include "core/secure_bytes.h"
#include "server/grpc_status.h"
#include "server/request_deadline.h"

namespace trousseau::server {

grpc::Status KmsV2Service::Status(grpc::ServerContext*, const v2::StatusRequest*, v2::StatusResponse* response) {
  RequestTimer timer(observer_, "v2", "Status", "");
  HealthReport health = engine_.Health();
  response->set_version(kV2Version);
  response->set_healthz(health.detail);
  response->set_key_id(health.active_key_id);
  return timer.Done(grpc::Status::OK, response->key_id());
}

grpc::Status KmsV2Service::Encrypt(grpc::ServerContext* context, const v2::EncryptRequest* request,
                                   v2::EncryptResponse* response) {
  RequestTimer timer(observer_, "v2", "Encrypt", request->uid());
  StatusOr<EncryptResult> result = engine_.Encrypt(request->plaintext(), kV2MaxCiphertext, RequestDeadline(*context));
  // The request buffer is ours to wipe once the seed is sealed.
  auto& plaintext = const_cast<std::string&>(request->plaintext());
  WipeMemory(plaintext.data(), plaintext.size());
  if (!result.ok()) return timer.Done(ToGrpc(result.status()));
  response->set_ciphertext(std::move(result->ciphertext));
  response->set_key_id(std::move(result->key_id));
  return timer.Done(grpc::Status::OK, response->key_id());
}

grpc::Status KmsV2Service::Decrypt(grpc::ServerContext* context, const v2::DecryptRequest* request,
                                   v2::DecryptResponse* response) {
  RequestTimer timer(observer_, "v2", "Decrypt", request->uid());
  if (request->key_id().empty()) {
    return timer.Done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key_id is required"));
  }
  if (request->key_id().size() > kV2MaxKeyId) {
    return timer.Done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "key_id is longer than 1024 bytes"));
  }
  if (request->ciphertext().size() > kV2MaxCiphertext) {
    return timer.Done(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ciphertext is longer than 1024 bytes"),
                      request->key_id());
  }
  StatusOr<SecureBytes> plaintext =
      engine_.Decrypt(request->ciphertext(), request->key_id(), RequestDeadline(*context));
  if (!plaintext.ok()) return timer.Done(ToGrpc(plaintext.status()), request->key_id());
  response->set_plaintext(plaintext->data(), plaintext->size());
  return timer.Done(grpc::Status::OK, request->key_id());
}

}  // namespace trousseau::server
