// The few apiserver calls `trousseauctl secret` makes: read a Secret, create one, change some of its
// keys with a JSON merge patch that carries metadata.resourceVersion (a precondition: a concurrent
// writer gives 409 Conflict instead of being overwritten), and ask who we are (SelfSubjectReview).
// Every request body that holds a value is built in wiped memory; every error is one line (api_error.h).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "core/status.h"
#include "tools/kube/http_client.h"
#include "tools/kube/kubeconfig.h"
#include "tools/kube/wiped_string.h"

namespace trousseau::kube {

// What a Secret's data key may be (the apiserver's rule): [-._a-zA-Z0-9]+, at most 253 characters.
bool ValidDataKey(std::string_view key);

struct SecretSnapshot {
  std::string resource_version;
  std::string type;
  // The base64 text of `key`'s value, if the Secret has that key (wiped when it goes).
  std::optional<WipedString> value_base64;
};

// The data keys of a write: key -> base64 text of the value (wiped when it goes).
using DataUpdate = std::map<std::string, WipedString>;
using Annotations = std::map<std::string, std::string>;

class SecretsClient {
 public:
  static StatusOr<std::unique_ptr<SecretsClient>> Create(ClusterAccess access);

  const ClusterAccess& access() const { return access_; }

  // The Secret `ns/name` and the value of `key` in it; nullopt when there is no such Secret.
  StatusOr<std::optional<SecretSnapshot>> Get(const std::string& ns, const std::string& name, const std::string& key);
  // POST: a new Secret (type Opaque) with `data` and `annotations`. An existing one is ALREADY_EXISTS.
  Status Create(const std::string& ns, const std::string& name, const DataUpdate& data, const Annotations& annotations);
  // PATCH (merge patch) of `data` and `annotations` into the Secret, only if it is still at
  // `resource_version` (else ABORTED: 409 Conflict).
  Status Patch(const std::string& ns, const std::string& name, const std::string& resource_version,
               const DataUpdate& data, const Annotations& annotations);
  // The user the apiserver sees us as (authentication.k8s.io/v1 SelfSubjectReview); nullopt when it
  // cannot say (an apiserver without the API, or no permission).
  std::optional<std::string> WhoAmI();

 private:
  explicit SecretsClient(ClusterAccess access) : access_(std::move(access)) {}
  ClusterAccess access_;
  std::unique_ptr<HttpClient> http_;
};

// The JSON of a write (exposed for tests): {"apiVersion":"v1","kind":"Secret","metadata":{...},"data":{...}}
// for a create, or {"metadata":{...},"data":{...}} for a patch, in wiped memory.
WipedString SecretBody(const std::optional<std::string>& name_for_create, const std::string& resource_version,
                       const DataUpdate& data, const Annotations& annotations);

}  // namespace trousseau::kube
