// Generated gRPC clients for both KMS APIs on a unix socket, as kube-apiserver connects, and the v2
// Status/Encrypt/Decrypt calls the tests make through them.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "v1beta1/kms.grpc.pb.h"
#include "v2/kms.grpc.pb.h"

namespace trousseau::testing {

inline std::shared_ptr<grpc::Channel> UnixChannel(const std::string& socket_path) {
  grpc::ChannelArguments args;
  args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, "localhost");
  return grpc::CreateCustomChannel("unix://" + socket_path, grpc::InsecureChannelCredentials(), args);
}

// A context with the apiserver's default 3 s deadline.
inline std::unique_ptr<grpc::ClientContext> CallContext(std::chrono::milliseconds deadline = std::chrono::seconds(3)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() + deadline);
  return context;
}

struct KmsClients {
  explicit KmsClients(const std::string& socket_path)
      : channel(UnixChannel(socket_path)),
        v2(v2::KeyManagementService::NewStub(channel)),
        v1beta1(v1beta1::KeyManagementService::NewStub(channel)) {}
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v2::KeyManagementService::Stub> v2;
  std::unique_ptr<v1beta1::KeyManagementService::Stub> v1beta1;
};

// The v2 Status the apiserver would see on `socket_path`; healthz "<no answer>" (and no key_id) if the
// plugin does not answer within `deadline`.
inline v2::StatusResponse PluginStatus(const std::string& socket_path,
                                       std::chrono::milliseconds deadline = std::chrono::seconds(1)) {
  KmsClients clients(socket_path);
  v2::StatusResponse status;
  if (!clients.v2->Status(CallContext(deadline).get(), {}, &status).ok()) status.set_healthz("<no answer>");
  return status;
}

inline grpc::Status EncryptV2(const std::string& socket_path, const std::string& plaintext,
                              v2::EncryptResponse& sealed) {
  KmsClients clients(socket_path);
  v2::EncryptRequest request;
  request.set_plaintext(plaintext);
  return clients.v2->Encrypt(CallContext().get(), request, &sealed);
}

// Decrypts what EncryptV2 sealed; the plaintext goes to `plaintext` if given.
inline grpc::Status DecryptV2(const std::string& socket_path, const v2::EncryptResponse& sealed,
                              std::string* plaintext = nullptr,
                              std::chrono::milliseconds deadline = std::chrono::seconds(3)) {
  KmsClients clients(socket_path);
  v2::DecryptRequest request;
  request.set_ciphertext(sealed.ciphertext());
  request.set_key_id(sealed.key_id());
  v2::DecryptResponse response;
  grpc::Status status = clients.v2->Decrypt(CallContext(deadline).get(), request, &response);
  if (plaintext != nullptr) *plaintext = response.plaintext();
  return status;
}

}  // namespace trousseau::testing
