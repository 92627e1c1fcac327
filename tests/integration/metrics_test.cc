// What Prometheus and an operator read from a running plugin (issue 16): /metrics on its own
// --metrics-listen, the process_* metrics, each key version's uses and last use (and `trousseau-hsm-init
// key list --health-listen` showing them), and the login failures a refused PIN counts. The real plugin
// process on a real SoftHSM token.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::FreeLoopbackPort;
using testing::HttpGet;
using testing::MetricValue;

double UnixNow() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

class MetricsTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    health_port_ = FreeLoopbackPort();
  }

  std::string Health() const { return "127.0.0.1:" + std::to_string(health_port_); }
  std::string Metrics() const { return HttpGet(health_port_, "/metrics").body; }
  bool Ready() const { return HttpGet(health_port_, "/readyz").code == 200; }

  struct ToolRun {
    int code = -1;
    std::string out, err;
  };
  // trousseau-hsm-init with `args`, its stdout and stderr apart.
  ToolRun RunTool(std::vector<std::string> args) const {
    args.insert(args.begin(), INIT_TOOL_PATH);
    const std::string out = token_->dir() + "/tool.out", err = token_->dir() + "/tool.err";
    std::remove(out.c_str());
    std::remove(err.c_str());
    Subprocess tool(args, Subprocess::SeparateOutput{out, err});
    ToolRun run;
    run.code = tool.Wait(30s).value_or(-1);
    run.out = tool.Log();
    run.err = tool.ErrorLog();
    return run;
  }

  int health_port_ = 0;
};

// --metrics-listen: /metrics there and only there, the probes on --health-listen only.
TEST_F(MetricsTest, MetricsListenServesMetricsAloneAndTheProbesStayOnTheHealthPort) {
  const int metrics_port = FreeLoopbackPort();
  auto plugin =
      StartPlugin({"--health-listen", Health(), "--metrics-listen", "127.0.0.1:" + std::to_string(metrics_port)});
  ASSERT_TRUE(Eventually([&] { return Ready(); }, 10s)) << plugin->Log();
  testing::HttpResponse metrics = HttpGet(metrics_port, "/metrics");
  EXPECT_EQ(metrics.code, 200);
  EXPECT_GE(MetricValue(metrics.body, "trousseau_hsm_backend_up{backend=\"pkcs11\"}"), 1) << metrics.body;
  EXPECT_EQ(HttpGet(health_port_, "/metrics").code, 404);
  for (const char* probe : {"/livez", "/readyz", "/healthz"}) {
    EXPECT_EQ(HttpGet(health_port_, probe).code, 200) << probe;
    EXPECT_EQ(HttpGet(metrics_port, probe).code, 404) << probe;
  }
  EXPECT_NE(plugin->Log().find("metrics endpoint up"), std::string::npos) << plugin->Log();
}

// The same from TROUSSEAU_HSM_METRICS_LISTEN, and alone (no --health-listen): /metrics only.
TEST_F(MetricsTest, MetricsListenFromTheEnvironmentWithoutAHealthPort) {
  const int metrics_port = FreeLoopbackPort();
  setenv("TROUSSEAU_HSM_METRICS_LISTEN", ("127.0.0.1:" + std::to_string(metrics_port)).c_str(), 1);
  auto plugin = StartPlugin();
  unsetenv("TROUSSEAU_HSM_METRICS_LISTEN");
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin->Log();
  EXPECT_EQ(HttpGet(metrics_port, "/metrics").code, 200);
  EXPECT_EQ(HttpGet(metrics_port, "/readyz").code, 404);
}

// One port for both is refused before anything starts, naming both settings (exit 2); so is a wildcard
// address on the health port's port.
TEST_F(MetricsTest, TheHealthPortAsMetricsPortIsRefused) {
  for (const std::string& metrics : {Health(), "0.0.0.0:" + std::to_string(health_port_)}) {
    auto plugin = StartPlugin({"--health-listen", Health(), "--metrics-listen", metrics});
    EXPECT_EQ(plugin->Wait(10s), 2) << plugin->Log();
    EXPECT_NE(
        plugin->Log().find("--metrics-listen " + metrics + " and --health-listen " + Health() + " are the same port"),
        std::string::npos)
        << plugin->Log();
  }
}

// process_* as the Prometheus client libraries name them, with plausible values.
TEST_F(MetricsTest, ProcessMetricsDescribeThePluginProcess) {
  const double before = UnixNow();
  auto plugin = StartPlugin({"--health-listen", Health()});
  ASSERT_TRUE(Eventually([&] { return Ready(); }, 10s)) << plugin->Log();
  const std::string page = Metrics();
  EXPECT_NE(page.find("# TYPE process_cpu_seconds_total counter"), std::string::npos) << page;
  EXPECT_NE(page.find("# TYPE process_open_fds gauge"), std::string::npos);
  const double open_fds = MetricValue(page, "process_open_fds");
  EXPECT_GT(open_fds, 3) << "stdio, the KMS socket and the HTTP listener at least";
  EXPECT_GE(MetricValue(page, "process_max_fds"), open_fds);
  const double start = MetricValue(page, "process_start_time_seconds");
  // /proc/stat's boot time is whole seconds, the start time in clock ticks after it.
  EXPECT_GE(start, before - 2);
  EXPECT_LE(start, UnixNow() + 1);
  const double resident = MetricValue(page, "process_resident_memory_bytes");
  EXPECT_GT(resident, 1 << 20);
  EXPECT_GE(MetricValue(page, "process_virtual_memory_bytes"), resident);
  EXPECT_GE(MetricValue(page, "process_cpu_seconds_total"), 0);
  // The plugin's own CPU time (clock ticks of 10 ms): scraping it makes it grow.
  const double cpu_before = MetricValue(page, "process_cpu_seconds_total");
  EXPECT_TRUE(Eventually([&] { return MetricValue(Metrics(), "process_cpu_seconds_total") > cpu_before; }, 10s));
}

// Each version's uses and last use; `key list --health-listen` shows them, and says so when the plugin
// cannot be reached.
TEST_F(MetricsTest, KeyVersionUsesAreCountedAndKeyListShowsTheLastUse) {
  auto plugin = StartPlugin({"--health-listen", Health(), "--key-refresh-interval", "200ms"});
  ASSERT_TRUE(Eventually([&] { return Ready(); }, 10s)) << plugin->Log();
  EXPECT_EQ(Metrics().find("trousseau_hsm_key_version_uses_total{"), std::string::npos)
      << "no series before a version is used";

  const double before = UnixNow();
  v2::EncryptResponse sealed;
  ASSERT_TRUE(Encrypt("seed", sealed).ok());
  std::string opened;
  ASSERT_TRUE(Decrypt(sealed, &opened).ok());
  v2::EncryptResponse forged = sealed;
  std::string flipped = sealed.ciphertext();
  flipped.back() ^= 0x01;  // always a change (replacing the byte by a fixed one is not, 1 time in 256)
  forged.set_ciphertext(flipped);
  EXPECT_FALSE(Decrypt(forged).ok());  // not served: not a use
  std::string page = Metrics();
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_key_version_uses_total{version=\"1\"}"), 2) << page;
  const double last_use = MetricValue(page, "trousseau_hsm_key_version_last_use_timestamp_seconds{version=\"1\"}");
  EXPECT_GE(last_use, before - 0.01);
  EXPECT_LE(last_use, UnixNow());

  // Version 2 becomes active; version 1 still decrypts what it sealed.
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  ASSERT_TRUE(Eventually([&] { return Status().key_id().starts_with("kek-v2-"); }, 15s)) << plugin->Log();
  v2::EncryptResponse sealed2;
  ASSERT_TRUE(Encrypt("seed 2", sealed2).ok());
  ASSERT_TRUE(Decrypt(sealed).ok());
  page = Metrics();
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_key_version_uses_total{version=\"1\"}"), 3) << page;
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_key_version_uses_total{version=\"2\"}"), 1) << page;

  // A version never used shows as such; the key_ids are checked against the plugin's.
  ASSERT_TRUE(token_->GenerateKek(3).ok());
  ASSERT_TRUE(Eventually([&] { return Status().key_id().starts_with("kek-v3-"); }, 15s)) << plugin->Log();
  ToolRun json = RunTool({"key", "list", "--pkcs11-uri", token_->Uri(), "--health-listen", Health(), "--json"});
  ASSERT_EQ(json.code, 0) << json.out << json.err;
  const nlohmann::json listed = nlohmann::json::parse(json.out);
  EXPECT_EQ(listed["plugin"]["reached"], true) << json.out;
  EXPECT_GE(listed["plugin"]["started"].get<double>(), before - 30);
  ASSERT_EQ(listed["keys"].size(), 3u) << json.out;
  EXPECT_EQ(listed["keys"][0]["last_use"]["known"], true) << json.out;
  EXPECT_EQ(listed["keys"][0]["last_use"]["uses"], 3);
  EXPECT_GE(listed["keys"][0]["last_use"]["timestamp"].get<double>(), before - 1);
  EXPECT_EQ(listed["keys"][1]["last_use"]["uses"], 1);
  EXPECT_EQ(listed["keys"][2]["last_use"]["uses"], 0);
  EXPECT_TRUE(listed["keys"][2]["last_use"]["timestamp"].is_null()) << json.out;

  ToolRun text = RunTool({"key", "list", "--pkcs11-uri", token_->Uri(), "--health-listen", Health()});
  ASSERT_EQ(text.code, 0) << text.out << text.err;
  EXPECT_NE(text.out.find("plugin at " + Health() + ": running since "), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("3 Encrypt/Decrypt(s) since the plugin started"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("last use:   none since the plugin started"), std::string::npos) << text.out;

  // No plugin there: the listing still comes, and says plainly that the last use is unknown.
  const std::string nobody = "127.0.0.1:" + std::to_string(FreeLoopbackPort());
  ToolRun unreached = RunTool({"key", "list", "--pkcs11-uri", token_->Uri(), "--health-listen", nobody});
  ASSERT_EQ(unreached.code, 0) << unreached.out << unreached.err;
  EXPECT_NE(unreached.out.find("plugin at " + nobody + ": NOT REACHED"), std::string::npos) << unreached.out;
  EXPECT_NE(unreached.out.find("last use:   unknown: the plugin at " + nobody + " could not be reached"),
            std::string::npos)
      << unreached.out;
  ToolRun unreached_json =
      RunTool({"key", "list", "--pkcs11-uri", token_->Uri(), "--metrics-listen", nobody, "--json"});
  ASSERT_EQ(unreached_json.code, 0) << unreached_json.err;
  const nlohmann::json none = nlohmann::json::parse(unreached_json.out);
  EXPECT_EQ(none["plugin"]["reached"], false);
  EXPECT_EQ(none["keys"][0]["last_use"]["known"], false);
}

// A PIN the token refuses is counted by reason, and trousseau_hsm_login_pin_rejected says so until a
// login succeeds again (the alert rule's signal).
TEST_F(MetricsTest, ARefusedPinIsCountedAsALoginFailure) {
  const std::string pin_file = token_->dir() + "/operator.pin";
  const auto write_pin = [&](const std::string& pin) {
    const std::string tmp = pin_file + ".tmp";
    std::ofstream(tmp) << pin << "\n";
    chmod(tmp.c_str(), 0600);
    std::rename(tmp.c_str(), pin_file.c_str());
  };
  write_pin("00000000");
  std::string uri = token_->Uri();
  uri.replace(uri.find("pin-source=file:") + 16, std::string::npos, pin_file);
  auto plugin = StartPlugin({"--health-listen", Health()}, uri);
  ASSERT_TRUE(Eventually(
      [&] { return MetricValue(Metrics(), "trousseau_hsm_login_failures_total{reason=\"pin_incorrect\"}") == 1; }, 10s))
      << Metrics() << plugin->Log();
  std::string page = Metrics();
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_login_pin_rejected"), 1) << page;
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_login_failures_total{reason=\"other\"}"), 0);
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_login_failures_total{reason=\"pin_locked\"}"), 0);

  write_pin(support::kTestUserPin);
  ASSERT_TRUE(Eventually([&] { return Ready(); }, 15s)) << plugin->Log();
  page = Metrics();
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_login_pin_rejected"), 0) << page;
  EXPECT_EQ(MetricValue(page, "trousseau_hsm_login_failures_total{reason=\"pin_incorrect\"}"), 1) << page;
}

}  // namespace
}  // namespace trousseau
