// A key version the running plugin loaded is deleted from the token (as `pkcs11-tool --delete-object`,
// a token that replaced it, or an operator's mistake would): the next refresh (SIGHUP here) is an
// incident, not a silent `result="ok"`: an error log line naming the version and key_id, a counter and
// an info series with the key_id, `/readyz?verbose` lists it, and `trousseauctl status --health-listen`
// shows it. The plugin keeps serving the versions it still has, and readiness does not change. Real
// plugin process, real SoftHSM token, real trousseauctl.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <regex>
#include <sstream>

#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tests/testing/softhsm_plugin_test.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::HttpGet;
using testing::MetricValue;

constexpr char kVanishedTotal[] = "trousseau_hsm_key_versions_vanished_total";

class VanishedKeyTest : public testing::SoftHsmPluginTest {
 protected:
  // The plugin on the token's family `kek`, refreshing only on SIGHUP, with its health endpoint.
  void StartServing(std::vector<std::string> extra = {}) {
    port_ = testing::FreeLoopbackPort();
    std::vector<std::string> args = {"--key-refresh-interval", "0", "--health-listen",
                                     "127.0.0.1:" + std::to_string(port_)};
    args.insert(args.end(), extra.begin(), extra.end());
    plugin_ = StartPlugin(args);
    ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/readyz").code == 200; }, 10s)) << plugin_->Log();
  }

  std::string Metrics() const { return HttpGet(port_, "/metrics").body; }

  // The key_id the plugin shows for `version` in trousseau_hsm_key_version_info ("" if none).
  std::string KeyIdOf(uint64_t version) const {
    std::smatch m;
    const std::string page = Metrics();
    const std::regex series("trousseau_hsm_key_version_info\\{key_id=\"([^\"]+)\",state=\"[a-z_]+\",version=\"" +
                            std::to_string(version) + "\"\\} 1");
    return std::regex_search(page, m, series) ? m[1].str() : "";
  }

  // SIGHUP, then wait until the refresh it causes is counted.
  void RefreshBySighup() {
    const std::string ok = "trousseau_hsm_key_refresh_total{result=\"ok\"}";
    const std::string failed = "trousseau_hsm_key_refresh_total{result=\"failed\"}";
    const std::string before = Metrics();
    const double refreshes = MetricValue(before, ok) + MetricValue(before, failed);
    plugin_->Signal(SIGHUP);
    ASSERT_TRUE(Eventually(
        [&] {
          const std::string page = Metrics();
          return MetricValue(page, ok) + MetricValue(page, failed) > refreshes;
        },
        10s))
        << plugin_->Log();
  }

  // trousseauctl status with the plugin's health endpoint: exit code and output.
  std::pair<int, std::string> CtlStatus(bool json) {
    const std::string log = token_->dir() + "/ctl-" + std::to_string(ctl_runs_++) + ".log";
    std::vector<std::string> argv = {CTL_PATH, "--socket", "unix://" + socket_};
    if (json) argv.push_back("--json");
    argv.insert(argv.end(), {"status", "--health-listen", "127.0.0.1:" + std::to_string(port_)});
    Subprocess ctl(argv, log);
    std::optional<int> code = ctl.Wait(10s);
    return {code.value_or(-1), ctl.Log()};
  }

  int port_ = 0;
  int ctl_runs_ = 0;
  std::unique_ptr<Subprocess> plugin_;
};

TEST_F(VanishedKeyTest, ADecryptOnlyVersionDeletedUnderTheRunningPluginIsAnIncident) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  StartServing();
  const std::string v1 = KeyIdOf(1), v2 = KeyIdOf(2);
  ASSERT_FALSE(v1.empty()) << Metrics();
  ASSERT_FALSE(v2.empty()) << Metrics();
  EXPECT_EQ(MetricValue(Metrics(), kVanishedTotal), 0);
  // Before: trousseauctl lists both versions.
  auto [before_code, before] = CtlStatus(/*json=*/false);
  EXPECT_EQ(before_code, 0) << before;
  EXPECT_NE(before.find("key decrypt-only: " + v1 + " (version 1)"), std::string::npos) << before;
  EXPECT_NE(before.find("key active:       " + v2 + " (version 2)"), std::string::npos) << before;

  ASSERT_TRUE(token_->DestroyKey(1).ok());
  RefreshBySighup();

  // The error line: which version, which key_id, what it means, what to check.
  ASSERT_TRUE(Eventually([&] { return plugin_->Log().find("vanished:") != std::string::npos; }, 5s)) << plugin_->Log();
  const std::string log = plugin_->Log();
  EXPECT_NE(log.find("error key version 1 key_id=" + v1 + " (decrypt-only) vanished: the device no longer lists it"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("Ciphertexts made under key_id=" + v1 + " cannot be decrypted any more"), std::string::npos)
      << log;
  EXPECT_NE(log.find("retired on purpose (`trousseau-hsm-init key retire --version 1`"), std::string::npos) << log;

  // The metric and the series naming the key_id.
  const std::string page = Metrics();
  EXPECT_EQ(MetricValue(page, kVanishedTotal), 1) << page;
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_key_version_vanished_info{key_id=\"" + v1 + "\",version=\"1\"}"), 1)
      << page;

  // trousseauctl shows it, text and JSON; the plugin is still healthy, so exit 0.
  auto [code, text] = CtlStatus(/*json=*/false);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("KEY VANISHED:     " + v1 + " (version 1)"), std::string::npos) << text;
  EXPECT_NE(text.find("key active:       " + v2), std::string::npos) << text;
  EXPECT_EQ(text.find("key decrypt-only: " + v1), std::string::npos) << text;
  auto [json_code, json] = CtlStatus(/*json=*/true);
  EXPECT_EQ(json_code, 0) << json;
  EXPECT_NE(json.find("\"vanished_keys\":[{\"version\":1,\"key_id\":\"" + v1 + "\",\"state\":\"vanished\"}]"),
            std::string::npos)
      << json;

  // The verbose readiness page lists it next to the keys the plugin still holds.
  const auto verbose = HttpGet(port_, "/readyz?verbose");
  EXPECT_NE(verbose.body.find("key vanished: " + v1 +
                              " (version 1): gone from the device, ciphertexts under it cannot be decrypted\n"),
            std::string::npos)
      << verbose.body;
  EXPECT_NE(verbose.body.find("key active: " + v2 + "\n"), std::string::npos) << verbose.body;
  EXPECT_EQ(verbose.body.find("key decrypt-only: " + v1), std::string::npos) << verbose.body;

  // Readiness stays as it was: the plugin still serves with version 2.
  EXPECT_EQ(HttpGet(port_, "/readyz").code, 200);
  v2::EncryptResponse sealed;
  ASSERT_TRUE(Encrypt("seed", sealed).ok());
  EXPECT_EQ(sealed.key_id(), v2);

  // A second refresh is not a second incident.
  RefreshBySighup();
  EXPECT_EQ(MetricValue(Metrics(), kVanishedTotal), 1);
}

TEST_F(VanishedKeyTest, TheActiveVersionDeletedWithNothingNewerIsAnIncidentThoughTheRefreshFails) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  StartServing();
  const std::string v1 = KeyIdOf(1);
  ASSERT_FALSE(v1.empty()) << Metrics();
  ASSERT_TRUE(token_->DestroyKey(1).ok());
  RefreshBySighup();
  ASSERT_TRUE(Eventually([&] { return MetricValue(Metrics(), kVanishedTotal) == 1; }, 5s)) << Metrics();
  EXPECT_NE(plugin_->Log().find("error key version 1 key_id=" + v1 + " (the active key) vanished"), std::string::npos)
      << plugin_->Log();
}

TEST_F(VanishedKeyTest, APendingVersionWithdrawnBeforeItBecameActiveIsNoIncident) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  StartServing({"--key-activation-delay", "1h"});
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  RefreshBySighup();
  ASSERT_FALSE(KeyIdOf(2).empty()) << Metrics();
  EXPECT_EQ(MetricValue(Metrics(), "trousseau_hsm_key_activation_pending"), 1);
  ASSERT_TRUE(token_->DestroyKey(2).ok());  // a rotation's contest withdrew it: nothing was encrypted under it
  RefreshBySighup();
  ASSERT_TRUE(Eventually([&] { return KeyIdOf(2).empty(); }, 5s)) << Metrics();
  EXPECT_EQ(MetricValue(Metrics(), kVanishedTotal), 0) << Metrics();
  EXPECT_NE(plugin_->Log().find("did not stay on the device before it became active"), std::string::npos)
      << plugin_->Log();
  EXPECT_EQ(plugin_->Log().find("vanished:"), std::string::npos) << plugin_->Log();
}

}  // namespace
}  // namespace trousseau
