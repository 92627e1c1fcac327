// config: the EncryptionConfiguration for kube-apiserver and the matching plugin command line.
// Pure output: the token is not opened.
#include <sys/un.h>

#include <cctype>
#include <iostream>
#include <sstream>

#include "core/strings.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

bool HasControlOrSpace(std::string_view text) {
  for (unsigned char c : text) {
    if (c <= 0x20 || c == 0x7f) return true;
  }
  return false;
}

// A YAML scalar: plain if it is obviously safe, else double-quoted.
std::string YamlScalar(std::string_view text) {
  bool plain = !text.empty();
  for (unsigned char c : text) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/' || c == ':')) plain = false;
  }
  if (plain) return std::string(text);
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// 'text' for a POSIX shell.
std::string ShellQuote(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

int Config(const ConfigOptions& options) {
  // The same URI rules as the plugin (a pin-value is refused, and not echoed).
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(options.pkcs11_uri);
  if (!uri.ok()) return Fail(kExitUsage, uri.status().message());
  if (HasControlOrSpace(options.pkcs11_uri)) {
    return Fail(kExitUsage, "--pkcs11-uri may not contain spaces or control characters (percent-encode them)");
  }

  if (options.name.empty()) return Fail(kExitUsage, "--name may not be empty");
  if (options.name.find(':') != std::string::npos) {
    return Fail(kExitUsage,
                "--name may not contain ':' (kube-apiserver refuses it for KMS v2 providers: the name is "
                "part of the k8s:enc:kms:v2:<name>: prefix stored in etcd)");
  }
  if (HasControlOrSpace(options.name)) return Fail(kExitUsage, "--name may not contain spaces or control characters");

  const std::string& endpoint = options.listen;
  if (!endpoint.starts_with("unix:///")) {
    return Fail(kExitUsage, StrCat("--listen must be unix:///absolute/path.sock, not ", QuoteForMessage(endpoint)));
  }
  const std::string path = endpoint.substr(7);
  if (path.starts_with("/@")) {
    return Fail(kExitUsage,
                "--listen: abstract unix sockets have no file permissions, so any local process could use "
                "the KEK (and the plugin refuses them); use unix:///absolute/path.sock");
  }
  if (HasControlOrSpace(path)) return Fail(kExitUsage, "--listen may not contain spaces or control characters");
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Fail(kExitUsage,
                StrCat("--listen: the socket path is longer than ", sizeof(sockaddr_un::sun_path) - 1, " bytes"));
  }

  std::optional<std::chrono::milliseconds> timeout = ParseDuration(options.timeout);
  if (!timeout || timeout->count() <= 0) {
    return Fail(kExitUsage, StrCat("--timeout must be a positive duration such as 3s or 500ms, not ",
                                   QuoteForMessage(options.timeout)));
  }

  const std::string directory = path.substr(0, path.rfind('/') + 1);
  std::ostringstream out;
  out << "# EncryptionConfiguration for kube-apiserver: save it (e.g. /etc/kubernetes/enc/enc.yaml) and\n"
      << "# start kube-apiserver with --encryption-provider-config=<that file>, with " << directory << "\n"
      << "# mounted into its pod. Start the plugin first, with the matching command line:\n"
      << "#\n"
      << "#   trousseau-hsm --listen " << endpoint << " --pkcs11-uri " << ShellQuote(options.pkcs11_uri) << "\n"
      << "#\n"
      << "# The PIN comes from the URI's pin-source file (mode 0600) or TROUSSEAU_HSM_PIN, never from a flag.\n"
      << "# Secrets written from then on are stored in etcd as k8s:enc:kms:v2:" << options.name << ":...\n"
      << "apiVersion: apiserver.config.k8s.io/v1\n"
      << "kind: EncryptionConfiguration\n"
      << "resources:\n"
      << "  - resources:\n"
      << "      - secrets\n"
      << "    providers:\n"
      << "      - kms:\n"
      << "          apiVersion: v2\n"
      << "          name: " << YamlScalar(options.name) << "\n"
      << "          endpoint: " << YamlScalar(endpoint) << "\n"
      << "          timeout: " << YamlScalar(options.timeout) << "\n"
      << "      # identity last: Secrets written before encryption was enabled stay readable\n"
      << "      - identity: {}\n";
  std::cout << out.str();
  return kExitOk;
}

}  // namespace trousseau::init
