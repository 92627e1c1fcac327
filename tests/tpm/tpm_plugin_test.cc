// The trousseau-hsm binary on a TPM 2.0 (a real swtpm), driven over its unix socket as
// kube-apiserver drives it: serving, restart on the same key directory, a foreign TPM, the TPM
// going away mid-run, and live rotation while the plugin runs (by the library and by trousseau-hsm-init).
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/testing/kms_clients.h"
#include "tools/support/subprocess.h"
#include "tests/tpm/swtpm_test.h"
#include "tests/tpm/tabrmd.h"
#include "tpm/provisioning.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::CallContext;
using testing::KmsClients;
using testing::Swtpm;
using testing::Tabrmd;
using testing::TempDir;

const std::string kSeed(32, '\x5a');  // what kube-apiserver sends: a 32-byte seed

class TpmPluginTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    if (HasFatalFailure()) return;
    socket_ = dir_.path() + "/kms.sock";
  }

  tpm::TpmConfig Config(const std::string& tcti) const { return {tcti, key_dir_}; }

  std::string InitKeys(const std::string& tcti) {
    StatusOr<tpm::TpmKeyInfo> v1 = tpm::InitKeyDir(Config(tcti), tpm::kTpmFamilyLabel);
    EXPECT_TRUE(v1.ok()) << v1.status().ToString();
    return v1.ok() ? v1->key_id : "";
  }

  std::unique_ptr<Subprocess> StartPlugin(const std::string& tcti, std::vector<std::string> extra = {},
                                          const std::string& health_cache = "0s") {
    std::vector<std::string> argv = {PLUGIN_PATH,     "--listen", "unix://" + socket_, "--tpm-tcti", tcti,
                                     "--tpm-key-dir", key_dir_,   "--health-cache",    health_cache};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<Subprocess>(argv, dir_.path() + "/plugin.log");
  }

  v2::StatusResponse Status() { return testing::PluginStatus(socket_, 2s); }

  bool Healthy() { return Status().healthz() == "ok"; }

  grpc::Status Encrypt(const std::string& plaintext, v2::EncryptResponse& response) {
    KmsClients clients(socket_);
    v2::EncryptRequest request;
    request.set_plaintext(plaintext);
    request.set_uid("tpm-test");
    return clients.v2->Encrypt(CallContext().get(), request, &response);
  }

  grpc::Status Decrypt(const v2::EncryptResponse& sealed, std::string& plaintext) {
    KmsClients clients(socket_);
    v2::DecryptRequest request;
    request.set_ciphertext(sealed.ciphertext());
    request.set_key_id(sealed.key_id());
    request.set_uid("tpm-test");
    for (const auto& [key, value] : sealed.annotations()) (*request.mutable_annotations())[key] = value;
    v2::DecryptResponse response;
    grpc::Status status = clients.v2->Decrypt(CallContext().get(), request, &response);
    plaintext = response.plaintext();
    return status;
  }

  std::string socket_;
};

TEST_F(TpmPluginTest, ServesKmsV2WithTheKeyIdTheProvisioningPrinted) {
  const std::string key_id = InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin(tpm_->Tcti());
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();

  const v2::StatusResponse status = Status();
  EXPECT_EQ(status.version(), "v2");
  EXPECT_EQ(status.key_id(), key_id);

  v2::EncryptResponse sealed;
  ASSERT_TRUE(Encrypt(kSeed, sealed).ok()) << plugin->Log();
  EXPECT_EQ(sealed.key_id(), key_id);
  EXPECT_EQ(sealed.ciphertext().find(kSeed), std::string::npos);
  EXPECT_LE(sealed.ciphertext().size(), 1024u);
  std::string plaintext;
  ASSERT_TRUE(Decrypt(sealed, plaintext).ok());
  EXPECT_EQ(plaintext, kSeed);

  // A flipped bit is refused as bad input, and the plugin keeps serving.
  v2::EncryptResponse tampered = sealed;
  std::string bytes = tampered.ciphertext();
  bytes[bytes.size() / 2] ^= 0x01;
  tampered.set_ciphertext(bytes);
  EXPECT_EQ(Decrypt(tampered, plaintext).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Healthy());
  EXPECT_NE(plugin->Log().find("TPM 2.0 via TCTI"), std::string::npos) << plugin->Log();
  EXPECT_EQ(plugin->Log().find(kSeed), std::string::npos) << "plaintext must never reach the log";

  plugin->Signal(SIGTERM);
  EXPECT_EQ(plugin->Wait(10s), 0);
}

// A TPM that still answers but fails every command (a chip in failure mode): re-reading the unchanged
// key directory sends it nothing, so the periodic key refresh keeps succeeding. That must not count as
// health: Status stays unhealthy until a real round trip works again.
TEST_F(TpmPluginTest, ATpmInFailureModeStaysUnhealthyThoughKeyRefreshesSucceed) {
  InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin(tpm_->Tcti(), {"--key-refresh-interval", "100ms"}, /*health_cache=*/"300ms");
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();

  ASSERT_TRUE(tpm_->Stop());
  ASSERT_TRUE(Eventually([&] { return !Healthy(); }, 5s)) << plugin->Log();
  v2::EncryptResponse sealed;
  EXPECT_EQ(Encrypt(kSeed, sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  int healthy = 0, polls = 0;
  for (const auto end = std::chrono::steady_clock::now() + 2s; std::chrono::steady_clock::now() < end; ++polls) {
    healthy += Healthy() ? 1 : 0;
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(healthy, 0) << "of " << polls << " Status calls over 20 refresh intervals\n" << plugin->Log();

  ASSERT_TRUE(tpm_->Restart());  // a power cycle, the way out of failure mode: the plugin recovers by itself
  EXPECT_TRUE(Eventually([&] { return Healthy(); }, 15s)) << plugin->Log();
  ASSERT_TRUE(Encrypt(kSeed, sealed).ok()) << plugin->Log();
  std::string plaintext;
  ASSERT_TRUE(Decrypt(sealed, plaintext).ok());
  EXPECT_EQ(plaintext, kSeed);
}
TEST_F(TpmPluginTest, ARestartedPluginOnTheSameKeyDirectoryOpensWhatItSealedBefore) {
  const std::string key_id = InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin(tpm_->Tcti());
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse sealed;
  ASSERT_TRUE(Encrypt(kSeed, sealed).ok());
  plugin->Signal(SIGTERM);
  ASSERT_EQ(plugin->Wait(10s), 0);

  plugin = StartPlugin(tpm_->Tcti());
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  EXPECT_EQ(Status().key_id(), key_id);
  std::string plaintext;
  ASSERT_TRUE(Decrypt(sealed, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
}

TEST_F(TpmPluginTest, AnotherTpmCannotUseTheKeyDirectoryAndThePluginSaysWhy) {
  InitKeys(tpm_->Tcti());
  auto other = Swtpm::Start(dir_.path() + "/other-tpm");  // fresh state: a different TPM
  ASSERT_NE(other, nullptr);
  auto plugin = StartPlugin(other->Tcti());
  // A key policy / configuration error, not a passing outage: exit 2, and never serving.
  EXPECT_EQ(plugin->Wait(30s), 2) << plugin->Log();
  EXPECT_NE(plugin->Log().find("cannot use"), std::string::npos) << plugin->Log();
  EXPECT_FALSE(std::filesystem::exists(socket_));
}

TEST_F(TpmPluginTest, TheTpmGoingAwayIsUnavailableAndThePluginRecoversWhenItReturns) {
  InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin(tpm_->Tcti());
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse sealed;
  ASSERT_TRUE(Encrypt(kSeed, sealed).ok());

  tpm_->Kill();
  std::string plaintext;
  EXPECT_EQ(Decrypt(sealed, plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  const v2::StatusResponse down = Status();
  EXPECT_EQ(down.version(), "v2");  // the plugin still answers, and says it is unhealthy
  EXPECT_NE(down.healthz(), "ok");
  v2::EncryptResponse refused;
  EXPECT_EQ(Encrypt(kSeed, refused).error_code(), grpc::StatusCode::UNAVAILABLE);

  ASSERT_TRUE(tpm_->Restart());  // same TPM state: the same TPM, back
  EXPECT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  ASSERT_TRUE(Decrypt(sealed, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << "the plugin must not exit over a TPM outage";
}

// A TPM that hangs mid-command (swtpm stopped): calls answer UNAVAILABLE at their deadline, Status
// answers at once, SIGTERM ends the process within the grace although the worker is stuck in ESYS,
// and a plugin whose TPM resumes serves again by itself.
TEST_F(TpmPluginTest, AHungTpmCostsOneDeadlineAndNeverHoldsStatusOrShutdown) {
  InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin(tpm_->Tcti(), {"--tpm-timeout", "1s", "--shutdown-grace", "2s"}, "5s");
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse before;
  ASSERT_TRUE(Encrypt(kSeed, before).ok());

  tpm_->Pause();
  v2::EncryptResponse sealed;
  grpc::Status first = Encrypt(kSeed, sealed);
  EXPECT_EQ(first.error_code(), grpc::StatusCode::UNAVAILABLE) << first.error_message();
  grpc::Status second = Encrypt(kSeed, sealed);
  EXPECT_EQ(second.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(second.error_message().find("refused at once"), std::string::npos) << second.error_message();
  KmsClients clients(socket_);
  v2::StatusResponse status;
  ASSERT_TRUE(clients.v2->Status(CallContext(1500ms).get(), {}, &status).ok()) << "Status must not wait on the TPM";
  EXPECT_NE(status.healthz(), "ok");

  tpm_->Resume();
  EXPECT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  std::string plaintext;
  ASSERT_TRUE(Decrypt(before, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);

  tpm_->Pause();
  EXPECT_EQ(Encrypt(kSeed, sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  plugin->Signal(SIGTERM);
  EXPECT_EQ(plugin->Wait(4s), 0) << "the grace is 2 s; a stuck ESYS call must not be joined: " << plugin->Log();
  tpm_->Resume();
}

// A TPM device the plugin cannot open is an outage, not a reason to exit (a supervisor restarting
// the plugin would change nothing): it serves UNAVAILABLE, and Status says why in the OS's words
// (tpm2-tss's own log lines, which would carry the errno, are silenced).
TEST_F(TpmPluginTest, AnUnopenableTpmDeviceIsUnhealthyWithTheReasonAndTheProcessStays) {
  InitKeys(tpm_->Tcti());
  auto plugin = StartPlugin("device:" + dir_.path() + "/no-such-tpmrm0");
  EXPECT_TRUE(Eventually(
      [&] { return Status().healthz().find("no-such-tpmrm0: No such file or directory") != std::string::npos; }, 10s))
      << Status().healthz() << plugin->Log();
  v2::EncryptResponse sealed;
  EXPECT_EQ(Encrypt(kSeed, sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << plugin->Log();
}

// On a node the plugin and trousseau-hsm-init share the TPM through a resource manager
// (/dev/tpmrm0 or tabrmd); here tabrmd in front of the swtpm.
class TpmPluginRotationTest : public TpmPluginTest {
 protected:
  void SetUp() override {
    TpmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    broker_ = Tabrmd::Start(dir_.path(), *tpm_);
    ASSERT_NE(broker_, nullptr) << "tpm2-abrmd did not start";
  }

  struct ToolRun {
    int code = -1;
    std::string output;  // stdout and stderr
  };

  // trousseau-hsm-init `args...` as a child process, as the operator runs it on the node; it reaches the
  // broker through the D-Bus session bus Tabrmd::Start exported to this process's children.
  ToolRun RunTool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    Subprocess tool(args, dir_.path() + "/tool-" + std::to_string(tool_runs_++) + ".log");
    if (!tool.started()) return {-1, std::string("cannot start ") + TOOL_PATH};
    const std::optional<int> code = tool.Wait(60s);  // a hung tool is SIGKILLed by ~Subprocess
    return {code.value_or(-1), code ? tool.Log() : "the tool hung:\n" + tool.Log()};
  }

  std::unique_ptr<Tabrmd> broker_;
  int tool_runs_ = 0;
};

TEST_F(TpmPluginRotationTest, ANewVersionIsActiveAtOnceOnSighupAndOldCiphertextStillOpens) {
  const std::string v1 = InitKeys(broker_->Tcti());
  auto plugin = StartPlugin(broker_->Tcti(), {"--key-refresh-interval", "0"});
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse under_v1;
  ASSERT_TRUE(Encrypt(kSeed, under_v1).ok());

  // Rotated while the plugin holds its own objects in the same TPM.
  StatusOr<tpm::TpmKeyInfo> v2 = tpm::RotateKey(Config(broker_->Tcti()), tpm::kTpmFamilyLabel);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  ASSERT_NE(v2->key_id, v1);
  EXPECT_EQ(Status().key_id(), v1) << "no refresh interval: nothing changes before SIGHUP";

  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Status().key_id() == v2->key_id; }, 5s)) << plugin->Log();
  v2::EncryptResponse under_v2;
  ASSERT_TRUE(Encrypt(kSeed, under_v2).ok());
  EXPECT_EQ(under_v2.key_id(), v2->key_id);

  std::string plaintext;
  ASSERT_TRUE(Decrypt(under_v1, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
  ASSERT_TRUE(Decrypt(under_v2, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
  EXPECT_TRUE(Healthy());
}

// The same rotation as an operator does it: `trousseau-hsm-init tpm rotate --json`, a separate process on
// the shared TPM; the key_id it prints is the one the plugin serves after SIGHUP.
TEST_F(TpmPluginRotationTest, TheToolsRotationIsActiveOnSighupWithTheKeyIdItPrinted) {
  const std::string v1 = InitKeys(broker_->Tcti());
  auto plugin = StartPlugin(broker_->Tcti(), {"--key-refresh-interval", "0"});
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse under_v1;
  ASSERT_TRUE(Encrypt(kSeed, under_v1).ok());

  const ToolRun rotate = RunTool({"tpm", "rotate", "--tpm-tcti", broker_->Tcti(), "--tpm-key-dir", key_dir_, "--json"});
  ASSERT_EQ(rotate.code, 0) << rotate.output;
  const nlohmann::json printed = nlohmann::json::parse(rotate.output, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(printed.is_object() && printed.contains("key_id") && printed["key_id"].is_string())
      << "not the JSON of --json:\n"
      << rotate.output;
  const std::string printed_key_id = printed["key_id"].get<std::string>();
  EXPECT_EQ(printed.value("version", 0), 2) << rotate.output;
  ASSERT_NE(printed_key_id, v1);
  EXPECT_EQ(Status().key_id(), v1) << "no refresh interval: nothing changes before SIGHUP";

  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Status().key_id() == printed_key_id; }, 5s))
      << "Status key_id " << Status().key_id() << ", the tool printed " << printed_key_id << "\n"
      << plugin->Log();
  v2::EncryptResponse under_v2;
  ASSERT_TRUE(Encrypt(kSeed, under_v2).ok()) << plugin->Log();
  EXPECT_EQ(under_v2.key_id(), printed_key_id);

  std::string plaintext;
  ASSERT_TRUE(Decrypt(under_v1, plaintext).ok()) << "made before the rotation: " << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
  ASSERT_TRUE(Decrypt(under_v2, plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, kSeed);
  EXPECT_TRUE(Healthy());
}

TEST_F(TpmPluginRotationTest, ARetiredVersionIsDroppedOnSighupAndItsCiphertextsAreNotFound) {
  InitKeys(broker_->Tcti());
  auto plugin = StartPlugin(broker_->Tcti(), {"--key-refresh-interval", "0"});
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  v2::EncryptResponse under_v1;
  ASSERT_TRUE(Encrypt(kSeed, under_v1).ok());
  StatusOr<tpm::TpmKeyInfo> v2 = tpm::RotateKey(Config(broker_->Tcti()), tpm::kTpmFamilyLabel);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_TRUE(IsFailedPrecondition(tpm::RetireKey(Config(broker_->Tcti()), 2))) << "the active version stays";
  ASSERT_TRUE(tpm::RetireKey(Config(broker_->Tcti()), 1).ok());

  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Status().key_id() == v2->key_id; }, 5s)) << plugin->Log();
  std::string plaintext;
  EXPECT_TRUE(Eventually([&] { return Decrypt(under_v1, plaintext).error_code() == grpc::StatusCode::NOT_FOUND; }, 5s))
      << "retired means unreadable, never a wrong plaintext: " << plugin->Log();
  EXPECT_EQ(Status().healthz(), "ok") << "the plugin keeps serving with the active version: " << plugin->Log();
}

TEST_F(TpmPluginRotationTest, TheRefreshIntervalPicksUpANewVersionWithoutASignal) {
  const std::string v1 = InitKeys(broker_->Tcti());
  auto plugin = StartPlugin(broker_->Tcti(), {"--key-refresh-interval", "1s"});
  ASSERT_TRUE(Eventually([&] { return Healthy(); }, 10s)) << plugin->Log();
  ASSERT_EQ(Status().key_id(), v1);

  StatusOr<tpm::TpmKeyInfo> v2 = tpm::RotateKey(Config(broker_->Tcti()), tpm::kTpmFamilyLabel);
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_TRUE(Eventually([&] { return Status().key_id() == v2->key_id; }, 10s)) << plugin->Log();
}

}  // namespace
}  // namespace trousseau
