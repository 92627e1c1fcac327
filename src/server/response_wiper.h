// Wipes the plaintext of every Decrypt response once gRPC has sent it. The synchronous API hands the
// response message to gRPC, which serialises it after the handler returns and frees it without
// wiping; a server interceptor sees the message before serialisation (PRE_SEND_MESSAGE) and is called
// again once the send completed (POST_SEND_MESSAGE), while the message still exists. The serialised
// copy in gRPC's own buffers stays out of reach (docs/design.md).
// This relies on the synchronous unary path (the response lives in gRPC's unary handler until the
// send has completed) and on being the only interceptor that sees the message: moving the services
// to the callback API, or adding an interceptor that replaces the message, must revisit it.
#pragma once

#include <functional>
#include <string_view>

#include <grpcpp/support/server_interceptor.h>

namespace trousseau::server {

class ResponseWiperFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // Called with the method and the field's bytes right after each wipe; for tests, may be empty.
  using AfterWipe = std::function<void(std::string_view method, std::string_view wiped_field)>;
  explicit ResponseWiperFactory(AfterWipe after_wipe = {}) : after_wipe_(std::move(after_wipe)) {}

  // Null (no interceptor, no cost) for every method but the two Decrypts.
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;

 private:
  AfterWipe after_wipe_;
};

}  // namespace trousseau::server
