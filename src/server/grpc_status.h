// trousseau::Status -> grpc::Status. The codes are the canonical gRPC codes in both.
#pragma once

#include <grpcpp/support/status.h>

#include "core/status.h"

namespace trousseau::server {

inline grpc::Status ToGrpc(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

}  // namespace trousseau::server
