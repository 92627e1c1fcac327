// trousseau::Status <-> grpc::Status. The codes are the canonical gRPC codes in both.
#pragma once

#include <grpcpp/support/status.h>

#include "core/status.h"

namespace trousseau::server {

inline grpc::Status ToGrpc(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

// gRPC's own codes beyond the canonical 0-16 (DO_NOT_USE) never reach a handler's return value.
inline StatusCode FromGrpc(grpc::StatusCode code) {
  const int value = static_cast<int>(code);
  return value >= 0 && value <= static_cast<int>(StatusCode::kUnauthenticated) ? static_cast<StatusCode>(value)
                                                                               : StatusCode::kUnknown;
}

}  // namespace trousseau::server
