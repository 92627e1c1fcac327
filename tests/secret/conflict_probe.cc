// For ci/e2e: the client's 409 path against a real kube-apiserver, made deterministic. Reads Secret
// NS/NAME (it must exist), patches KEY with the resourceVersion it read (must succeed), then patches again
// with that same, now stale, resourceVersion: the apiserver must answer 409 Conflict, shown as one line,
// and the value of the first patch must still be there. Prints that line; exit 0 when all of it held.
// The values written are fixed test words, not secrets.
// Usage: secret_conflict_probe KUBECONFIG NS NAME KEY
#include <iostream>
#include <string>

#include "tools/kube/base64.h"
#include "tools/kube/kubeconfig.h"
#include "tools/kube/secrets_client.h"

using namespace trousseau;        // NOLINT
using namespace trousseau::kube;  // NOLINT

int main(int argc, char** argv) {
  if (argc != 5) {
    std::cerr << "usage: secret_conflict_probe KUBECONFIG NS NAME KEY\n";
    return 2;
  }
  const std::string ns = argv[2], name = argv[3], key = argv[4];
  AccessSources sources;
  sources.kubeconfig_flag = argv[1];
  StatusOr<ClusterAccess> access = LoadClusterAccess(sources);
  if (!access.ok()) {
    std::cerr << "probe: " << access.status().message() << "\n";
    return 1;
  }
  StatusOr<std::unique_ptr<SecretsClient>> client = SecretsClient::Create(*std::move(access));
  if (!client.ok()) return 1;
  StatusOr<std::optional<SecretSnapshot>> read = (*client)->Get(ns, name, key);
  if (!read.ok() || !read->has_value()) {
    std::cerr << "probe: cannot read " << ns << "/" << name << "\n";
    return 1;
  }
  const std::string stale = (*read)->resource_version;
  DataUpdate first;
  first.emplace(key, Base64Encode("first-writer"));
  if (Status s = (*client)->Patch(ns, name, stale, first, {}); !s.ok()) {
    std::cerr << "probe: the first patch failed: " << s.message() << "\n";
    return 1;
  }
  DataUpdate second;
  second.emplace(key, Base64Encode("second-writer"));
  Status conflict = (*client)->Patch(ns, name, stale, second, {});
  std::cout << conflict.message() << "\n";
  if (conflict.code() != StatusCode::kAborted) {
    std::cerr << "probe: expected ABORTED (409 Conflict), got " << StatusCodeName(conflict.code()) << "\n";
    return 1;
  }
  StatusOr<std::optional<SecretSnapshot>> after = (*client)->Get(ns, name, key);
  if (!after.ok() || !after->has_value() || !(*after)->value_base64 ||
      (*after)->value_base64->value != Base64Encode("first-writer").value) {
    std::cerr << "probe: the first writer's value was overwritten\n";
    return 1;
  }
  return 0;
}
