// deploy/systemd: the unit is hardened and starts the plugin as the manifests do; the TPM drop-in opens
// only the TPM; systemd's own tools (systemd-analyze verify and security) accept both.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "tests/deploy/deploy_support.h"
#include "tests/testing/skip_or_fail_in_ci.h"

namespace trousseau::deploy {
namespace {

TEST(DeployTest, SystemdUnitIsHardenedAndMatchesThePlugin) {
  const fs::path unit_path = kDeploy / "systemd" / "trousseau-hsm.service";
  const auto s = UnitSettings(Slurp(unit_path));
  auto get = [&](const std::string& key) { return ServiceSetting(s, key); };
  EXPECT_EQ(get("Type"), "notify");
  EXPECT_EQ(get("ExecReload"), "/bin/kill -HUP $MAINPID");
  EXPECT_EQ(get("Restart"), "on-failure");
  EXPECT_EQ(get("RestartPreventExitStatus"), "2") << "exit 2 = configuration error: restarting cannot help";
  EXPECT_NE(get("User"), "<unset>");
  EXPECT_NE(get("User"), "root");
  EXPECT_EQ(get("NoNewPrivileges"), "yes");
  EXPECT_EQ(get("ProtectSystem"), "strict");
  EXPECT_EQ(get("ProtectHome"), "yes");
  EXPECT_EQ(get("PrivateTmp"), "yes");
  EXPECT_EQ(get("PrivateDevices"), "yes");
  EXPECT_EQ(get("CapabilityBoundingSet"), "");
  EXPECT_EQ(get("RestrictAddressFamilies"), "AF_UNIX AF_INET AF_INET6");
  EXPECT_EQ(get("RuntimeDirectory"), "trousseau-hsm");
  EXPECT_EQ(get("RuntimeDirectoryMode"), "0750");
  EXPECT_EQ(get("RuntimeDirectoryPreserve"), "yes") << "kube-apiserver's mount must survive a plugin restart";
  EXPECT_EQ(get("LimitCORE"), "0");

  // ExecStart: the socket lies in RuntimeDirectory; the config file is the one deploy/systemd ships.
  const auto commands = ShellCommands(get("ExecStart"));
  ASSERT_EQ(commands.size(), 1u);
  std::map<std::string, std::string> args;
  for (size_t i = 1; i + 1 < commands[0].size(); ++i) {
    if (commands[0][i].rfind("--", 0) == 0) args[commands[0][i]] = commands[0][i + 1];
  }
  EXPECT_EQ(args["--listen"], "unix:///run/trousseau-hsm/kms.sock");
  EXPECT_EQ(args["--config"], "/etc/trousseau-hsm/config.yaml");
  const YAML::Node config = LoadOne(kDeploy / "systemd" / "config.yaml");
  EXPECT_FALSE(config["listen"]) << "the unit's --listen would silently win over it";

  // SoftHSM writes its lock files: its token directory must be writable under ProtectSystem=strict.
  std::string softhsm_conf;
  for (auto [it, end] = s.equal_range("Service.Environment"); it != end; ++it) {
    if (it->second.rfind("SOFTHSM2_CONF=", 0) == 0) softhsm_conf = it->second.substr(14);
  }
  EXPECT_EQ(softhsm_conf, "/etc/softhsm/softhsm2.conf");
  EXPECT_NE(get("ReadWritePaths").find("/var/lib/softhsm/tokens"), std::string::npos);
  // The PIN file named in the URI is readable under ProtectSystem=strict (read-only /etc) and not in a
  // hidden home directory.
  const std::string uri = config["pkcs11-uri"].as<std::string>();
  EXPECT_EQ(UriAttribute(uri, "pin-source"), "file:/etc/trousseau-hsm/pin");

  // systemd's own checks, where systemd-analyze exists (no running systemd needed).
  if (!HasCommand("systemd-analyze")) SKIP_OR_FAIL_IN_CI("no systemd-analyze (Debian package systemd)");
  char dir_template[] = "/tmp/deploy-unit-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  std::string unit = Slurp(unit_path);
  unit = std::regex_replace(unit, std::regex("/usr/local/bin/trousseau-hsm"), PLUGIN_PATH);
  std::ofstream(dir + "/trousseau-hsm.service") << unit;
  const RunResult verify = Shell("cd " + ShellQuote(dir) + " && systemd-analyze verify ./trousseau-hsm.service", true);
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_EQ(verify.out.find("Unknown"), std::string::npos) << verify.out;
  // Exposure score (0-10, lower is better): the unit scores 1.5; fail above 2.5.
  const RunResult security = Shell(
      "cd " + ShellQuote(dir) + " && systemd-analyze security --offline=yes --threshold=25 ./trousseau-hsm.service",
      true);
  EXPECT_EQ(security.code, 0) << security.out.substr(security.out.size() > 400 ? security.out.size() - 400 : 0);
  fs::remove_all(dir);
}

// The TPM drop-in: the base unit's hardening stays, only the device, the group and the config change; and
// systemd itself reads the pair without complaint.
TEST(DeployTest, SystemdTpmDropInOpensOnlyTheTpmAndKeepsTheHardening) {
  const std::string unit = Slurp(kDeploy / "systemd" / "trousseau-hsm.service");
  const std::string drop_in = Slurp(kDeploy / "systemd" / "tpm.conf");
  const auto s = UnitSettings(unit + "\n" + drop_in);  // systemd applies drop-ins after the unit
  auto get = [&](const std::string& key) { return ServiceSetting(s, key); };
  EXPECT_EQ(get("PrivateDevices"), "no");
  EXPECT_EQ(get("DevicePolicy"), "closed");
  EXPECT_EQ(get("DeviceAllow"), "/dev/tpmrm0 rw");
  EXPECT_EQ(get("SupplementaryGroups"), "tss");
  EXPECT_EQ(get("ReadWritePaths"), "") << "no SoftHSM token directory on a TPM node";
  for (const char* kept : {"NoNewPrivileges", "ProtectSystem", "CapabilityBoundingSet", "LimitCORE", "Type"}) {
    EXPECT_EQ(UnitSettings(drop_in).count(std::string("Service.") + kept), 0u) << kept << " must stay the unit's";
  }
  const auto commands = ShellCommands(get("ExecStart"));
  ASSERT_EQ(commands.size(), 1u);
  const std::vector<std::string>& argv = commands[0];
  const auto config = std::find(argv.begin(), argv.end(), "--config");
  ASSERT_NE(config, argv.end());
  EXPECT_EQ(*std::next(config), "/etc/trousseau-hsm/config-tpm.yaml");
  const YAML::Node keys = LoadOne(kDeploy / "systemd" / "config-tpm.yaml");
  for (const auto& e : keys) {
    EXPECT_TRUE(PluginCli().flags.contains("--" + e.first.as<std::string>())) << e.first.as<std::string>();
  }
  EXPECT_TRUE(keys["tpm-key-dir"]);
  EXPECT_FALSE(keys["pkcs11-uri"]) << "one backend per file";

  if (!HasCommand("systemd-analyze")) SKIP_OR_FAIL_IN_CI("no systemd-analyze (Debian package systemd)");
  char dir_template[] = "/tmp/deploy-tpm-unit-XXXXXX";
  const std::string dir = mkdtemp(dir_template);
  fs::create_directories(dir + "/trousseau-hsm.service.d");
  std::ofstream(dir + "/trousseau-hsm.service")
      << std::regex_replace(unit, std::regex("/usr/local/bin/trousseau-hsm"), PLUGIN_PATH);
  std::ofstream(dir + "/trousseau-hsm.service.d/tpm.conf")
      << std::regex_replace(drop_in, std::regex("/usr/local/bin/trousseau-hsm"), PLUGIN_PATH);
  const std::string env = "cd " + ShellQuote(dir) + " && SYSTEMD_UNIT_PATH=" + ShellQuote(dir) + ": ";
  const RunResult verify = Shell(env + "systemd-analyze verify trousseau-hsm.service", true);
  EXPECT_EQ(verify.code, 0) << verify.out;
  EXPECT_EQ(verify.out.find("Unknown"), std::string::npos) << verify.out;
  const RunResult security =
      Shell(env + "systemd-analyze security --offline=yes --threshold=25 trousseau-hsm.service", true);
  EXPECT_EQ(security.code, 0) << security.out.substr(security.out.size() > 400 ? security.out.size() - 400 : 0);
  EXPECT_NE(security.out.find("/dev/tpmrm0:rw"), std::string::npos) << "the drop-in must have been read";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace trousseau::deploy
