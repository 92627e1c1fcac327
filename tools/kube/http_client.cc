#include "tools/kube/http_client.h"

#include <curl/curl.h>
#include <malloc.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "core/strings.h"

namespace trousseau::kube {
namespace {

void WipingFree(void* p) {
  if (p == nullptr) return;
  WipeMemory(p, malloc_usable_size(p));
  std::free(p);
}
void* WipingRealloc(void* p, size_t size) {
  if (p == nullptr) return std::malloc(size);
  if (size == 0) {
    WipingFree(p);
    return nullptr;
  }
  void* q = std::malloc(size);
  if (q == nullptr) return nullptr;
  const size_t old = malloc_usable_size(p);
  std::memcpy(q, p, old < size ? old : size);
  WipingFree(p);
  return q;
}
char* WipingStrdup(const char* s) {
  const size_t n = std::strlen(s) + 1;
  char* copy = static_cast<char*>(std::malloc(n));
  if (copy != nullptr) std::memcpy(copy, s, n);
  return copy;
}

size_t CollectBody(char* data, size_t size, size_t count, void* user) {
  AppendWiped(*static_cast<WipedString*>(user), std::string_view(data, size * count));
  return size * count;
}

// curl_slist with a wiped free (curl_slist_free_all frees through curl's allocator, which wipes).
struct HeaderList {
  curl_slist* list = nullptr;
  ~HeaderList() { curl_slist_free_all(list); }
  bool Add(const char* header) {
    curl_slist* next = curl_slist_append(list, header);
    if (next == nullptr) return false;
    list = next;
    return true;
  }
};

}  // namespace

void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    curl_global_init_mem(CURL_GLOBAL_DEFAULT, std::malloc, WipingFree, WipingRealloc, WipingStrdup, std::calloc);
  });
}

StatusOr<std::unique_ptr<HttpClient>> HttpClient::Create(const ClusterAccess& access) {
  InitCurlOnce();
  std::unique_ptr<HttpClient> client(new HttpClient(access));
  client->curl_ = curl_easy_init();
  if (client->curl_ == nullptr) return InternalError("curl_easy_init failed");
  return client;
}

HttpClient::~HttpClient() {
  if (curl_ != nullptr) curl_easy_cleanup(curl_);
}

StatusOr<HttpResponse> HttpClient::Send(std::string_view method, std::string_view path, std::string_view content_type,
                                        std::string_view body) {
  curl_easy_reset(curl_);
  const std::string url = access_.server + std::string(path);
  const std::string verb(method);
  HttpResponse response;
  char error[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl_, CURLOPT_CUSTOMREQUEST, verb.c_str());
  curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl_, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt(curl_, CURLOPT_CONNECTTIMEOUT, 15L);
  curl_easy_setopt(curl_, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(curl_, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(curl_, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &response.body);
  // Never follow a redirect: the body (a Secret value) would go wherever the Location says.
  curl_easy_setopt(curl_, CURLOPT_FOLLOWLOCATION, 0L);
  if (!access_.ca_pem.empty()) {
    curl_blob ca{const_cast<char*>(access_.ca_pem.data()), access_.ca_pem.size(), CURL_BLOB_NOCOPY};
    curl_easy_setopt(curl_, CURLOPT_CAINFO_BLOB, &ca);
  }
  if (!access_.client_cert_pem.empty()) {
    curl_blob cert{const_cast<char*>(access_.client_cert_pem.data()), access_.client_cert_pem.size(), CURL_BLOB_NOCOPY};
    curl_blob key{const_cast<uint8_t*>(access_.client_key_pem.data()), access_.client_key_pem.size(), CURL_BLOB_NOCOPY};
    curl_easy_setopt(curl_, CURLOPT_SSLCERT_BLOB, &cert);
    curl_easy_setopt(curl_, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(curl_, CURLOPT_SSLKEY_BLOB, &key);
    curl_easy_setopt(curl_, CURLOPT_SSLKEYTYPE, "PEM");
  }
  HeaderList headers;
  headers.Add("Accept: application/json");
  if (!content_type.empty()) headers.Add(StrCat("Content-Type: ", content_type).c_str());
  if (!access_.token.empty()) {
    WipedString authorization(32 + access_.token.size());
    AppendWiped(authorization, "Authorization: Bearer ");
    AppendWiped(authorization, access_.token.view());
    headers.Add(authorization.value.c_str());
  }
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers.list);
  if (!body.empty() || method == "POST" || method == "PATCH" || method == "PUT") {
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.data());
    curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  }
  const CURLcode rc = curl_easy_perform(curl_);
  curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, nullptr);
  curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, nullptr);
  if (rc != CURLE_OK) {
    const std::string why = error[0] != '\0' ? std::string(error) : std::string(curl_easy_strerror(rc));
    std::string hint;
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) {
      hint = "; the server's certificate is not signed by the kubeconfig's certificate-authority (or has another name)";
    } else if (rc == CURLE_SSL_CERTPROBLEM) {
      hint = "; the kubeconfig's client certificate or key cannot be used";
    }
    return UnavailableError(StrCat("cannot talk to ", access_.server, " (", access_.source, "): ", why, hint));
  }
  curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

}  // namespace trousseau::kube
