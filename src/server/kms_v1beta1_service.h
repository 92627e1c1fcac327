// Kubernetes KMS v1beta1 (package v1beta1) over KmsEngine, for clusters older than 1.29 or with
// the KMSv1 feature gate. Its requests carry no key_id: the envelope header names the key version.
#pragma once

#include <string>

#include "core/kms_engine.h"
#include "server/request_timer.h"
#include "v1beta1/kms.grpc.pb.h"

namespace trousseau::server {

inline constexpr char kV1beta1Version[] = "v1beta1";
// kube-apiserver stores the v1 ciphertext behind a 2-byte length.
inline constexpr size_t kV1MaxCiphertext = 65535;

class KmsV1beta1Service final : public v1beta1::KeyManagementService::Service {
 public:
  KmsV1beta1Service(KmsEngine& engine, std::string runtime_version, RequestObserver* observer)
      : engine_(engine), runtime_version_(std::move(runtime_version)), observer_(observer) {}

  grpc::Status Version(grpc::ServerContext* context, const v1beta1::VersionRequest* request,
                       v1beta1::VersionResponse* response) override;
  grpc::Status Encrypt(grpc::ServerContext* context, const v1beta1::EncryptRequest* request,
                       v1beta1::EncryptResponse* response) override;
  grpc::Status Decrypt(grpc::ServerContext* context, const v1beta1::DecryptRequest* request,
                       v1beta1::DecryptResponse* response) override;

 private:
  KmsEngine& engine_;
  const std::string runtime_version_;
  RequestObserver* const observer_;
};

}  // namespace trousseau::server
