// ExpectSecurePluginPod: what the static pods and the Helm DaemonSet must all get right, one job per
// function (security contexts, flags and probes, environment, mounts per backend).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <regex>

#include "tests/deploy/deploy_support.h"

namespace trousseau::deploy {
namespace {

// Where Debian's libsofthsm2 package puts the module on every architecture (a symlink into
// /usr/lib/<multiarch>/softhsm), and so where the image has it.
constexpr char kImageSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";

// Pod-level settings and the plugin container's security context; returns the uid the plugin runs as.
int ExpectHardenedPluginContainer(const YAML::Node& spec, const YAML::Node& c) {
  EXPECT_TRUE(spec["hostNetwork"].as<bool>(false)) << "the health endpoint listens on the node's loopback";
  EXPECT_EQ(spec["priorityClassName"].as<std::string>(""), "system-node-critical");
  EXPECT_FALSE(spec["automountServiceAccountToken"].as<bool>(true)) << "the plugin needs no API credentials";
  EXPECT_EQ(spec["securityContext"]["seccompProfile"]["type"].as<std::string>(""), "RuntimeDefault");

  const YAML::Node sc = c["securityContext"];
  const YAML::Node psc = spec["securityContext"];
  EXPECT_FALSE(sc["allowPrivilegeEscalation"].as<bool>(true));
  EXPECT_TRUE(sc["readOnlyRootFilesystem"].as<bool>(false));
  EXPECT_FALSE(sc["privileged"].as<bool>(false));
  std::vector<std::string> drop, add;
  for (const YAML::Node& d : sc["capabilities"]["drop"]) drop.push_back(d.as<std::string>());
  for (const YAML::Node& a : sc["capabilities"]["add"]) add.push_back(a.as<std::string>());
  EXPECT_NE(std::find(drop.begin(), drop.end(), "ALL"), drop.end());
  EXPECT_TRUE(add.empty()) << "the plugin needs no capability";
  EXPECT_TRUE(sc["runAsNonRoot"].as<bool>(psc["runAsNonRoot"].as<bool>(false)));
  const int uid = sc["runAsUser"].as<int>(psc["runAsUser"].as<int>(0));
  EXPECT_NE(uid, 0);
  return uid;
}

// Init containers (the socket directory's owner) may run as root, with CAP_CHOWN at most.
void ExpectMinimalInitContainers(const YAML::Node& spec, int uid) {
  for (const YAML::Node& init : spec["initContainers"]) {
    const YAML::Node isc = init["securityContext"];
    EXPECT_FALSE(isc["allowPrivilegeEscalation"].as<bool>(true)) << init["name"];
    EXPECT_TRUE(isc["readOnlyRootFilesystem"].as<bool>(false)) << init["name"];
    EXPECT_FALSE(isc["privileged"].as<bool>(false)) << init["name"];
    bool drops_all = false;
    for (const YAML::Node& d : isc["capabilities"]["drop"]) drops_all |= d.as<std::string>() == "ALL";
    EXPECT_TRUE(drops_all) << init["name"];
    for (const YAML::Node& a : isc["capabilities"]["add"]) EXPECT_EQ(a.as<std::string>(), "CHOWN") << init["name"];
    std::string script;
    for (const YAML::Node& w : init["command"]) script += w.as<std::string>() + " ";
    if (script.find("chown") != std::string::npos) {
      EXPECT_NE(script.find("chown " + std::to_string(uid) + ":"), std::string::npos)
          << "the socket directory must go to the plugin's uid " << uid << ": " << script;
      EXPECT_LT(script.find("chmod"), script.find("chown")) << "chmod after chown would need CAP_FOWNER";
    }
  }
}

// The plugin's flags as the manifests pass them, and what they imply for the probes.
struct PluginEndpoints {
  std::string socket_path;
  std::string health_host;
  int health_port = 0;
};

void ReadEndpoints(const std::map<std::string, std::string>& args, PluginEndpoints& out) {
  ASSERT_TRUE(args.contains("--listen"));
  ASSERT_NE(args.contains("--pkcs11-uri"), args.contains("--tpm-key-dir")) << "exactly one backend";
  ASSERT_TRUE(args.contains("--health-listen"));
  const std::string listen = args.at("--listen");
  ASSERT_EQ(listen.rfind("unix:///", 0), 0u) << listen;
  out.socket_path = listen.substr(7);
  const std::string health = args.at("--health-listen");
  out.health_host = health.substr(0, health.rfind(':'));
  out.health_port = std::stoi(health.substr(health.rfind(':') + 1));
  EXPECT_EQ(out.health_host, "127.0.0.1") << "the endpoint has no authentication: loopback only";
  EXPECT_NE(out.health_port, 8080) << "kube-apiserver may use 8080 on the host network";
}

void ExpectProbesAndResources(const YAML::Node& c, const PluginEndpoints& endpoints) {
  // Probes: /livez for start-up and liveness (a device outage, even at start, must not restart the plugin),
  // /readyz for readiness.
  for (const auto& [probe, path] : {std::pair{"startupProbe", "/livez"}, std::pair{"livenessProbe", "/livez"},
                                    std::pair{"readinessProbe", "/readyz"}}) {
    const YAML::Node get = c[probe]["httpGet"];
    ASSERT_TRUE(get) << probe;
    EXPECT_EQ(get["path"].as<std::string>(""), path) << probe;
    EXPECT_EQ(get["host"].as<std::string>(""), endpoints.health_host) << probe;
    EXPECT_EQ(get["port"].as<int>(0), endpoints.health_port) << probe;
  }
  // The start-up probe is what holds liveness back while the process starts (a slow HSM client library):
  // at least 30 s of it, and liveness then needs no initial delay of its own.
  const YAML::Node startup = c["startupProbe"];
  EXPECT_GE(startup["periodSeconds"].as<int>(10) * startup["failureThreshold"].as<int>(3), 30);
  EXPECT_FALSE(c["livenessProbe"]["initialDelaySeconds"].IsDefined()) << "the startupProbe covers start-up";

  // Resources: limits and requests set; the memory limit above the measured VmHWM (up to 29.3 MiB,
  // docs/benchmarks.md) with headroom.
  EXPECT_TRUE(c["resources"]["requests"]["cpu"]);
  EXPECT_TRUE(c["resources"]["requests"]["memory"]);
  EXPECT_GE(MebibytesOf(c["resources"]["limits"]["memory"].as<std::string>("")), 48);
}

// Environment: only variables the plugin knows; never a PIN value. Returns SOFTHSM2_CONF's value, if set.
std::string ExpectKnownEnvironment(const YAML::Node& c) {
  std::string softhsm_conf;
  for (const YAML::Node& e : c["env"]) {
    const std::string name = e["name"].as<std::string>();
    if (name.rfind("TROUSSEAU_HSM_", 0) == 0) {
      EXPECT_TRUE(PluginCli().env.contains(name) || name == "TROUSSEAU_HSM_CONFIG") << name;
      EXPECT_NE(name, "TROUSSEAU_HSM_PIN") << "no PIN in a manifest";
    }
    if (name == "SOFTHSM2_CONF") softhsm_conf = e["value"].as<std::string>();
  }
  return softhsm_conf;
}

// TPM: the key directory from the same host path, read-only (rotation writes it from the host); the
// resource manager device when the TCTI names it, as a character device.
void ExpectTpmMounts(const YAML::Node& spec, const std::map<std::string, std::string>& args,
                     const std::vector<Mount>& mounts) {
  const YAML::Node psc = spec["securityContext"];
  const std::string key_dir = args.at("--tpm-key-dir");
  const Mount* keys = MountFor(mounts, key_dir + "/v000001.aes.pub");
  ASSERT_NE(keys, nullptr) << "TPM key directory not mounted: " << key_dir;
  EXPECT_TRUE(keys->read_only);
  EXPECT_EQ(keys->host_path, key_dir);
  const std::string tcti = args.contains("--tpm-tcti") ? args.at("--tpm-tcti") : "device:/dev/tpmrm0";
  if (tcti.rfind("device:", 0) == 0) {
    const std::string device = tcti.substr(7);
    const Mount* dev = MountFor(mounts, device);
    ASSERT_NE(dev, nullptr) << "TPM device not mounted: " << device;
    EXPECT_EQ(dev->host_type, "CharDevice");
    EXPECT_TRUE(psc["supplementalGroups"].IsSequence() && psc["supplementalGroups"].size() > 0)
        << device << " is root:tss 0660: the pod needs the tss group";
  }
}

// PKCS#11: the PIN file and the module (and where a symlinked module really points) read-only.
void ExpectPkcs11Mounts(const std::map<std::string, std::string>& args, const std::vector<Mount>& mounts) {
  const std::string uri = args.at("--pkcs11-uri");
  EXPECT_EQ(UriAttribute(uri, "pin-value"), "") << "no PIN in the URI";
  const std::string pin_source = UriAttribute(uri, "pin-source");
  ASSERT_EQ(pin_source.rfind("file:/", 0), 0u) << "the PIN must come from a file: " << uri;
  const std::string pin_file = pin_source.substr(5);
  const Mount* pin = MountFor(mounts, pin_file);
  ASSERT_NE(pin, nullptr) << "PIN file not mounted: " << pin_file;
  EXPECT_TRUE(pin->read_only);
  EXPECT_EQ(pin->host_path, pin_file);
  EXPECT_EQ(pin->host_type, "File");

  const std::string module = UriAttribute(uri, "module-path");
  ASSERT_FALSE(module.empty()) << uri;
  const Mount* mod = MountFor(mounts, module);
  if (mod == nullptr) {
    // Not mounted: the image's own SoftHSM module, installed for the image's architecture (amd64, arm64)
    // at the same path on both, so the manifest names no CPU-specific host path.
    EXPECT_EQ(module, kImageSoftHsmModule) << "a module that is not mounted must be the image's SoftHSM";
    EXPECT_NE(Slurp(kDeploy / "Dockerfile").find("ARG WITH_SOFTHSM=true"), std::string::npos)
        << "the image must ship SoftHSM by default";
    for (const Mount& m : mounts) {
      EXPECT_EQ(m.host_path.find("-linux-gnu"), std::string::npos) << "architecture-specific host path " << m.host_path;
    }
    return;
  }
  EXPECT_TRUE(mod->read_only);
  // On this (Debian) host the module path may be a symlink: where it really points must be mounted too,
  // from the same host path, or the container sees a dangling link.
  std::error_code ec;
  const fs::path real = fs::canonical(module, ec);
  if (!ec) {
    const Mount* real_mount = MountFor(mounts, real.string());
    ASSERT_NE(real_mount, nullptr) << module << " resolves to " << real << " on this host, which is not mounted";
    EXPECT_TRUE(real_mount->read_only);
    EXPECT_EQ(real_mount->host_path, real_mount->mount_path);
  }
}

void ExpectSoftHsmConfigurationMounts(const std::string& softhsm_conf, const std::vector<Mount>& mounts) {
  const Mount* conf = MountFor(mounts, softhsm_conf);
  ASSERT_NE(conf, nullptr) << "SOFTHSM2_CONF not mounted: " << softhsm_conf;
  EXPECT_TRUE(conf->read_only);
  EXPECT_EQ(conf->host_type, "File");
  // The token directory that configuration names (as Debian's softhsm2 package ships it, when present
  // here) must be mounted read-write: SoftHSM locks files in it (see SoftHsmNeedsAWritableTokenDirectory).
  std::string token_dir = "/var/lib/softhsm/tokens";
  std::ifstream conf_file(softhsm_conf);
  for (std::string line; std::getline(conf_file, line);) {
    static const std::regex tokendir(R"(^\s*directories\.tokendir\s*=\s*(\S+))");
    std::smatch m;
    if (std::regex_search(line, m, tokendir)) token_dir = m[1];
  }
  const Mount* tokens = MountFor(mounts, token_dir + "/x");
  ASSERT_NE(tokens, nullptr) << "SoftHSM token directory not mounted: " << token_dir;
  EXPECT_FALSE(tokens->read_only) << "SoftHSM needs to lock files in " << token_dir;
}

}  // namespace

void ExpectSecurePluginPod(const YAML::Node& spec, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(spec.IsMap());
  const YAML::Node c = PluginContainer(spec);
  ASSERT_TRUE(c) << "no container named " << kPluginName;
  // Each check below stops at its first fatal failure; so does this function, as the checks depend on it.
  const int uid = ExpectHardenedPluginContainer(spec, c);
  ExpectMinimalInitContainers(spec, uid);

  // Flags (checked against --help in FlagsNamedInDeployAreAcceptedByTheBinaries) and what they imply.
  const std::map<std::string, std::string> args = ArgMap(c);
  PluginEndpoints endpoints;
  ReadEndpoints(args, endpoints);
  if (::testing::Test::HasFatalFailure()) return;
  ExpectProbesAndResources(c, endpoints);
  if (::testing::Test::HasFatalFailure()) return;
  const std::string softhsm_conf = ExpectKnownEnvironment(c);

  // Mounts: the socket directory from the host, read-write, at the same path as on the host (kube-apiserver
  // mounts that path); the PIN file, the module and the SoftHSM configuration read-only.
  const std::vector<Mount> mounts = Mounts(spec, c);
  const std::string socket_path = endpoints.socket_path;
  const std::string socket_dir = fs::path(socket_path).parent_path().string();
  const Mount* sock = MountFor(mounts, socket_path);
  ASSERT_NE(sock, nullptr) << "socket directory not mounted: " << socket_dir;
  EXPECT_EQ(sock->mount_path, socket_dir);
  EXPECT_EQ(sock->host_path, socket_dir);
  EXPECT_EQ(sock->host_type, "DirectoryOrCreate");
  EXPECT_FALSE(sock->read_only);

  if (args.contains("--tpm-key-dir")) {
    ExpectTpmMounts(spec, args, mounts);
  } else {
    ExpectPkcs11Mounts(args, mounts);
  }
  if (::testing::Test::HasFatalFailure()) return;
  if (!softhsm_conf.empty()) ExpectSoftHsmConfigurationMounts(softhsm_conf, mounts);
  if (::testing::Test::HasFatalFailure()) return;

  // SIGTERM drains for --shutdown-grace (5s unless set): the pod must allow more than that.
  const int grace = args.contains("--shutdown-grace") ? std::stoi(args.at("--shutdown-grace")) : 5;
  EXPECT_GT(spec["terminationGracePeriodSeconds"].as<int>(30), grace);
}

}  // namespace trousseau::deploy
