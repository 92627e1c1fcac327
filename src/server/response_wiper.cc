#include "server/response_wiper.h"

#include <string>

#include "core/secure_bytes.h"
#include "v1beta1/kms.pb.h"
#include "v2/kms.pb.h"

namespace trousseau::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

template <typename Response, std::string* (Response::*kField)()>
class WipeAfterSend final : public grpc::experimental::Interceptor {
 public:
  WipeAfterSend(std::string_view method, const ResponseWiperFactory::AfterWipe& after_wipe)
      : method_(method), after_wipe_(after_wipe) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      // The handler's own response object (non-const: it lives in gRPC's unary handler until the
      // send has completed).
      sent_ = const_cast<Response*>(static_cast<const Response*>(methods->GetSendMessage()));
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_SEND_MESSAGE) && sent_ != nullptr) {
      std::string* field = (sent_->*kField)();
      WipeMemory(field->data(), field->size());
      if (after_wipe_) after_wipe_(method_, *field);
      sent_ = nullptr;
    }
    methods->Proceed();
  }

 private:
  const std::string_view method_;
  const ResponseWiperFactory::AfterWipe& after_wipe_;
  Response* sent_ = nullptr;
};

constexpr std::string_view kV2Decrypt = "/v2.KeyManagementService/Decrypt";
constexpr std::string_view kV1beta1Decrypt = "/v1beta1.KeyManagementService/Decrypt";

}  // namespace

grpc::experimental::Interceptor* ResponseWiperFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const std::string_view method = info->method();
  if (method == kV2Decrypt) {
    return new WipeAfterSend<v2::DecryptResponse, &v2::DecryptResponse::mutable_plaintext>(kV2Decrypt, after_wipe_);
  }
  if (method == kV1beta1Decrypt) {
    return new WipeAfterSend<v1beta1::DecryptResponse, &v1beta1::DecryptResponse::mutable_plain>(kV1beta1Decrypt,
                                                                                                 after_wipe_);
  }
  return nullptr;
}

}  // namespace trousseau::server
