// The client's gRPC deadline as a device deadline (kube-apiserver gives each KMS call 3 s by default).
#pragma once

#include <grpcpp/server_context.h>

#include <chrono>

#include "core/key_backend.h"

namespace trousseau::server {

inline Deadline RequestDeadline(const grpc::ServerContext& context) {
  const auto deadline = context.deadline();
  const auto now = std::chrono::system_clock::now();
  // No deadline, or one so far away that it is none: the device timeout alone applies.
  if (deadline == std::chrono::system_clock::time_point::max() || deadline - now > std::chrono::hours(24)) {
    return Deadline::max();
  }
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(deadline - now);
}

}  // namespace trousseau::server
