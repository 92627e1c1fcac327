// Generated gRPC clients for both KMS APIs on a unix socket, as kube-apiserver connects.
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

}  // namespace trousseau::testing
