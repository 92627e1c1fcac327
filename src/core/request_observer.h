// Hook for watching KMS requests (metrics, request logs) without the services knowing about either.
// Core types only: the gRPC layer reports its outcome as a trousseau StatusCode (the canonical gRPC
// codes, one to one), so whoever watches (src/observability) needs no gRPC.
#pragma once

#include <chrono>
#include <string_view>

#include "core/status.h"

namespace trousseau {

// One finished request. The views are valid only during OnRequest.
struct RequestRecord {
  std::string_view api;        // "v2" or "v1beta1"
  std::string_view operation;  // "Status", "Encrypt", "Decrypt", "Version"
  std::string_view uid;        // kube-apiserver's request id (v2), may be empty
  std::string_view key_id;     // key used or asked for, may be empty
  StatusCode code = StatusCode::kOk;
  std::string_view error_message;  // what the caller was told; empty when code is kOk
  std::chrono::nanoseconds latency{0};

  bool ok() const { return code == StatusCode::kOk; }
};

// Called on the request's own thread, from many threads at once: implementations are thread-safe
// and must return quickly (they run inside every request's latency).
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  virtual void OnRequest(const RequestRecord& record) = 0;
};

}  // namespace trousseau
