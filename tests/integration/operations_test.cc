// What operators watch and configure: the health/metrics HTTP endpoint, JSON logs, the YAML config
// file and TROUSSEAU_HSM_* environment variables, against the real binary on a real SoftHSM token.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tools/support/fault_shim_control.h"
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
using testing::CallContext;
using testing::FreeLoopbackPort;
using testing::HttpGet;
using testing::HttpResponse;
using testing::KmsClients;
using testing::MetricValue;

class OperationsTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    log_ = token_->dir() + "/plugin.log";
    port_ = FreeLoopbackPort();
  }

  // The plugin with exactly `args` (no default flags).
  std::unique_ptr<Subprocess> Start(std::vector<std::string> args) {
    args.insert(args.begin(), PLUGIN_PATH);
    return std::make_unique<Subprocess>(args, log_);
  }

  std::vector<std::string> BaseArgs(const std::string& uri = "") {
    return {"--listen",        "unix://" + socket_,
            "--pkcs11-uri",    uri.empty() ? token_->Uri() : uri,
            "--health-listen", "127.0.0.1:" + std::to_string(port_)};
  }

  bool Serving(const std::string& socket) { return testing::PluginStatus(socket, 500ms).healthz() == "ok"; }

  std::string log_;
  int port_ = 0;
};

TEST_F(OperationsTest, ProbesAnswerAndMetricsCountRequestsByApiOperationAndCode) {
  auto plugin = Start(BaseArgs());
  ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/readyz").code == 200; }, 5s)) << plugin->Log();
  EXPECT_EQ(HttpGet(port_, "/livez").code, 200);
  HttpResponse health = HttpGet(port_, "/healthz");
  EXPECT_EQ(health.code, 200);
  EXPECT_EQ(health.body, "ok\n");

  KmsClients clients(socket_);
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  v2::DecryptRequest decrypt;
  decrypt.set_ciphertext("garbage");
  decrypt.set_key_id(sealed.key_id());
  v2::DecryptResponse opened;
  EXPECT_FALSE(clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok());

  HttpResponse metrics = HttpGet(port_, "/metrics");
  ASSERT_EQ(metrics.code, 200);
  const std::string& m = metrics.body;
  EXPECT_NE(m.find("trousseau_hsm_operations_total{api=\"v2\",code=\"OK\",operation=\"Encrypt\"} 1"), std::string::npos)
      << m;
  EXPECT_NE(m.find("trousseau_hsm_operations_total{api=\"v2\",code=\"INVALID_ARGUMENT\",operation=\"Decrypt\"} 1"),
            std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_operation_duration_seconds_bucket{api=\"v2\",operation=\"Encrypt\",le=\"5e-05\"}"),
            std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_backend_call_duration_seconds_count{backend=\"pkcs11\",call=\"seal\"} 1"),
            std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 1"), std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_active_key_info{key_id=\"" + sealed.key_id() + "\"} 1"), std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_session_pool_sessions{state=\"total\"} 16"), std::string::npos);
  EXPECT_NE(m.find("trousseau_hsm_build_info{"), std::string::npos);
  EXPECT_EQ(HttpGet(port_, "/nothing-here").code, 404);
}

TEST_F(OperationsTest, HealthzIs503WithAReasonWhileTheHsmIsDownAndLivezStays200) {
  const std::string control = token_->dir() + "/shim.control";
  support::WriteShimControl(control, "up");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
  auto args = BaseArgs(token_->Uri("kek", FAULT_SHIM_PATH));
  args.insert(args.end(), {"--health-cache", "100ms"});
  auto plugin = Start(args);
  ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 200; }, 5s)) << plugin->Log();
  support::WriteShimControl(control, "down");
  ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 503; }, 5s));
  HttpResponse down = HttpGet(port_, "/healthz");
  EXPECT_NE(down.body.find("unavailable"), std::string::npos) << down.body;
  EXPECT_EQ(HttpGet(port_, "/livez").code, 200);
  EXPECT_NE(HttpGet(port_, "/metrics").body.find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 0"), std::string::npos);
  support::WriteShimControl(control, "up");
  EXPECT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 200; }, 10s)) << plugin->Log();
}

// An HSM whose crypto engine has failed but which still answers lookups and keeps its sessions (a
// self-test or tamper error state): /healthz, Status and backend_up say down for as long as it lasts,
// across key refreshes (which fail too: the key fingerprint is a GCM operation), and recover after.
TEST_F(OperationsTest, AnHsmThatAnswersLookupsButCannotEncryptIsDownUntilItCanAgain) {
  const std::string control = token_->dir() + "/shim.control";
  auto write_control = [&](const char* words) { support::WriteShimControl(control, words); };
  write_control("up");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
  auto args = BaseArgs(token_->Uri("kek", FAULT_SHIM_PATH));
  args.insert(args.end(), {"--health-cache", "300ms", "--key-refresh-interval", "100ms"});
  auto plugin = Start(args);
  ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 200; }, 5s)) << plugin->Log();
  const std::string before = HttpGet(port_, "/metrics").body;
  EXPECT_NE(before.find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 1"), std::string::npos) << before;

  write_control("crypto_fail");
  ASSERT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 503; }, 5s)) << plugin->Log();
  // Twenty refresh intervals and several cache lifetimes: never healthy.
  int healthy = 0, polls = 0;
  for (const auto end = std::chrono::steady_clock::now() + 2s; std::chrono::steady_clock::now() < end; ++polls) {
    healthy += HttpGet(port_, "/healthz").code == 200 ? 1 : 0;
    healthy += Serving(socket_) ? 1 : 0;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(healthy, 0) << "of " << polls << " polls\n" << plugin->Log();
  const std::string during = HttpGet(port_, "/metrics").body;
  EXPECT_NE(during.find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 0"), std::string::npos) << during;
  EXPECT_GT(MetricValue(during, "trousseau_hsm_key_refresh_total{result=\"failed\"}"),
            MetricValue(before, "trousseau_hsm_key_refresh_total{result=\"failed\"}") + 5)
      << during;

  write_control("up");
  EXPECT_TRUE(Eventually([&] { return HttpGet(port_, "/healthz").code == 200; }, 10s)) << plugin->Log();
}

// A refresh that finds a bad new version (here an extractable key) keeps serving with the last good
// key ring, and says so in the metrics, not only in a log line.
TEST_F(OperationsTest, AFailedKeyRefreshKeepsTheLastGoodRingAndIsCountedInTheMetrics) {
  auto args = BaseArgs();
  args.insert(args.end(), {"--key-refresh-interval", "0"});
  auto plugin = Start(args);
  ASSERT_TRUE(Eventually([&] { return Serving(socket_); }, 5s)) << plugin->Log();
  const std::string before = HttpGet(port_, "/metrics").body;
  EXPECT_NE(before.find("trousseau_hsm_key_refresh_total{result=\"ok\"} 1"), std::string::npos) << before;
  EXPECT_NE(before.find("trousseau_hsm_key_refresh_last_success_timestamp_seconds "), std::string::npos);
  KmsClients clients(socket_);
  v2::StatusResponse v1;
  ASSERT_TRUE(clients.v2->Status(CallContext().get(), {}, &v1).ok());

  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  plugin->Signal(SIGHUP);
  EXPECT_TRUE(Eventually(
      [&] {
        return HttpGet(port_, "/metrics").body.find("trousseau_hsm_key_refresh_total{result=\"failed\"} 1") !=
               std::string::npos;
      },
      5s))
      << plugin->Log();
  v2::StatusResponse after;
  ASSERT_TRUE(clients.v2->Status(CallContext().get(), {}, &after).ok());
  EXPECT_EQ(after.key_id(), v1.key_id()) << "the unsafe version 2 must never become active";
  EXPECT_EQ(after.healthz(), "ok") << "the device works; the last good ring still serves";
  EXPECT_NE(plugin->Log().find("keeping the current key ring"), std::string::npos) << plugin->Log();
}

TEST_F(OperationsTest, JsonLogsAreOneObjectPerLineWithRequestFieldsAndNoPlaintext) {
  auto args = BaseArgs();
  args.insert(args.end(), {"--log-format", "json", "--log-level", "debug"});
  auto plugin = Start(args);
  ASSERT_TRUE(Eventually([&] { return Serving(socket_); }, 5s)) << plugin->Log();
  KmsClients clients(socket_);
  const std::string secret = "JSON-LOG-PLAINTEXT-MARKER";
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext(secret);
  encrypt.set_uid("uid-1234");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  plugin->Signal(SIGTERM);
  ASSERT_EQ(plugin->Wait(10s), 0);

  std::istringstream lines(plugin->Log());
  std::string line;
  int parsed = 0;
  bool saw_request = false;
  while (std::getline(lines, line)) {
    nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(record.is_discarded()) << "not JSON: " << line;
    EXPECT_TRUE(record.contains("ts") && record.contains("level") && record.contains("msg")) << line;
    if (record.value("operation", "") == "Encrypt") {
      saw_request = true;
      EXPECT_EQ(record["uid"], "uid-1234");
      EXPECT_EQ(record["key_id"], sealed.key_id());
      EXPECT_EQ(record["code"], "OK");
      EXPECT_TRUE(record["latency_ms"].is_number()) << line;
      EXPECT_NE(record["level"], "warning") << "the --log-level words: warn";
      EXPECT_NE(record["level"], "critical") << line;
    }
    ++parsed;
  }
  EXPECT_GT(parsed, 3);
  EXPECT_TRUE(saw_request);
  EXPECT_EQ(plugin->Log().find(secret), std::string::npos);
}

TEST_F(OperationsTest, ConfigFileThenEnvironmentThenFlags) {
  const std::string config = token_->dir() + "/config.yaml";
  std::ofstream(config) << "listen: unix://" << token_->dir() << "/from-file.sock\n"
                        << "pkcs11-uri: \"" << token_->Uri() << "\"\n"
                        << "key-refresh-interval: 0\n";
  {
    auto plugin = Start({"--config", config});
    EXPECT_TRUE(Eventually([&] { return Serving(token_->dir() + "/from-file.sock"); }, 5s)) << plugin->Log();
  }
  setenv("TROUSSEAU_HSM_LISTEN", ("unix://" + token_->dir() + "/from-env.sock").c_str(), 1);
  {
    auto plugin = Start({"--config", config});
    EXPECT_TRUE(Eventually([&] { return Serving(token_->dir() + "/from-env.sock"); }, 5s)) << plugin->Log();
  }
  {
    auto plugin = Start({"--config", config, "--listen", "unix://" + token_->dir() + "/from-flag.sock"});
    EXPECT_TRUE(Eventually([&] { return Serving(token_->dir() + "/from-flag.sock"); }, 5s)) << plugin->Log();
  }
  unsetenv("TROUSSEAU_HSM_LISTEN");
}

TEST_F(OperationsTest, ConfigFileWithAnUnknownSettingIsRefused) {
  const std::string config = token_->dir() + "/config.yaml";
  std::ofstream(config) << "pkcs11-uri: \"" << token_->Uri() << "\"\npin: 87654321\n";
  auto plugin = Start({"--config", config});
  EXPECT_EQ(plugin->Wait(10s), 2);
  EXPECT_NE(plugin->Log().find("unknown setting 'pin'"), std::string::npos) << plugin->Log();
}

// A flag in the file takes any YAML boolean; a value that is none is refused, not silently ignored.
TEST_F(OperationsTest, ConfigFileFlagsAreYamlBooleans) {
  const std::string config = token_->dir() + "/config.yaml";
  std::ofstream(config) << "pkcs11-uri: \"" << token_->Uri() << "\"\nno-session-key-copies: yes\n";
  {
    auto plugin = Start({"--config", config, "--listen", "unix://" + socket_});
    ASSERT_TRUE(Eventually([&] { return Serving(socket_); }, 5s)) << plugin->Log();
    // With copies on, this token's non-modifiable key makes the plugin say it cannot copy it.
    EXPECT_EQ(plugin->Log().find("does not copy key version 1"), std::string::npos) << plugin->Log();
  }
  std::ofstream(config) << "pkcs11-uri: \"" << token_->Uri() << "\"\nno-session-key-copies: maybe\n";
  auto refused = Start({"--config", config, "--listen", "unix://" + socket_});
  EXPECT_EQ(refused->Wait(10s), 2);
  EXPECT_NE(refused->Log().find("Could not convert: --no-session-key-copies = maybe"), std::string::npos)
      << refused->Log();
}

// Several --pkcs11-uri (a list in the file, or the flag repeated) are several devices: only multi-node mode
// takes them (docs/ha.md); a setting of one value given a list is refused by name.
TEST_F(OperationsTest, ConfigFileListsAreRepeatedSettingsAndSeveralDevicesNeedARecipientSet) {
  const std::string config = token_->dir() + "/config.yaml";
  std::ofstream(config) << "pkcs11-uri:\n  - \"" << token_->Uri() << "\"\n  - \"" << token_->Uri("other") << "\"\n";
  auto listed = Start({"--config", config, "--listen", "unix://" + socket_});
  EXPECT_EQ(listed->Wait(10s), 2);
  EXPECT_NE(listed->Log().find("several devices need --recipient-set"), std::string::npos) << listed->Log();
  auto repeated =
      Start({"--pkcs11-uri", token_->Uri(), "--pkcs11-uri", token_->Uri("other"), "--listen", "unix://" + socket_});
  EXPECT_EQ(repeated->Wait(10s), 2);
  EXPECT_NE(repeated->Log().find("several devices need --recipient-set"), std::string::npos) << repeated->Log();

  std::ofstream(config) << "pkcs11-uri: \"" << token_->Uri() << "\"\nhealth-cache:\n  seconds: 5\n";
  auto mapping = Start({"--config", config});
  EXPECT_EQ(mapping->Wait(10s), 2);
  EXPECT_NE(mapping->Log().find("setting 'health-cache' must be a value"), std::string::npos) << mapping->Log();

  std::ofstream(config) << "pkcs11-uri: \"" << token_->Uri() << "\"\nlisten:\n  - unix:///a\n  - unix:///b\n";
  auto scalar = Start({"--config", config});
  EXPECT_EQ(scalar->Wait(10s), 2);
  EXPECT_NE(scalar->Log().find("setting 'listen' takes one value, not a list"), std::string::npos) << scalar->Log();

  auto unsigned_mode = Start({"--pkcs11-uri", token_->Uri(), "--recipient-set", token_->dir() + "/set.json"});
  EXPECT_EQ(unsigned_mode->Wait(10s), 2);
  EXPECT_NE(unsigned_mode->Log().find("needs --recipient-admin-key"), std::string::npos) << unsigned_mode->Log();
}

// An unknown flag is named (never its value: it may be a PIN pasted there), with ours for what other KMS
// plugins call it, or the nearest flag we have.
TEST_F(OperationsTest, UnknownFlagsAreNamedWithOursButTheirValuesNeverShown) {
  auto plugin = Start({"--pkcs11-uri", token_->Uri(), "--listen-addr=unix:///x", "--pin", "7391-secret",
                       "--helth-listen", "127.0.0.1:1", "--hunter2-pw=x", "stray-s3cret"});
  EXPECT_EQ(plugin->Wait(10s), 2);
  const std::string log = plugin->Log();
  EXPECT_NE(log.find("unknown flag --listen-addr (its value not shown): ours is --listen"), std::string::npos) << log;
  EXPECT_NE(log.find("unknown flag --pin (its value not shown): a PIN never comes from a flag"), std::string::npos)
      << log;
  EXPECT_NE(log.find("unknown flag --helth-listen (its value not shown): did you mean --health-listen?"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("1 unexpected argument(s) (not shown)"), std::string::npos) << log;
  EXPECT_NE(log.find("an unknown flag (not shown"), std::string::npos) << log;
  for (const char* secret : {"7391-secret", "unix:///x", "stray-s3cret", "127.0.0.1:1", "hunter2"}) {
    EXPECT_EQ(log.find(secret), std::string::npos) << secret << " was echoed:\n" << log;
  }
}

TEST_F(OperationsTest, VersionAndHelp) {
  auto version = Start({"--version"});
  EXPECT_EQ(version->Wait(10s), 0);
  EXPECT_NE(version->Log().find("trousseau-hsm "), std::string::npos);
  auto help = Start({"--help"});
  EXPECT_EQ(help->Wait(10s), 0);
  for (const char* flag : {"--listen", "--pkcs11-uri", "--health-listen", "--log-format", "--config"}) {
    EXPECT_NE(help->Log().find(flag), std::string::npos) << flag;
  }
}

}  // namespace
}  // namespace trousseau
