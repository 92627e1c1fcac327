// Times one gRPC request and reports it to a RequestObserver (core/request_observer.h) as core
// types: the grpc::Status becomes a StatusCode and its message.
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <string_view>

#include "core/request_observer.h"
#include "server/grpc_status.h"

namespace trousseau::server {

// Reports when Done() is called. A null observer costs nothing.
class RequestTimer {
 public:
  RequestTimer(RequestObserver* observer, std::string_view api, std::string_view operation, std::string_view uid)
      : observer_(observer),
        api_(api),
        operation_(operation),
        uid_(uid),
        start_(observer ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{}) {}

  grpc::Status Done(grpc::Status status, std::string_view key_id = {}) {
    if (observer_ != nullptr) {
      observer_->OnRequest({.api = api_,
                            .operation = operation_,
                            .uid = uid_,
                            .key_id = key_id,
                            .code = FromGrpc(status.error_code()),
                            .error_message = status.error_message(),
                            .latency = std::chrono::steady_clock::now() - start_});
    }
    return status;
  }

 private:
  RequestObserver* observer_;
  std::string_view api_, operation_, uid_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace trousseau::server
