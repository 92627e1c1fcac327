#include "tools/kube/secrets_client.h"

#include <nlohmann/json.hpp>

#include <utility>

#include "core/strings.h"
#include "tools/kube/api_error.h"

namespace trousseau::kube {
namespace {

std::string SecretPath(const std::string& ns, const std::string& name) {
  return StrCat("/api/v1/namespaces/", ns, "/secrets", name.empty() ? "" : "/", name);
}

// Names are DNS labels / subdomains: nothing to escape in a path, but check so that a stray '/' or '?'
// never changes which URL is asked.
bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 253) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  }
  return true;
}

Status CheckNames(const std::string& ns, const std::string& name) {
  if (!ValidName(ns)) return InvalidArgumentError(StrCat("'", ns, "' is not a namespace name (lowercase a-z, 0-9, -)"));
  if (!ValidName(name)) {
    return InvalidArgumentError(StrCat("'", name, "' is not a Secret name (lowercase a-z, 0-9, - and .)"));
  }
  return OkStatus();
}

}  // namespace

bool ValidDataKey(std::string_view key) {
  if (key.empty() || key.size() > 253 || key == "." || key == "..") return false;
  for (char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
          c == '_')) {
      return false;
    }
  }
  return true;
}

WipedString SecretBody(const std::optional<std::string>& name_for_create, const std::string& resource_version,
                       const DataUpdate& data, const Annotations& annotations) {
  // The metadata holds nothing secret: nlohmann builds it. The data is appended by hand into wiped memory.
  nlohmann::json metadata = nlohmann::json::object();
  if (name_for_create) metadata["name"] = *name_for_create;
  if (!resource_version.empty()) metadata["resourceVersion"] = resource_version;
  if (!annotations.empty()) metadata["annotations"] = annotations;
  const std::string head =
      name_for_create ? StrCat(R"({"apiVersion":"v1","kind":"Secret","type":"Opaque","metadata":)", metadata.dump())
                      : StrCat(R"({"metadata":)", metadata.dump());
  size_t size = head.size() + 16;
  for (const auto& [key, value] : data) size += key.size() + value.value.size() + 8;
  WipedString body(size);
  AppendWiped(body, head);
  AppendWiped(body, R"(,"data":{)");
  bool first = true;
  for (const auto& [key, value] : data) {
    if (!first) AppendWiped(body, ",");
    first = false;
    AppendWiped(body, JsonQuote(key));  // a valid data key needs no escaping; quoted all the same
    AppendWiped(body, ":\"");
    AppendWiped(body, value.value);  // base64: nothing to escape
    AppendWiped(body, "\"");
  }
  AppendWiped(body, "}}");
  return body;
}

StatusOr<std::unique_ptr<SecretsClient>> SecretsClient::Create(ClusterAccess access) {
  std::unique_ptr<SecretsClient> client(new SecretsClient(std::move(access)));
  StatusOr<std::unique_ptr<HttpClient>> http = HttpClient::Create(client->access_);
  if (!http.ok()) return http.status();
  client->http_ = *std::move(http);
  return client;
}

StatusOr<std::optional<SecretSnapshot>> SecretsClient::Get(const std::string& ns, const std::string& name,
                                                           const std::string& key) {
  if (Status s = CheckNames(ns, name); !s.ok()) return s;
  StatusOr<HttpResponse> response = http_->Send("GET", SecretPath(ns, name), "", "");
  if (!response.ok()) return response.status();
  if (response->status == 404) return std::optional<SecretSnapshot>();
  if (response->status != 200) {
    return ApiError(response->status, response->body.value, StrCat("get secret ", ns, "/", name), ns);
  }
  SecretSnapshot snapshot;
  try {
    const nlohmann::json secret = nlohmann::json::parse(response->body.value);
    snapshot.resource_version = secret.at("metadata").at("resourceVersion").get<std::string>();
    snapshot.type = secret.value("type", "Opaque");
    if (secret.contains("data") && secret["data"].is_object() && secret["data"].contains(key)) {
      snapshot.value_base64.emplace();
      AppendWiped(*snapshot.value_base64, secret["data"][key].get_ref<const std::string&>());
    }
  } catch (const nlohmann::json::exception&) {
    return InternalError(StrCat("get secret ", ns, "/", name, ": the apiserver's answer is not a Secret"));
  }
  return std::optional<SecretSnapshot>(std::move(snapshot));
}

Status SecretsClient::Create(const std::string& ns, const std::string& name, const DataUpdate& data,
                             const Annotations& annotations) {
  if (Status s = CheckNames(ns, name); !s.ok()) return s;
  WipedString body = SecretBody(name, "", data, annotations);
  StatusOr<HttpResponse> response = http_->Send("POST", SecretPath(ns, ""), "application/json", body.value);
  if (!response.ok()) return response.status();
  if (response->status == 201 || response->status == 200) return OkStatus();
  return ApiError(response->status, response->body.value, StrCat("create secret ", ns, "/", name), ns);
}

Status SecretsClient::Patch(const std::string& ns, const std::string& name, const std::string& resource_version,
                            const DataUpdate& data, const Annotations& annotations) {
  if (Status s = CheckNames(ns, name); !s.ok()) return s;
  if (resource_version.empty()) return InternalError("a patch without a resourceVersion precondition");
  WipedString body = SecretBody(std::nullopt, resource_version, data, annotations);
  StatusOr<HttpResponse> response =
      http_->Send("PATCH", SecretPath(ns, name), "application/merge-patch+json", body.value);
  if (!response.ok()) return response.status();
  if (response->status == 200) return OkStatus();
  return ApiError(response->status, response->body.value, StrCat("patch secret ", ns, "/", name), ns);
}

std::optional<std::string> SecretsClient::WhoAmI() {
  StatusOr<HttpResponse> response =
      http_->Send("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", "application/json",
                  R"({"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"})");
  if (!response.ok() || response->status != 201) return std::nullopt;
  try {
    const nlohmann::json review = nlohmann::json::parse(response->body.value);
    std::string user = review.at("status").at("userInfo").at("username").get<std::string>();
    if (!user.empty()) return user;
  } catch (const nlohmann::json::exception&) {
  }
  return std::nullopt;
}

}  // namespace trousseau::kube
