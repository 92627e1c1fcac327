// Hook for watching KMS requests (metrics, request logs) without the services knowing about either.
#pragma once

#include <grpcpp/support/status.h>

#include <chrono>
#include <string_view>

namespace trousseau::server {

struct RequestRecord {
  std::string_view api;        // "v2" or "v1beta1"
  std::string_view operation;  // "Status", "Encrypt", "Decrypt", "Version"
  std::string_view uid;        // kube-apiserver's request id (v2), may be empty
  std::string_view key_id;     // key used or asked for, may be empty
  const grpc::Status* status;
  std::chrono::nanoseconds latency;
};

class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  virtual void OnRequest(const RequestRecord& record) = 0;
};

// Times one request and reports it when Done() is called. A null observer costs nothing.
class RequestTimer {
 public:
  RequestTimer(RequestObserver* observer, std::string_view api, std::string_view operation, std::string_view uid)
      : observer_(observer), api_(api), operation_(operation), uid_(uid),
        start_(observer ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{}) {}

  grpc::Status Done(grpc::Status status, std::string_view key_id = {}) {
    if (observer_ != nullptr) {
      observer_->OnRequest({api_, operation_, uid_, key_id, &status, std::chrono::steady_clock::now() - start_});
    }
    return status;
  }

 private:
  RequestObserver* observer_;
  std::string_view api_, operation_, uid_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace trousseau::server
