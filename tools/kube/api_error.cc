#include "tools/kube/api_error.h"

#include <nlohmann/json.hpp>

#include <string>

#include "core/strings.h"

namespace trousseau::kube {

Status ApiError(long http_status, std::string_view body, std::string_view what, std::string_view ns) {
  std::string message, reason;
  try {
    const nlohmann::json status = nlohmann::json::parse(body);
    if (status.is_object() && status.value("kind", "") == "Status") {
      message = status.value("message", "");
      reason = status.value("reason", "");
    }
  } catch (const nlohmann::json::exception&) {
  }
  if (message.empty()) message = StrCat("HTTP ", http_status);
  // One line: an apiserver message may span lines (admission webhooks).
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  const std::string head = StrCat(what, ": ");
  switch (http_status) {
    case 401:
      return {StatusCode::kUnauthenticated,
              StrCat(head, "401 Unauthorized: ", message,
                     "; the apiserver did not accept our credentials (expired token? client certificate of another "
                     "cluster?): check the kubeconfig's user")};
    case 403:
      return PermissionDeniedError(StrCat(head, "403 Forbidden: ", message,
                                          "; ask for the RBAC permission it names (try `kubectl auth can-i --list -n ",
                                          ns, "`)"));
    case 404:
      return NotFoundError(StrCat(head, "404 Not Found: ", message, "; check the name and --namespace"));
    case 409:
      if (reason == "AlreadyExists") {
        return AlreadyExistsError(StrCat(head, "409 AlreadyExists: ", message,
                                         "; nothing was written (use --rotate to replace a key's value)"));
      }
      return {StatusCode::kAborted,
              StrCat(head, "409 Conflict: ", message,
                     "; someone else changed the Secret after we read it, and nothing was overwritten: run the "
                     "command again")};
    case 422:
      return InvalidArgumentError(StrCat(head, "422 Invalid: ", message));
    default:
      if (http_status >= 500) return UnavailableError(StrCat(head, "apiserver error ", http_status, ": ", message));
      return InternalError(StrCat(head, "unexpected answer ", http_status, ": ", message));
  }
}

}  // namespace trousseau::kube
