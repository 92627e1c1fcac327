#include "tools/kube/kubeconfig.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "core/strings.h"
#include "tools/kube/base64.h"
#include "tools/kube/wiped_string.h"

namespace trousseau::kube {
namespace {

std::optional<std::string> Env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string DirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// A path in a kubeconfig is relative to the file's directory.
std::string Resolve(const std::string& kubeconfig, const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  return DirOf(kubeconfig) + "/" + path;
}

std::string Text(const SecureBytes& bytes) { return std::string(bytes.view()); }

// The entry called `name` of a kubeconfig list (clusters, users, contexts): its inner mapping.
StatusOr<YAML::Node> Named(const YAML::Node& root, const char* list, const char* item, const std::string& name,
                           const std::string& file) {
  const YAML::Node entries = root[list];
  if (entries && entries.IsSequence()) {
    for (const YAML::Node& entry : entries) {
      if (entry["name"] && entry["name"].as<std::string>() == name && entry[item]) return entry[item];
    }
  }
  return NotFoundError(StrCat(file, ": no ", item, " named '", name, "' in its ", list));
}

std::string Str(const YAML::Node& node, const char* key) {
  const YAML::Node value = node[key];
  return value && value.IsScalar() ? value.as<std::string>() : std::string();
}

StatusOr<ClusterAccess> FromKubeconfig(const std::string& file, const std::string& wanted_context) {
  StatusOr<SecureBytes> content = ReadSecretFile(file);
  if (!content.ok()) return content.status();
  YAML::Node root;
  try {
    WipedString text;
    text.value.assign(content->view());
    root = YAML::Load(text.value);
  } catch (const YAML::Exception& e) {
    // The mark (line, column) only: the message of yaml-cpp may quote the file's text, which may hold a key.
    return InvalidArgumentError(
        StrCat(file, ": not YAML (line ", e.mark.line + 1, ", column ", e.mark.column + 1, ")"));
  }
  if (!root.IsMap()) return InvalidArgumentError(StrCat(file, ": not a kubeconfig (no mapping at its top)"));
  try {
    const std::string context_name = wanted_context.empty() ? Str(root, "current-context") : wanted_context;
    if (context_name.empty()) {
      return FailedPreconditionError(StrCat(file, ": no current-context; give --context NAME"));
    }
    StatusOr<YAML::Node> context = Named(root, "contexts", "context", context_name, file);
    if (!context.ok()) return context.status();
    ClusterAccess access;
    access.source = StrCat("kubeconfig ", file, ", context '", context_name, "'");
    access.namespace_name = Str(*context, "namespace");
    if (access.namespace_name.empty()) access.namespace_name = "default";

    const std::string cluster_name = Str(*context, "cluster");
    StatusOr<YAML::Node> cluster = Named(root, "clusters", "cluster", cluster_name, file);
    if (!cluster.ok()) return cluster.status();
    access.server = Str(*cluster, "server");
    while (access.server.ends_with("/")) access.server.pop_back();
    if (!access.server.starts_with("https://")) {
      return FailedPreconditionError(StrCat(access.source, ": the cluster's server '", access.server,
                                            "' is not https://; a Secret value is only sent over verified TLS"));
    }
    const YAML::Node insecure = (*cluster)["insecure-skip-tls-verify"];
    if (insecure && insecure.IsScalar() && insecure.as<bool>(false)) {
      return FailedPreconditionError(StrCat(
          access.source, ": the cluster sets insecure-skip-tls-verify, so nobody has checked that ", access.server,
          " is the apiserver; a Secret value is never sent to an unverified server. Give the cluster's CA as "
          "certificate-authority(-data) instead"));
    }
    if (!Str(*cluster, "tls-server-name").empty()) {
      return FailedPreconditionError(
          StrCat(access.source, ": tls-server-name is not supported; use a server URL whose name the certificate has"));
    }
    if (std::string data = Str(*cluster, "certificate-authority-data"); !data.empty()) {
      StatusOr<SecureBytes> pem = Base64Decode(data);
      if (!pem.ok()) return InvalidArgumentError(StrCat(access.source, ": certificate-authority-data is not base64"));
      access.ca_pem = Text(*pem);
    } else if (std::string path = Str(*cluster, "certificate-authority"); !path.empty()) {
      StatusOr<SecureBytes> pem = ReadSecretFile(Resolve(file, path));
      if (!pem.ok()) return pem.status();
      access.ca_pem = Text(*pem);
    }

    const std::string user_name = Str(*context, "user");
    StatusOr<YAML::Node> user = Named(root, "users", "user", user_name, file);
    if (!user.ok()) return user.status();
    if ((*user)["exec"] || (*user)["auth-provider"]) {
      return FailedPreconditionError(StrCat(access.source, ": user '", user_name,
                                            "' uses a credential plugin (exec/auth-provider), which trousseauctl does "
                                            "not run; use a context with a client certificate or a token"));
    }
    if (!Str(*user, "username").empty() || !Str(*user, "password").empty()) {
      return FailedPreconditionError(StrCat(access.source, ": user '", user_name,
                                            "' has a username/password, which kube-apiserver no longer accepts; use a "
                                            "client certificate or a token"));
    }
    if (std::string data = Str(*user, "client-certificate-data"); !data.empty()) {
      StatusOr<SecureBytes> pem = Base64Decode(data);
      if (!pem.ok()) return InvalidArgumentError(StrCat(access.source, ": client-certificate-data is not base64"));
      access.client_cert_pem = Text(*pem);
    } else if (std::string path = Str(*user, "client-certificate"); !path.empty()) {
      StatusOr<SecureBytes> pem = ReadSecretFile(Resolve(file, path));
      if (!pem.ok()) return pem.status();
      access.client_cert_pem = Text(*pem);
    }
    if (WipedString data{}; (data.value = Str(*user, "client-key-data"), !data.value.empty())) {
      StatusOr<SecureBytes> pem = Base64Decode(data.value);
      if (!pem.ok()) return InvalidArgumentError(StrCat(access.source, ": client-key-data is not base64"));
      access.client_key_pem = *std::move(pem);
    } else if (std::string path = Str(*user, "client-key"); !path.empty()) {
      StatusOr<SecureBytes> pem = ReadSecretFile(Resolve(file, path));
      if (!pem.ok()) return pem.status();
      access.client_key_pem = *std::move(pem);
    }
    if (access.client_cert_pem.empty() != access.client_key_pem.empty()) {
      return FailedPreconditionError(StrCat(access.source, ": user '", user_name,
                                            "' has a client certificate without its key, or a key without "
                                            "its certificate"));
    }
    if (WipedString token{}; (token.value = Str(*user, "token"), !token.value.empty())) {
      access.token = SecureBytes::CopyOf(token.value);
    } else if (std::string path = Str(*user, "tokenFile"); !path.empty()) {
      StatusOr<SecureBytes> read = ReadSecretFile(Resolve(file, path));
      if (!read.ok()) return read.status();
      std::string_view view = read->view();
      while (!view.empty() && (view.back() == '\n' || view.back() == '\r' || view.back() == ' ')) view.remove_suffix(1);
      access.token = SecureBytes::CopyOf(view);
    }
    if (access.client_cert_pem.empty() && access.token.empty()) {
      return FailedPreconditionError(StrCat(access.source, ": user '", user_name,
                                            "' has no client certificate and no token; the apiserver would treat us "
                                            "as anonymous"));
    }
    return access;
  } catch (const YAML::Exception& e) {
    return InvalidArgumentError(
        StrCat(file, ": not a kubeconfig (a value of the wrong type near line ", e.mark.line + 1, ")"));
  }
}

StatusOr<ClusterAccess> InCluster(const AccessSources& sources) {
  ClusterAccess access;
  access.source = StrCat("in-cluster service account (", sources.service_account_dir, ")");
  std::string host = *sources.service_host;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";  // IPv6
  access.server = StrCat("https://", host, ":", sources.service_port.value_or("443"));
  StatusOr<SecureBytes> ca = ReadSecretFile(sources.service_account_dir + "/ca.crt");
  if (!ca.ok()) return ca.status();
  access.ca_pem = Text(*ca);
  StatusOr<SecureBytes> token = ReadSecretFile(sources.service_account_dir + "/token");
  if (!token.ok()) return token.status();
  std::string_view view = token->view();
  while (!view.empty() && (view.back() == '\n' || view.back() == '\r')) view.remove_suffix(1);
  access.token = SecureBytes::CopyOf(view);
  if (StatusOr<SecureBytes> ns = ReadSecretFile(sources.service_account_dir + "/namespace"); ns.ok()) {
    access.namespace_name = Text(*ns);
    while (!access.namespace_name.empty() && access.namespace_name.back() == '\n') access.namespace_name.pop_back();
  }
  if (access.namespace_name.empty()) access.namespace_name = "default";
  return access;
}

}  // namespace

AccessSources AccessSources::FromEnvironment(std::string kubeconfig_flag, std::string context) {
  AccessSources sources;
  sources.kubeconfig_flag = std::move(kubeconfig_flag);
  sources.context = std::move(context);
  sources.kubeconfig_env = Env("KUBECONFIG");
  sources.home = Env("HOME");
  sources.service_host = Env("KUBERNETES_SERVICE_HOST");
  sources.service_port = Env("KUBERNETES_SERVICE_PORT");
  return sources;
}

StatusOr<ClusterAccess> LoadClusterAccess(const AccessSources& sources) {
  if (!sources.kubeconfig_flag.empty()) return FromKubeconfig(sources.kubeconfig_flag, sources.context);
  if (sources.kubeconfig_env) {
    // kubectl merges every file of the list; trousseauctl reads the first one that exists.
    std::string_view list = *sources.kubeconfig_env;
    while (!list.empty()) {
      const size_t colon = list.find(':');
      const std::string file(list.substr(0, colon));
      if (!file.empty() && Exists(file)) return FromKubeconfig(file, sources.context);
      if (colon == std::string_view::npos) break;
      list.remove_prefix(colon + 1);
    }
    return NotFoundError(StrCat("no file of $KUBECONFIG (", *sources.kubeconfig_env, ") exists"));
  }
  if (sources.home) {
    const std::string file = *sources.home + "/.kube/config";
    if (Exists(file)) return FromKubeconfig(file, sources.context);
  }
  if (sources.service_host) {
    if (!sources.context.empty()) return FailedPreconditionError("--context needs a kubeconfig; none was found");
    return InCluster(sources);
  }
  return NotFoundError(
      "no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not in a pod (no KUBERNETES_SERVICE_HOST)");
}

StatusOr<SecureBytes> ReadSecretFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    const std::string why = StrCat("cannot open ", path, ": ", std::strerror(error));
    if (error == ENOENT) return NotFoundError(why);
    if (error == EACCES) return PermissionDeniedError(why);
    return FailedPreconditionError(why);
  }
  WipedString buffer(4096);
  char chunk[4096];
  for (;;) {
    const ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int error = errno;
      ::close(fd);
      WipeMemory(chunk, sizeof chunk);
      return FailedPreconditionError(StrCat("cannot read ", path, ": ", std::strerror(error)));
    }
    if (n == 0) break;
    AppendWiped(buffer, std::string_view(chunk, static_cast<size_t>(n)));
  }
  ::close(fd);
  WipeMemory(chunk, sizeof chunk);
  return SecureBytes::CopyOf(buffer.value);
}

}  // namespace trousseau::kube
