// Kubernetes KMS v2 (package v2) over KmsEngine.
#pragma once

#include "core/kms_engine.h"
#include "server/request_timer.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::server {

// kube-apiserver rejects longer ciphertexts and key_ids.
inline constexpr size_t kV2MaxCiphertext = 1024;
inline constexpr size_t kV2MaxKeyId = 1024;
inline constexpr char kV2Version[] = "v2";

class KmsV2Service final : public v2::KeyManagementService::Service {
 public:
  KmsV2Service(KmsEngine& engine, RequestObserver* observer) : engine_(engine), observer_(observer) {}

  grpc::Status Status(grpc::ServerContext* context, const v2::StatusRequest* request,
                      v2::StatusResponse* response) override;
  grpc::Status Encrypt(grpc::ServerContext* context, const v2::EncryptRequest* request,
                       v2::EncryptResponse* response) override;
  grpc::Status Decrypt(grpc::ServerContext* context, const v2::DecryptRequest* request,
                       v2::DecryptResponse* response) override;

 private:
  KmsEngine& engine_;
  RequestObserver* const observer_;
};

}  // namespace trousseau::server
