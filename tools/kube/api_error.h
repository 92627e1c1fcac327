// An apiserver error as ONE line an operator can act on: what happened (the Status object's
// message, which names the object and, for RBAC, the verb and the user) and what to try.
#pragma once

#include <string_view>

#include "core/status.h"

namespace trousseau::kube {

// `http_status` and the response body (a metav1.Status, or anything else) for `what` ("create
// secret ns/name"). 401 -> UNAUTHENTICATED, 403 -> PERMISSION_DENIED, 404 -> NOT_FOUND, 409 -> ABORTED
// (a conflict: nothing was overwritten) or ALREADY_EXISTS (reason AlreadyExists), 422 -> INVALID_ARGUMENT,
// 5xx -> UNAVAILABLE, others INTERNAL. The message never contains the request body.
Status ApiError(long http_status, std::string_view body, std::string_view what, std::string_view ns);

}  // namespace trousseau::kube
