// deploy/'s Kubernetes manifests: every YAML file and documented YAML block parses; the static pods and the
// Helm DaemonSet keep their security settings, probes and mounts consistent with the plugin's own flags
// (ExpectSecurePluginPod); the chart's values switch what they say; the EncryptionConfigurations point at
// the plugin's socket.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/deploy/deploy_support.h"
#include "tests/deploy/helm_render.h"
#include "tests/testing/skip_or_fail_in_ci.h"

namespace trousseau::deploy {
namespace {

TEST(DeployTest, EveryYamlFileParses) {
  int files = 0;
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() != ".yaml" || IsHelmTemplate(path)) continue;
    ++files;
    SCOPED_TRACE(path.string());
    std::vector<YAML::Node> docs;
    ASSERT_NO_THROW(docs = YAML::LoadAll(Slurp(path)));
    int non_empty = 0;
    for (const YAML::Node& d : docs) non_empty += d.IsMap() ? 1 : 0;
    EXPECT_GE(non_empty, 1) << "no YAML mapping in the file";
  }
  EXPECT_GE(files, 6);  // static pod, 2 EncryptionConfigurations, config.yaml, Chart.yaml, values.yaml
}

TEST(DeployTest, YamlBlocksInTheDocumentationParse) {
  int blocks = 0;
  for (const fs::path& path : DeployFiles()) {
    if (path.extension() != ".md") continue;
    bool in_yaml = false;
    std::string block;
    for (const std::string& line : Lines(Slurp(path))) {
      if (line.rfind("```", 0) == 0) {
        if (in_yaml) {
          ++blocks;
          EXPECT_NO_THROW(YAML::LoadAll(block)) << path << ":\n" << block;
          block.clear();
        }
        in_yaml = !in_yaml && Trim(line) == "```yaml";
        continue;
      }
      if (in_yaml) block += line + "\n";
    }
  }
  EXPECT_GE(blocks, 3);
}

TEST(DeployTest, StaticPodIsSecureAndConsistentWithThePlugin) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  EXPECT_EQ(pod["kind"].as<std::string>(""), "Pod");
  EXPECT_EQ(pod["metadata"]["namespace"].as<std::string>(""), "kube-system");
  ExpectSecurePluginPod(pod["spec"], "static pod");
}

TEST(DeployTest, TpmStaticPodIsAsSecureAndUsesTheResourceManager) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm-tpm.yaml");
  EXPECT_EQ(pod["kind"].as<std::string>(""), "Pod");
  EXPECT_EQ(pod["metadata"]["name"].as<std::string>(""), "trousseau-hsm") << "replaces the PKCS#11 variant";
  ExpectSecurePluginPod(pod["spec"], "TPM static pod");
  const std::map<std::string, std::string> args = ArgMap(PluginContainer(pod["spec"]));
  EXPECT_EQ(args.at("--tpm-tcti"), "device:/dev/tpmrm0") << "the kernel resource manager, shared with the tool";
  EXPECT_FALSE(args.contains("--pkcs11-uri"));
  const std::map<std::string, std::string> pkcs11 =
      ArgMap(PluginContainer(LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml")["spec"]));
  EXPECT_EQ(args.at("--listen"), pkcs11.at("--listen")) << "kube-apiserver's configuration must not change";
  EXPECT_EQ(args.at("--health-listen"), pkcs11.at("--health-listen"));
}

TEST(DeployTest, HelmDaemonSetIsSecureAndRunsOnTheControlPlane) {
  const YAML::Node ds = RenderedDaemonSet();
  ASSERT_TRUE(ds) << "no DaemonSet rendered";
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  ExpectSecurePluginPod(spec, "helm DaemonSet");
  EXPECT_TRUE(spec["nodeSelector"]["node-role.kubernetes.io/control-plane"].IsDefined());
  bool tolerates = false;
  for (const YAML::Node& t : spec["tolerations"]) {
    tolerates |= t["key"].as<std::string>("") == "node-role.kubernetes.io/control-plane" &&
                 t["effect"].as<std::string>("") == "NoSchedule";
  }
  EXPECT_TRUE(tolerates) << "control-plane nodes are tainted NoSchedule";
  for (const auto& label : ds["spec"]["selector"]["matchLabels"]) {
    EXPECT_EQ(ds["spec"]["template"]["metadata"]["labels"][label.first.as<std::string>()].as<std::string>(""),
              label.second.as<std::string>());
  }

  // The same manifest for the static pod and the chart: image user, command and the security settings.
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  const YAML::Node a = PluginContainer(pod["spec"]), b = PluginContainer(spec);
  std::string why;
  EXPECT_TRUE(deploy::YamlEqual(a["securityContext"], b["securityContext"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["command"], b["command"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["startupProbe"], b["startupProbe"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["livenessProbe"], b["livenessProbe"], &why)) << why;
  EXPECT_TRUE(deploy::YamlEqual(a["readinessProbe"], b["readinessProbe"], &why)) << why;
  const auto args_a = ArgMap(a), args_b = ArgMap(b);
  for (const char* flag : {"--listen", "--pkcs11-uri", "--health-listen", "--log-format"}) {
    EXPECT_EQ(args_a.count(flag) ? args_a.at(flag) : "", args_b.count(flag) ? args_b.at(flag) : "") << flag;
  }
  EXPECT_EQ(spec["securityContext"]["runAsUser"].as<int>(-1), pod["spec"]["securityContext"]["runAsUser"].as<int>(-2));
}

TEST(DeployTest, HelmValuesSwitchTheSoftHsmMountsAndAddArguments) {
  const YAML::Node overrides = YAML::Load(R"(
softhsm: { enabled: false }
pkcs11ModuleLibDir: ""
extraArgs: ["--hsm-sessions=8"]
extraEnv: [{ name: TROUSSEAU_HSM_LOG_LEVEL, value: debug }]
socketDir: /run/kms-plugin
)");
  const YAML::Node ds = RenderedDaemonSet(overrides);
  ASSERT_TRUE(ds);
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  const YAML::Node c = PluginContainer(spec);
  for (const YAML::Node& v : spec["volumes"]) {
    const std::string name = v["name"].as<std::string>();
    EXPECT_TRUE(name != "softhsm-conf" && name != "softhsm-tokens" && name != "pkcs11-module-lib") << name;
  }
  for (const YAML::Node& e : c["env"]) EXPECT_NE(e["name"].as<std::string>(), "SOFTHSM2_CONF");
  const auto args = ArgMap(c);
  EXPECT_EQ(args.at("--hsm-sessions"), "8");
  EXPECT_EQ(args.at("--listen"), "unix:///run/kms-plugin/kms.sock");
  const std::vector<Mount> mounts = Mounts(spec, c);
  ASSERT_NE(MountFor(mounts, "/run/kms-plugin/kms.sock"), nullptr);
  EXPECT_EQ(MountFor(mounts, "/run/kms-plugin/kms.sock")->host_path, "/run/kms-plugin");
  std::string init;
  for (const YAML::Node& w : spec["initContainers"][0]["command"]) init += w.as<std::string>() + " ";
  EXPECT_NE(init.find("chown 10001:10001 /run/kms-plugin"), std::string::npos) << init;
}

// A vendor HSM's module comes from the node: pkcs11ModuleDir (and pkcs11ModuleLibDir) mount it read-only.
TEST(DeployTest, HelmVendorModuleValuesMountTheModuleFromTheNode) {
  const YAML::Node overrides = YAML::Load(R"(
softhsm: { enabled: false }
pkcs11Uri: "pkcs11:token=k8s-kms;object=kek?module-path=/opt/vendor/lib/libvendorp11.so&pin-source=file:/etc/trousseau-hsm/pin"
pkcs11ModuleDir: /opt/vendor/lib
pkcs11ModuleLibDir: /opt/vendor/lib64
)");
  const YAML::Node ds = RenderedDaemonSet(overrides);
  ASSERT_TRUE(ds);
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  ExpectSecurePluginPod(spec, "helm DaemonSet, vendor module");
  const std::vector<Mount> mounts = Mounts(spec, PluginContainer(spec));
  for (const char* dir : {"/opt/vendor/lib", "/opt/vendor/lib64"}) {
    const Mount* m = MountFor(mounts, std::string(dir) + "/x.so");
    ASSERT_NE(m, nullptr) << dir;
    EXPECT_EQ(m->host_path, dir);
    EXPECT_EQ(m->host_type, "Directory");
    EXPECT_TRUE(m->read_only);
  }
}

// metrics.serviceMonitor: off by default; on, a headless Service over the DaemonSet's pods at the health
// port and a ServiceMonitor that selects exactly that Service and scrapes /metrics.
TEST(DeployTest, HelmServiceMonitorIsOffByDefaultAndScrapesThePluginsMetricsPort) {
  for (const auto& [name, text] : RenderChart(kChart.string())) {
    for (const YAML::Node& doc : YAML::LoadAll(text)) {
      if (!doc.IsMap()) continue;
      EXPECT_NE(doc["kind"].as<std::string>(""), "ServiceMonitor") << name;
      EXPECT_NE(doc["kind"].as<std::string>(""), "Service") << name;
    }
  }
  const YAML::Node overrides = YAML::Load(R"(
metrics: { serviceMonitor: { enabled: true, labels: { release: kube-prometheus-stack } } }
healthListen: { host: 0.0.0.0, port: 9797 }
)");
  YAML::Node service, monitor;
  for (const auto& [name, text] : RenderChart(kChart.string(), overrides)) {
    for (const YAML::Node& doc : YAML::LoadAll(text)) {
      if (!doc.IsMap()) continue;
      if (doc["kind"].as<std::string>("") == "Service") service = doc;
      if (doc["kind"].as<std::string>("") == "ServiceMonitor") monitor = doc;
    }
  }
  ASSERT_TRUE(service) << "no Service rendered";
  ASSERT_TRUE(monitor) << "no ServiceMonitor rendered";
  const YAML::Node ds = RenderedDaemonSet(overrides);
  ASSERT_TRUE(ds);
  // The Service selects the DaemonSet's pods, at the port the plugin's --health-listen names.
  for (const auto& label : service["spec"]["selector"]) {
    EXPECT_EQ(ds["spec"]["template"]["metadata"]["labels"][label.first.as<std::string>()].as<std::string>(""),
              label.second.as<std::string>());
  }
  const std::string listen = ArgMap(PluginContainer(ds["spec"]["template"]["spec"])).at("--health-listen");
  EXPECT_EQ(listen, "0.0.0.0:9797");
  ASSERT_EQ(service["spec"]["ports"].size(), 1u);
  EXPECT_EQ(service["spec"]["ports"][0]["targetPort"].as<int>(0), 9797);
  EXPECT_EQ(service["spec"]["clusterIP"].as<std::string>(""), "None");
  // The ServiceMonitor selects that Service (all its selector labels on it), in its namespace, by port name.
  EXPECT_EQ(monitor["apiVersion"].as<std::string>(""), "monitoring.coreos.com/v1");
  for (const auto& label : monitor["spec"]["selector"]["matchLabels"]) {
    EXPECT_EQ(service["metadata"]["labels"][label.first.as<std::string>()].as<std::string>(""),
              label.second.as<std::string>());
  }
  EXPECT_EQ(monitor["spec"]["namespaceSelector"]["matchNames"][0].as<std::string>(""),
            service["metadata"]["namespace"].as<std::string>());
  EXPECT_EQ(monitor["metadata"]["labels"]["release"].as<std::string>(""), "kube-prometheus-stack");
  ASSERT_EQ(monitor["spec"]["endpoints"].size(), 1u);
  const YAML::Node endpoint = monitor["spec"]["endpoints"][0];
  EXPECT_EQ(endpoint["port"].as<std::string>(""), service["spec"]["ports"][0]["name"].as<std::string>());
  EXPECT_EQ(endpoint["path"].as<std::string>(""), "/metrics");
}

// metricsListen: --metrics-listen on the node's IP (the downward API's status.hostIP, expanded by the
// kubelet), the probes still on the loopback health port, and the ServiceMonitor scraping the metrics port.
TEST(DeployTest, HelmMetricsListenServesMetricsOnTheNodeIpAndTheServiceMonitorScrapesIt) {
  EXPECT_FALSE(ArgMap(PluginContainer(RenderedDaemonSet()["spec"]["template"]["spec"])).contains("--metrics-listen"))
      << "off by default";
  const YAML::Node overrides = YAML::Load(R"(
metrics: { serviceMonitor: { enabled: true } }
metricsListen: { enabled: true }
)");
  const YAML::Node ds = RenderedDaemonSet(overrides);
  ASSERT_TRUE(ds);
  const YAML::Node c = PluginContainer(ds["spec"]["template"]["spec"]);
  const auto args = ArgMap(c);
  EXPECT_EQ(args.at("--metrics-listen"), "$(NODE_IP):8790");
  EXPECT_EQ(args.at("--health-listen"), "127.0.0.1:8789");
  bool node_ip = false;
  for (const YAML::Node& e : c["env"]) {
    if (e["name"].as<std::string>() != "NODE_IP") continue;
    node_ip = true;
    EXPECT_EQ(e["valueFrom"]["fieldRef"]["fieldPath"].as<std::string>(""), "status.hostIP");
  }
  EXPECT_TRUE(node_ip) << "no NODE_IP for $(NODE_IP)";
  EXPECT_EQ(c["readinessProbe"]["httpGet"]["port"].as<int>(0), 8789);
  YAML::Node service;
  for (const auto& [name, text] : RenderChart(kChart.string(), overrides)) {
    for (const YAML::Node& doc : YAML::LoadAll(text)) {
      if (doc.IsMap() && doc["kind"].as<std::string>("") == "Service") service = doc;
    }
  }
  ASSERT_TRUE(service) << "no Service rendered";
  EXPECT_EQ(service["spec"]["ports"][0]["targetPort"].as<int>(0), 8790);
  // A host of one's own instead of the node's IP.
  const YAML::Node all = YAML::Load("metricsListen: { enabled: true, host: 0.0.0.0, port: 9100 }");
  EXPECT_EQ(ArgMap(PluginContainer(RenderedDaemonSet(all)["spec"]["template"]["spec"])).at("--metrics-listen"),
            "0.0.0.0:9100");
}

// tpm.enabled: the TPM backend's flags, key directory and device instead of everything PKCS#11.
TEST(DeployTest, HelmTpmValuesSwitchToTheTpmBackend) {
  const YAML::Node ds = RenderedDaemonSet(TpmValues());
  ASSERT_TRUE(ds);
  const YAML::Node spec = ds["spec"]["template"]["spec"];
  ExpectSecurePluginPod(spec, "Helm DaemonSet, tpm.enabled");
  const YAML::Node c = PluginContainer(spec);
  const auto args = ArgMap(c);
  EXPECT_EQ(args.at("--tpm-tcti"), "device:/dev/tpmrm0");
  EXPECT_EQ(args.at("--tpm-key-dir"), "/var/lib/trousseau-hsm/tpm");
  EXPECT_FALSE(args.contains("--pkcs11-uri"));
  for (const YAML::Node& v : spec["volumes"]) {
    const std::string name = v["name"].as<std::string>();
    EXPECT_TRUE(name == "socket-dir" || name == "tpm-key-dir" || name == "tpm-device") << name;
  }
  for (const YAML::Node& e : c["env"]) EXPECT_NE(e["name"].as<std::string>(), "SOFTHSM2_CONF");
}

// The renderer above stands in for helm where there is none; where there is one, both must agree.
TEST(DeployTest, HelmTemplateOfRealHelmMatchesTheRenderingTested) {
  const char* env = std::getenv("HELM");
  const std::string helm = env != nullptr ? env : "helm";
  if (!HasCommand(ShellQuote(helm))) {
    SKIP_OR_FAIL_IN_CI("no helm binary (ci/test builds one with ci/go-tools; set HELM=/path/to/helm)");
  }
  char dir_template[] = "/tmp/deploy-helm-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  const std::string overrides_file = dir + "/overrides.yaml";
  std::ofstream(overrides_file) << "softhsm: { enabled: false }\nextraArgs: [\"--hsm-sessions=8\"]\n"
                                   "extraVolumes: [{ name: hsm-conf, hostPath: { path: /etc/hsm, type: Directory } }]\n"
                                   "extraVolumeMounts: [{ name: hsm-conf, mountPath: /etc/hsm, readOnly: true }]\n";
  const std::string tpm_file = dir + "/tpm.yaml";
  std::ofstream(tpm_file) << "tpm: { enabled: true }\nsupplementalGroups: [113]\n";
  const std::string monitor_file = dir + "/monitor.yaml";
  std::ofstream(monitor_file) << "metrics: { serviceMonitor: { enabled: true, labels: { release: kps } } }\n"
                                 "healthListen: { host: 0.0.0.0 }\n";
  const std::string metrics_listen_file = dir + "/metrics-listen.yaml";
  std::ofstream(metrics_listen_file) << "metrics: { serviceMonitor: { enabled: true } }\n"
                                        "metricsListen: { enabled: true }\n";
  for (const auto& [what, values_file] : {std::pair<std::string, std::string>{"defaults", ""},
                                          {"with overrides", overrides_file},
                                          {"tpm.enabled", tpm_file},
                                          {"metrics.serviceMonitor.enabled", monitor_file},
                                          {"metricsListen.enabled", metrics_listen_file}}) {
    SCOPED_TRACE(what);
    const RunResult out = Shell(ShellQuote(helm) + " template trousseau-hsm " + ShellQuote(kChart.string()) +
                                    " --namespace kube-system --kube-version 1.33.0" +
                                    (values_file.empty() ? "" : " --values " + ShellQuote(values_file)),
                                true);
    ASSERT_EQ(out.code, 0) << out.out;
    // Every object, by kind (one of each): real helm's and ours.
    std::map<std::string, YAML::Node> real, ours;
    for (const YAML::Node& doc : YAML::LoadAll(out.out)) {
      if (doc.IsMap()) real[doc["kind"].as<std::string>("")] = doc;
    }
    const YAML::Node values = values_file.empty() ? YAML::Node() : YAML::LoadFile(values_file);
    for (const auto& [name, text] : RenderChart(kChart.string(), values)) {
      for (const YAML::Node& doc : YAML::LoadAll(text)) {
        if (doc.IsMap()) ours[doc["kind"].as<std::string>("")] = doc;
      }
    }
    ASSERT_TRUE(real.contains("DaemonSet")) << out.out;
    std::set<std::string> real_kinds, our_kinds;
    for (const auto& [kind, doc] : real) real_kinds.insert(kind);
    for (const auto& [kind, doc] : ours) our_kinds.insert(kind);
    ASSERT_EQ(real_kinds, our_kinds);
    for (const auto& [kind, doc] : real) {
      std::string why;
      EXPECT_TRUE(deploy::YamlEqual(doc, ours.at(kind), &why)) << kind << ": " << why;
    }
  }
  fs::remove_all(dir);
}

TEST(DeployTest, EncryptionConfigurationsUseThePluginSocketAndKeepIdentityLast) {
  const YAML::Node pod = LoadOne(kDeploy / "static-pod" / "trousseau-hsm.yaml");
  const std::string static_listen = ArgMap(PluginContainer(pod["spec"])).at("--listen");
  const std::string helm_listen =
      ArgMap(PluginContainer(RenderedDaemonSet()["spec"]["template"]["spec"])).at("--listen");
  for (const auto& [file, resources] :
       {std::pair<std::string, std::set<std::string>>{"encryption-configuration.yaml", {"secrets"}},
        std::pair<std::string, std::set<std::string>>{"encryption-configuration-configmaps.yaml",
                                                      {"secrets", "configmaps"}}}) {
    SCOPED_TRACE(file);
    const YAML::Node config = LoadOne(kDeploy / file);
    EXPECT_EQ(config["apiVersion"].as<std::string>(""), "apiserver.config.k8s.io/v1");
    EXPECT_EQ(config["kind"].as<std::string>(""), "EncryptionConfiguration");
    ASSERT_EQ(config["resources"].size(), 1u);
    const YAML::Node entry = config["resources"][0];
    std::set<std::string> listed;
    for (const YAML::Node& r : entry["resources"]) listed.insert(r.as<std::string>());
    EXPECT_EQ(listed, resources);
    const YAML::Node providers = entry["providers"];
    ASSERT_EQ(providers.size(), 2u) << "rotation needs no second kms provider: the plugin rotates itself";
    const YAML::Node kms = providers[0]["kms"];
    ASSERT_TRUE(kms) << "the first provider encrypts every write: it must be the plugin";
    EXPECT_EQ(kms["apiVersion"].as<std::string>(""), "v2");
    EXPECT_EQ(kms["name"].as<std::string>(""), "trousseau-hsm");
    EXPECT_EQ(kms["name"].as<std::string>("").find(':'), std::string::npos);
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), "unix:///var/run/trousseau-hsm/kms.sock");
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), static_listen);
    EXPECT_EQ(kms["endpoint"].as<std::string>(""), helm_listen);
    EXPECT_EQ(kms["timeout"].as<std::string>(""), "3s");
    EXPECT_FALSE(kms["cachesize"]) << "cachesize is a KMS v1 setting";
    EXPECT_TRUE(providers[1]["identity"].IsDefined()) << "identity last keeps unencrypted data readable";
  }
}

// The provider-migration example: the plugin first (it encrypts every write), the old provider only
// for reads, identity last.
TEST(DeployTest, MigrationExampleWritesThroughThePluginAndOnlyReadsTheOldProvider) {
  const YAML::Node config = LoadOne(kDeploy / "encryption-configuration-migration.yaml");
  EXPECT_EQ(config["kind"].as<std::string>(""), "EncryptionConfiguration");
  ASSERT_EQ(config["resources"].size(), 1u);
  const YAML::Node providers = config["resources"][0]["providers"];
  ASSERT_EQ(providers.size(), 3u);
  const YAML::Node kms = providers[0]["kms"];
  ASSERT_TRUE(kms) << "the first provider encrypts every write: it must be the plugin";
  EXPECT_EQ(kms["apiVersion"].as<std::string>(""), "v2");
  EXPECT_EQ(kms["name"].as<std::string>(""), "trousseau-hsm");
  EXPECT_EQ(kms["endpoint"].as<std::string>(""), "unix:///var/run/trousseau-hsm/kms.sock");
  EXPECT_TRUE(providers[1]["aescbc"].IsDefined()) << "the provider being migrated away from, for reads";
  EXPECT_TRUE(providers[2]["identity"].IsDefined());
}

// One path for kube-apiserver's EncryptionConfiguration wherever an operator reads one (README, docs/,
// deploy/): the Kubernetes encryption-at-rest docs' /etc/kubernetes/enc/enc.yaml, whose directory the
// kube-apiserver pod mounts. Three spellings once sent operators copying from two files to two paths.
TEST(DeployTest, EveryDocumentNamesTheSameEncryptionConfigurationPath) {
  const fs::path project = PROJECT_DIR;
  std::vector<fs::path> files = {project / "README.md"};
  for (const auto& entry : fs::directory_iterator(project / "docs")) {
    if (entry.path().extension() == ".md") files.push_back(entry.path());
  }
  for (const fs::path& path : DeployFiles()) files.push_back(path);
  // --encryption-provider-config=PATH / `encryption-provider-config: PATH` / `value: PATH`, and any
  // /etc/kubernetes/... file whose name says it is an encryption configuration.
  static const std::regex flag(R"(encryption-provider-config[=: ]+\s*([^\s`'"]+))");
  static const std::regex etc_path(R"((/etc/kubernetes/[A-Za-z0-9_./-]*(enc|encryption)[A-Za-z0-9_.-]*\.ya?ml))");
  std::set<std::string> seen;
  int mentions = 0;
  for (const fs::path& path : files) {
    const std::string text = Slurp(path);
    for (const std::regex* re : {&flag, &etc_path}) {
      for (auto it = std::sregex_iterator(text.begin(), text.end(), *re); it != std::sregex_iterator(); ++it) {
        const std::string value = (*it)[1];
        if (value.rfind("/etc/", 0) != 0) continue;  // a relative example file, a placeholder
        ++mentions;
        if (value != "/etc/kubernetes/enc/enc.yaml") ADD_FAILURE() << path << " names " << value;
        seen.insert(value);
      }
    }
  }
  EXPECT_GE(mentions, 5) << "README, docs/kubernetes.md and deploy/ each name the path";
  EXPECT_EQ(seen, std::set<std::string>{"/etc/kubernetes/enc/enc.yaml"});
}

}  // namespace
}  // namespace trousseau::deploy
