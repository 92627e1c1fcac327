// HTTPS to the apiserver with libcurl: TLS always verified (the kubeconfig's CA, else the system's),
// client certificate and key handed to curl from memory (CURLOPT_SSLCERT_BLOB / CURLOPT_SSLKEY_BLOB,
// never a temporary file), a bearer token in a header built in wiped memory. Response bodies land in
// a WipedString (they may hold a Secret's data).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/status.h"
#include "tools/kube/kubeconfig.h"
#include "tools/kube/wiped_string.h"

typedef void CURL;  // NOLINT: curl's own typedef

namespace trousseau::kube {

struct HttpResponse {
  long status = 0;
  WipedString body;
};

class HttpClient {
 public:
  // Keeps a reference to `access`: it must outlive the client.
  static StatusOr<std::unique_ptr<HttpClient>> Create(const ClusterAccess& access);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // METHOD server+path with `body` (may be empty) as `content_type`. A transport or TLS failure is
  // UNAVAILABLE naming the server and curl's reason; any HTTP status is a response.
  StatusOr<HttpResponse> Send(std::string_view method, std::string_view path, std::string_view content_type,
                              std::string_view body);

 private:
  explicit HttpClient(const ClusterAccess& access) : access_(access) {}
  const ClusterAccess& access_;
  CURL* curl_ = nullptr;
};

// Wiping allocation for curl (every block curl frees is zeroed first: its copies of the token header
// and of request and response buffers). Called once, before any other curl call; HttpClient::Create
// calls it.
void InitCurlOnce();

}  // namespace trousseau::kube
