// Where the apiserver is and who we are to it, found as kubectl finds it: --kubeconfig, then the first
// file of $KUBECONFIG, then ~/.kube/config, then the in-cluster service account
// (/var/run/secrets/kubernetes.io/serviceaccount with KUBERNETES_SERVICE_HOST/PORT).
// From the kubeconfig: the context (--context, else current-context), its cluster's server and CA
// (certificate-authority or -data), its user's client certificate and key (file or -data) or bearer
// token (token or tokenFile), and its namespace.
// Refused with the reason: insecure-skip-tls-verify (the Secret value would go to a server nobody
// authenticated; there is no override), an http:// server, tls-server-name, exec and auth-provider
// credential plugins, and username/password.
#pragma once

#include <optional>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::kube {

struct ClusterAccess {
  std::string server;           // https://HOST[:PORT], without a trailing slash
  std::string ca_pem;           // empty: the system's CA store
  std::string client_cert_pem;  // empty: no client certificate
  SecureBytes client_key_pem;
  SecureBytes token;           // empty: no bearer token
  std::string namespace_name;  // the context's namespace, else "default"
  std::string source;          // "kubeconfig /path, context 'x'" or "in-cluster service account", for messages
};

// Where to look. FromEnvironment() fills the environment's part from this process.
struct AccessSources {
  std::string kubeconfig_flag;                // --kubeconfig
  std::string context;                        // --context
  std::optional<std::string> kubeconfig_env;  // $KUBECONFIG
  std::optional<std::string> home;            // $HOME
  std::optional<std::string> service_host;    // $KUBERNETES_SERVICE_HOST
  std::optional<std::string> service_port;    // $KUBERNETES_SERVICE_PORT
  std::string service_account_dir = "/var/run/secrets/kubernetes.io/serviceaccount";

  static AccessSources FromEnvironment(std::string kubeconfig_flag, std::string context);
};

StatusOr<ClusterAccess> LoadClusterAccess(const AccessSources& sources);

// Reads a whole file into wiped memory (keys, tokens). NOT_FOUND / PERMISSION_DENIED name the path.
StatusOr<SecureBytes> ReadSecretFile(const std::string& path);

}  // namespace trousseau::kube
