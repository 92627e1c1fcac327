// tools/kube/kubeconfig: how trousseauctl finds the apiserver and its credentials, on real files.
#include "tools/kube/kubeconfig.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "tests/tpm/swtpm.h"
#include "tools/kube/base64.h"

namespace trousseau::kube {
namespace {

using testing::TempDir;

void Write(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

std::string B64(std::string_view text) { return Base64Encode(text).value; }

class KubeconfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    Write(dir_.path() + "/ca.crt", "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n");
    Write(dir_.path() + "/token", "file-token-value\n");
  }
  std::string Config(const std::string& body) {
    const std::string path = dir_.path() + "/config";
    Write(path, body);
    return path;
  }
  AccessSources Flag(const std::string& path, const std::string& context = "") {
    AccessSources sources;
    sources.kubeconfig_flag = path;
    sources.context = context;
    return sources;
  }
  TempDir dir_;
};

constexpr char kTwoContexts[] = R"(apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: { server: "https://127.0.0.1:6443/", certificate-authority: ca.crt }
- name: b
  cluster: { server: "https://10.0.0.1:443", certificate-authority-data: Q0EtQg== }
users:
- name: tok
  user: { token: "the-token" }
- name: filetok
  user: { tokenFile: token }
contexts:
- name: one
  context: { cluster: a, user: tok, namespace: apps }
- name: two
  context: { cluster: b, user: filetok }
current-context: one
)";

TEST_F(KubeconfigTest, CurrentContextGivesServerCaTokenAndNamespace) {
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(kTwoContexts)));
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->server, "https://127.0.0.1:6443");      // trailing slash dropped
  EXPECT_NE(access->ca_pem.find("CA"), std::string::npos);  // certificate-authority relative to the file
  EXPECT_EQ(access->token.view(), "the-token");
  EXPECT_EQ(access->namespace_name, "apps");
  EXPECT_TRUE(access->client_cert_pem.empty());
  EXPECT_NE(access->source.find("context 'one'"), std::string::npos);
}

TEST_F(KubeconfigTest, ContextFlagPicksAnotherContextWithTokenFileAndCaData) {
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(kTwoContexts), "two"));
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->server, "https://10.0.0.1:443");
  EXPECT_EQ(access->ca_pem, "CA-B");
  EXPECT_EQ(access->token.view(), "file-token-value");  // the newline trimmed
  EXPECT_EQ(access->namespace_name, "default");
}

TEST_F(KubeconfigTest, UnknownContextIsNamed) {
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(kTwoContexts), "three"));
  ASSERT_FALSE(access.ok());
  EXPECT_NE(access.status().message().find("no context named 'three'"), std::string::npos);
}

TEST_F(KubeconfigTest, ClientCertificateAndKeyFromData) {
  const std::string key = "-----BEGIN PRIVATE KEY-----\nKEYBYTES\n-----END PRIVATE KEY-----\n";
  const std::string config =
      "clusters:\n- name: c\n  cluster: {server: 'https://h:1', certificate-authority: ca.crt}\n"
      "users:\n- name: u\n  user:\n    client-certificate-data: " +
      B64("CERT") + "\n    client-key-data: " + B64(key) +
      "\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(config)));
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->client_cert_pem, "CERT");
  EXPECT_EQ(access->client_key_pem.view(), key);
  EXPECT_TRUE(access->token.empty());
}

TEST_F(KubeconfigTest, CertificateWithoutKeyIsRefused) {
  const std::string config =
      "clusters:\n- name: c\n  cluster: {server: 'https://h:1'}\n"
      "users:\n- name: u\n  user: {client-certificate-data: " +
      B64("CERT") + "}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n";
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(config)));
  ASSERT_FALSE(access.ok());
  EXPECT_NE(access.status().message().find("without its key"), std::string::npos);
}

TEST_F(KubeconfigTest, InsecureSkipTlsVerifyIsRefusedWithTheReason) {
  const std::string config =
      "clusters:\n- name: c\n  cluster: {server: 'https://h:1', insecure-skip-tls-verify: true}\n"
      "users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n"
      "current-context: x\n";
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(config)));
  ASSERT_FALSE(access.ok());
  EXPECT_EQ(access.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(access.status().message().find("insecure-skip-tls-verify"), std::string::npos);
  EXPECT_NE(access.status().message().find("certificate-authority"), std::string::npos);
}

TEST_F(KubeconfigTest, PlainHttpServerIsRefused) {
  const std::string config =
      "clusters:\n- name: c\n  cluster: {server: 'http://h:8080'}\n"
      "users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, "
      "user: u}\ncurrent-context: x\n";
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(config)));
  ASSERT_FALSE(access.ok());
  EXPECT_NE(access.status().message().find("not https://"), std::string::npos);
}

TEST_F(KubeconfigTest, ExecCredentialPluginIsRefused) {
  const std::string config =
      "clusters:\n- name: c\n  cluster: {server: 'https://h:1'}\n"
      "users:\n- name: u\n  user: {exec: {command: aws}}\ncontexts:\n- name: x\n  context: "
      "{cluster: c, user: u}\ncurrent-context: x\n";
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(Config(config)));
  ASSERT_FALSE(access.ok());
  EXPECT_NE(access.status().message().find("credential plugin"), std::string::npos);
}

TEST_F(KubeconfigTest, BrokenYamlNamesTheLineButNeverItsText) {
  const std::string path = Config("users:\n- name: u\n  user: {token: SECRETTOKENVALUE\n  : : [\n");
  StatusOr<ClusterAccess> access = LoadClusterAccess(Flag(path));
  ASSERT_FALSE(access.ok());
  EXPECT_NE(access.status().message().find("line"), std::string::npos) << access.status().message();
  EXPECT_EQ(access.status().message().find("SECRETTOKENVALUE"), std::string::npos) << access.status().message();
}

TEST_F(KubeconfigTest, FirstExistingFileOfKubeconfigEnvIsRead) {
  const std::string path = Config(kTwoContexts);
  AccessSources sources;
  sources.kubeconfig_env = dir_.path() + "/missing:" + path;
  sources.home = dir_.path() + "/nohome";
  StatusOr<ClusterAccess> access = LoadClusterAccess(sources);
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->namespace_name, "apps");
}

TEST_F(KubeconfigTest, HomeKubeConfigIsTheFallback) {
  ::mkdir((dir_.path() + "/home").c_str(), 0700);
  ::mkdir((dir_.path() + "/home/.kube").c_str(), 0700);
  Write(dir_.path() + "/home/.kube/config", kTwoContexts);
  Write(dir_.path() + "/home/.kube/ca.crt", "HOMECA");
  AccessSources sources;
  sources.home = dir_.path() + "/home";
  StatusOr<ClusterAccess> access = LoadClusterAccess(sources);
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->ca_pem, "HOMECA");
}

TEST_F(KubeconfigTest, InClusterServiceAccount) {
  const std::string sa = dir_.path() + "/sa";
  ::mkdir(sa.c_str(), 0700);
  Write(sa + "/token", "sa-token\n");
  Write(sa + "/ca.crt", "SACA");
  Write(sa + "/namespace", "kube-system");
  AccessSources sources;
  sources.service_host = "10.96.0.1";
  sources.service_port = "443";
  sources.service_account_dir = sa;
  StatusOr<ClusterAccess> access = LoadClusterAccess(sources);
  ASSERT_TRUE(access.ok()) << access.status().message();
  EXPECT_EQ(access->server, "https://10.96.0.1:443");
  EXPECT_EQ(access->token.view(), "sa-token");
  EXPECT_EQ(access->ca_pem, "SACA");
  EXPECT_EQ(access->namespace_name, "kube-system");
  sources.service_host = "fd00::1";
  access = LoadClusterAccess(sources);
  ASSERT_TRUE(access.ok());
  EXPECT_EQ(access->server, "https://[fd00::1]:443");
}

TEST_F(KubeconfigTest, NothingToGoOnIsNotFound) {
  AccessSources sources;
  sources.home = dir_.path() + "/nohome";
  StatusOr<ClusterAccess> access = LoadClusterAccess(sources);
  ASSERT_FALSE(access.ok());
  EXPECT_EQ(access.status().code(), StatusCode::kNotFound);
  EXPECT_NE(access.status().message().find("KUBERNETES_SERVICE_HOST"), std::string::npos);
}

}  // namespace
}  // namespace trousseau::kube
