// deploy/'s configuration files driving a real plugin (on a real SoftHSM token, or a software TPM), and
// the plugin's systemd readiness protocol.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/deploy/deploy_support.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tests/tpm/swtpm.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"
#include "tpm/provisioning.h"

namespace trousseau::deploy {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;

// Against a real plugin on a real SoftHSM token.

class DeployPluginTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    socket_ = token_->dir() + "/run/kms.sock";
    // The socket's directory is the operator's to make (RuntimeDirectory=, a hostPath): the plugin does not.
    ASSERT_TRUE(fs::create_directories(token_->dir() + "/run"));
  }

  // The v2 Status on this test's socket, or on `socket`.
  v2::StatusResponse Status(const std::string& socket = "") const {
    return testing::PluginStatus(socket.empty() ? socket_ : socket);
  }
};

TEST_F(DeployPluginTest, SystemdConfigFileDrivesARealPlugin) {
  const fs::path config = kDeploy / "systemd" / "config.yaml";
  const YAML::Node keys = LoadOne(config);
  ASSERT_TRUE(keys.IsMap());
  for (const auto& e : keys) {
    EXPECT_TRUE(PluginCli().flags.contains("--" + e.first.as<std::string>())) << e.first.as<std::string>();
  }
  ASSERT_TRUE(keys["pkcs11-uri"]) << "the unit passes no --pkcs11-uri: the file must";
  ASSERT_TRUE(keys["health-listen"]);

  // The file as shipped; only the token (URI), the socket and the port are this test's.
  const int port = testing::FreeLoopbackPort();
  Subprocess plugin({PLUGIN_PATH, "--config", config.string(), "--listen", "unix://" + socket_, "--pkcs11-uri",
                     token_->Uri(), "--health-listen", "127.0.0.1:" + std::to_string(port)},
                    token_->dir() + "/plugin.log");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin.Log();
  EXPECT_EQ(testing::HttpGet(port, "/livez").code, 200);
  EXPECT_EQ(testing::HttpGet(port, "/readyz").code, 200);
  // log-format: json came from the file.
  const std::string first_line = Lines(plugin.Log()).at(0);
  EXPECT_NO_THROW(nlohmann::json::parse(first_line)) << first_line;
  plugin.Signal(SIGTERM);
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
}

// The TPM config file as shipped, on a real (software) TPM; only the TPM, key directory, socket and port
// are this test's.
TEST(DeployTpmTest, SystemdTpmConfigFileDrivesARealPluginOnATpm) {
  testing::TempDir dir;
  auto tpm = testing::Swtpm::Start(dir.path() + "/tpm");
  ASSERT_NE(tpm, nullptr);
  const std::string key_dir = dir.path() + "/keys";
  StatusOr<tpm::TpmKeyInfo> v1 = tpm::InitKeyDir({tpm->Tcti(), key_dir}, tpm::kTpmFamilyLabel);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  const std::string socket = dir.path() + "/kms.sock";
  const int port = testing::FreeLoopbackPort();
  Subprocess plugin(
      {PLUGIN_PATH, "--config", (kDeploy / "systemd" / "config-tpm.yaml").string(), "--listen", "unix://" + socket,
       "--tpm-tcti", tpm->Tcti(), "--tpm-key-dir", key_dir, "--health-listen", "127.0.0.1:" + std::to_string(port)},
      dir.path() + "/plugin.log");
  auto status = [&] { return testing::PluginStatus(socket); };
  ASSERT_TRUE(Eventually([&] { return status().healthz() == "ok"; }, 10s)) << plugin.Log();
  EXPECT_EQ(status().key_id(), v1->key_id);
  EXPECT_EQ(testing::HttpGet(port, "/readyz").code, 200);
  EXPECT_EQ(testing::HttpGet(port, "/healthz").code, 200);
  plugin.Signal(SIGTERM);
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
}

// Type=notify: the plugin tells systemd it is ready only once it serves, and that it stops on SIGTERM.
TEST_F(DeployPluginTest, PluginReportsReadinessToSystemd) {
  const std::string notify_path = token_->dir() + "/notify.sock";
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify_path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  auto receive = [&](std::chrono::milliseconds timeout) -> std::string {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(timeout.count())) != 1) return "";
    char buf[1024];
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, n) : "";
  };

  setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
  Subprocess plugin({PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri()},
                    token_->dir() + "/plugin.log");
  unsetenv("NOTIFY_SOCKET");
  const std::string ready = receive(10s);
  EXPECT_NE(ready.find("READY=1"), std::string::npos) << "got: '" << ready << "'\n" << plugin.Log();
  // Ready means serving: Status answers at once, without waiting.
  EXPECT_EQ(Status().healthz(), "ok");
  plugin.Signal(SIGTERM);
  std::string stopping;
  for (int i = 0; i < 5 && stopping.find("STOPPING=1") == std::string::npos; ++i) stopping += receive(5s);
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << stopping;
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
  close(fd);
}

// Why the manifests mount the SoftHSM token directory read-write: with a read-only mount SoftHSM cannot
// take its file locks, and a key version created after the plugin started never shows up (rotation would
// silently not happen). Runs the plugin in a private mount namespace (needs CAP_SYS_ADMIN).
TEST_F(DeployPluginTest, SoftHsmNeedsAWritableTokenDirectory) {
  if (Shell("unshare -m true").code != 0)
    SKIP_OR_FAIL_IN_CI("cannot create a mount namespace here (unshare -m needs root)");
  const std::string tokens = token_->dir() + "/tokens";
  const std::string ro_socket = token_->dir() + "/ro/kms.sock";
  fs::create_directories(token_->dir() + "/ro");
  // Its metrics tell when it has handled the SIGHUP below (a key refresh counted, whatever its result).
  const int ro_port = testing::FreeLoopbackPort();
  const std::string script = "mount --bind " + ShellQuote(tokens) + " " + ShellQuote(tokens) +
                             " && mount -o remount,bind,ro " + ShellQuote(tokens) + " && exec " +
                             ShellQuote(PLUGIN_PATH) + " --listen " + ShellQuote("unix://" + ro_socket) +
                             " --pkcs11-uri " + ShellQuote(token_->Uri()) + " --key-refresh-interval 0" +
                             " --health-listen 127.0.0.1:" + std::to_string(ro_port);
  // The read-only plugin opens the token first and alone: a second SoftHSM opening the same files at that
  // moment is a different, racy experiment.
  Subprocess read_only({"/usr/bin/unshare", "-m", "/bin/sh", "-c", script}, token_->dir() + "/ro.log");
  const bool read_only_served = Eventually([&] { return Status(ro_socket).healthz() == "ok"; }, 10s);
  if (!read_only_served) {
    // Some hosts' SoftHSM does not load a token it cannot lock at all (seen in CI): the same lesson, sooner.
    EXPECT_NE(read_only.Log().find("cannot use PKCS#11 token"), std::string::npos) << read_only.Log();
  } else {
    ASSERT_EQ(Status(ro_socket).key_id().rfind("kek-v1-", 0), 0u);
  }
  Subprocess writable(
      {PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri(), "--key-refresh-interval", "0"},
      token_->dir() + "/rw.log");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << writable.Log();

  auto ro_refreshes = [&] {
    const std::string page = testing::HttpGet(ro_port, "/metrics").body;
    return testing::MetricValue(page, "trousseau_hsm_key_refresh_total{result=\"ok\"}") +
           testing::MetricValue(page, "trousseau_hsm_key_refresh_total{result=\"failed\"}");
  };
  const double ro_refreshes_before = read_only_served ? ro_refreshes() : 0;
  ASSERT_TRUE(token_->GenerateKek(2).ok());  // as `trousseau-hsm-init key rotate` on the host
  read_only.Signal(SIGHUP);
  writable.Signal(SIGHUP);
  EXPECT_TRUE(Eventually([&] { return Status().key_id().rfind("kek-v2-", 0) == 0; }, 5s)) << writable.Log();
  if (read_only_served) {
    // The read-only plugin has finished its refresh (after the settle time a new version would take).
    ASSERT_GE(ro_refreshes_before, 1) << "no key refresh count on the read-only plugin's /metrics";
    ASSERT_TRUE(Eventually([&] { return ro_refreshes() > ro_refreshes_before; }, 10s)) << read_only.Log();
  }
  const std::string read_only_key = Status(ro_socket).key_id();
  if (read_only_served) {
    EXPECT_EQ(read_only_key.rfind("kek-v1-", 0), 0u)
        << "SoftHSM now sees new keys through a read-only token directory: the manifests could mount it "
           "read-only (or the plugin stopped answering)\n"
        << read_only.Log();
  } else {
    EXPECT_EQ(read_only_key, "") << read_only.Log();
  }
}

// deploy/monitoring/: the Grafana dashboard and the Prometheus alert rules query only series a real plugin
// exports. A renamed metric or label would otherwise leave an empty panel and an alert that never fires.

// Every PromQL expression of the dashboard (panel targets, template variable queries) and of the rules.
std::vector<std::string> MonitoringExpressions() {
  std::vector<std::string> exprs;
  const nlohmann::json dashboard = nlohmann::json::parse(Slurp(kDeploy / "monitoring" / "grafana-dashboard.json"));
  for (const nlohmann::json& panel : dashboard.at("panels")) {
    for (const nlohmann::json& target : panel.value("targets", nlohmann::json::array())) {
      exprs.push_back(target.at("expr").get<std::string>());
    }
  }
  for (const nlohmann::json& variable : dashboard.at("templating").at("list")) {
    if (variable.value("type", "") == "query") exprs.push_back(variable.at("definition").get<std::string>());
  }
  const YAML::Node rules = LoadOne(kDeploy / "monitoring" / "alerts.yaml");
  for (const YAML::Node& group : rules["groups"]) {
    for (const YAML::Node& rule : group["rules"]) exprs.push_back(rule["expr"].as<std::string>());
  }
  return exprs;
}

// The backend kinds a plugin reports in `backend` (trousseau_hsm_backend_up, build_info), read from the
// backends' sources: a page from one plugin shows only its own.
std::set<std::string> BackendKinds() {
  const fs::path project = PROJECT_DIR;
  std::set<std::string> kinds;
  static const std::regex kind(
      R"re((?:kPkcs11BackendKind\[\] = |kRecipientBackendKind\[\] = |Kind\(\) const override \{ return )"([a-z0-9]+)")re");
  for (const char* file : {"hsm/pkcs11_backend.h", "tpm/tpm_backend.h", "src/recipients/recipient_backend.h"}) {
    const std::string text = Slurp(project / file);
    for (auto it = std::sregex_iterator(text.begin(), text.end(), kind); it != std::sregex_iterator(); ++it) {
      kinds.insert((*it)[1]);
    }
  }
  return kinds;
}

std::vector<std::string> SplitAlternatives(const std::string& regex) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t bar; (bar = regex.find('|', start)) != std::string::npos; start = bar + 1) {
    parts.push_back(regex.substr(start, bar - start));
  }
  parts.push_back(regex.substr(start));
  return parts;
}

// The page's series: metric name -> label name -> values seen.
std::map<std::string, std::map<std::string, std::set<std::string>>> SeriesOf(const std::string& page) {
  std::map<std::string, std::map<std::string, std::set<std::string>>> series;
  static const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? )");
  static const std::regex label(R"re(([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)")re");
  for (const std::string& line : Lines(page)) {
    std::smatch m;
    if (line.empty() || line[0] == '#' || !std::regex_search(line, m, sample)) continue;
    auto& labels = series[m[1]];
    const std::string set = m[2];
    for (auto it = std::sregex_iterator(set.begin(), set.end(), label); it != std::sregex_iterator(); ++it) {
      labels[(*it)[1]].insert((*it)[2]);
    }
  }
  return series;
}

TEST_F(DeployPluginTest, MonitoringDashboardAndAlertsUseOnlyMetricsThePluginExports) {
  const int port = testing::FreeLoopbackPort();
  Subprocess plugin({PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri(), "--health-listen",
                     "127.0.0.1:" + std::to_string(port)},
                    token_->dir() + "/plugin.log");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin.Log();
  v2::EncryptResponse sealed;
  ASSERT_TRUE(testing::EncryptV2(socket_, std::string(32, '\x5a'), sealed).ok());
  const auto series = SeriesOf(testing::HttpGet(port, "/metrics").body);
  ASSERT_TRUE(series.contains("trousseau_hsm_build_info")) << plugin.Log();
  EXPECT_EQ(BackendKinds(), (std::set<std::string>{"pkcs11", "tpm2", "recipients"}))
      << "the backends' kinds changed: update deploy/monitoring/ and this test";

  // name{matchers}: the name must be on the page; each matcher's label must be one it has, and an
  // equality matcher's value one it takes (instance and job are Prometheus' own).
  static const std::regex selector(R"(([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\})");
  static const std::regex matcher(R"re(([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)")re");
  static const std::regex ours(R"(\btrousseau_hsm_[a-z0-9_]+)");
  int selectors = 0;
  std::set<std::string> names_used;
  for (const std::string& expr : MonitoringExpressions()) {
    SCOPED_TRACE(expr);
    for (auto it = std::sregex_iterator(expr.begin(), expr.end(), ours); it != std::sregex_iterator(); ++it) {
      EXPECT_TRUE(series.contains(it->str())) << it->str() << " is not on the plugin's /metrics";
      names_used.insert(it->str());
    }
    for (auto it = std::sregex_iterator(expr.begin(), expr.end(), selector); it != std::sregex_iterator(); ++it) {
      const std::string name = (*it)[1];
      ++selectors;
      ASSERT_TRUE(series.contains(name)) << name << " is not on the plugin's /metrics";
      const std::string body = (*it)[2];
      for (auto mt = std::sregex_iterator(body.begin(), body.end(), matcher); mt != std::sregex_iterator(); ++mt) {
        const std::string label = (*mt)[1], op = (*mt)[2], value = (*mt)[3];
        if (label == "instance" || label == "job") continue;
        ASSERT_TRUE(series.at(name).contains(label)) << name << " has no label " << label;
        if (label == "backend" && op != "!=" && op != "!~" && value.find('|') != std::string::npos) {
          // A list of backend kinds: each must be one the plugin reports (this page shows only pkcs11's).
          for (const std::string& kind : SplitAlternatives(value)) {
            EXPECT_TRUE(BackendKinds().contains(kind)) << name << ": no backend kind " << kind;
          }
        } else if (op == "=") {
          const bool other_backend = label == "backend" && BackendKinds().contains(value);
          EXPECT_TRUE(series.at(name).at(label).contains(value) || other_backend)
              << name << "{" << label << "=" << value << "}";
        }
      }
    }
  }
  EXPECT_GE(selectors, 20);
  // What the dashboard and the alerts are for (issue 16): requests, errors, latency, device, keys.
  for (const char* needed :
       {"trousseau_hsm_operations_total", "trousseau_hsm_operation_duration_seconds_bucket", "trousseau_hsm_backend_up",
        "trousseau_hsm_key_version_info", "trousseau_hsm_key_refresh_total",
        "trousseau_hsm_key_versions_vanished_total", "trousseau_hsm_backend_call_errors_total"}) {
    EXPECT_TRUE(names_used.contains(needed)) << needed << " is on no panel and in no alert";
  }
  plugin.Signal(SIGTERM);
  EXPECT_EQ(plugin.Wait(15s), 0) << plugin.Log();
}

// The rules load in Prometheus (promtool, from Debian's prometheus package; ci/install-deps installs it),
// and tests/deploy/alerts_test.yaml's series make each alert fire, and not fire, as it should.
TEST(DeployTest, AlertRulesPassPromtool) {
  if (!HasCommand("promtool"))
    SKIP_OR_FAIL_IN_CI("no promtool (Debian package prometheus; ci/install-deps installs it)");
  const std::string rules = (kDeploy / "monitoring" / "alerts.yaml").string();
  const RunResult check = Shell("promtool check rules " + ShellQuote(rules), true);
  EXPECT_EQ(check.code, 0) << check.out;
  const RunResult unit =
      Shell("promtool test rules " + ShellQuote(std::string(PROJECT_DIR) + "/tests/deploy/alerts_test.yaml"), true);
  EXPECT_EQ(unit.code, 0) << unit.out;
}

}  // namespace
}  // namespace trousseau::deploy
