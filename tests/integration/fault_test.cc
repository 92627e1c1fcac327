// Faults as an operator meets them, against the real plugin process on a real SoftHSM token, with the
// fault-injecting shim in front where a fault must be made or device calls counted:
//   a PIN the token refuses, a token that vanishes and returns, the active key deleted, forged
//   ciphertexts, a health port already taken, and a device that stops answering.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tools/support/fault_shim_control.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tests/testing/local_http.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::HttpGet;

class FaultTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    UseFaultShim();
    call_log_ = token_->dir() + "/calls";
    setenv("TROUSSEAU_FAULT_SHIM_CALL_LOG", call_log_.c_str(), 1);
    port_ = testing::FreeLoopbackPort();
  }
  void TearDown() override { unsetenv("TROUSSEAU_FAULT_SHIM_CALL_LOG"); }

  std::unique_ptr<Subprocess> Start(const std::string& uri, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--health-listen", "127.0.0.1:" + std::to_string(port_), "--log-level", "debug"};
    args.insert(args.end(), extra.begin(), extra.end());
    return StartPlugin(args, uri);
  }
  std::string ShimUri(const std::string& pin_file = "") const {
    std::string uri = SoftHsmPluginTest::ShimUri();
    if (!pin_file.empty()) uri.replace(uri.find("pin-source=file:") + 16, std::string::npos, pin_file);
    return uri;
  }
  // Lines of the shim's call log that start with `function` (every call that reached the module).
  int Calls(const std::string& function) const {
    std::ifstream log(call_log_);
    int count = 0;
    for (std::string line; std::getline(log, line);) count += line.starts_with(function + " ");
    return count;
  }

  std::string Metrics() { return HttpGet(port_, "/metrics").body; }

  std::string call_log_;
  int port_ = 0;
};

// ---- a PIN the token refuses -------------------------------------------------------------------

class RefusedPinTest : public FaultTest {
 protected:
  void SetUp() override {
    FaultTest::SetUp();
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    pin_file_ = token_->dir() + "/operator.pin";
    WritePin("00000000");
  }
  void WritePin(const std::string& pin) {
    const std::string tmp = pin_file_ + ".tmp";
    std::ofstream(tmp) << pin << "\n";
    chmod(tmp.c_str(), 0600);
    std::rename(tmp.c_str(), pin_file_.c_str());
  }
  std::string pin_file_;
};

// A supervisor restarts a process that exits, and each start would be one more login attempt until a
// real HSM locks the PIN. So the plugin stays up, says why, and never tries that PIN again by itself.
TEST_F(RefusedPinTest, KeepsTheProcessUpUnreadyAndNeverTriesThatPinAgain) {
  auto plugin = Start(ShimUri(pin_file_));
  ASSERT_TRUE(Eventually([&] { return Status().healthz().find("CKR_PIN_INCORRECT") != std::string::npos; }, 10s))
      << Status().healthz() << plugin->Log();
  v2::EncryptResponse sealed;
  EXPECT_EQ(Encrypt("seed", sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(HttpGet(port_, "/livez").code, 200) << "nothing must restart it";
  testing::HttpResponse ready = HttpGet(port_, "/readyz");
  EXPECT_EQ(ready.code, 503);
  EXPECT_NE(ready.body.find("PIN"), std::string::npos) << ready.body;
  EXPECT_EQ(ready.body.find("00000000"), std::string::npos);
  // Its retry loop goes round (three retries logged), and not one of them logs in.
  const auto retries = [&] {
    const std::string log = plugin->Log();
    size_t count = 0;
    for (size_t at = log.find("yet (retry)"); at != std::string::npos; at = log.find("yet (retry)", at + 1)) ++count;
    return count;
  };
  ASSERT_TRUE(Eventually([&] { return retries() >= 3; }, 20s)) << plugin->Log();
  EXPECT_EQ(Calls("C_Login"), 1);
  EXPECT_EQ(plugin->Log().find("00000000"), std::string::npos);
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << plugin->Log();

  // The operator fixes the PIN file: noticed without a signal, same process.
  WritePin(support::kTestUserPin);
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin->Log();
  EXPECT_TRUE(Encrypt("seed", sealed).ok());
  EXPECT_EQ(HttpGet(port_, "/readyz").code, 200);
  EXPECT_EQ(Calls("C_Login"), 2);
}

TEST_F(RefusedPinTest, SighupTriesItOnceMore) {
  auto plugin = Start(ShimUri(pin_file_));
  ASSERT_TRUE(Eventually([&] { return Calls("C_Login") == 1; }, 10s)) << plugin->Log();
  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Calls("C_Login") == 2; }, 10s)) << plugin->Log();
  EXPECT_NE(Status().healthz().find("CKR_PIN_INCORRECT"), std::string::npos);
}

// ---- a token that vanishes and comes back ------------------------------------------------------

// Moving SoftHSM's token directory away and back is what a removed and re-inserted token, or a
// restarted network HSM appliance, looks like to the plugin.
TEST_F(FaultTest, AVanishedTokenIsServedAgainWithinSecondsOfItsReturnWithoutARestart) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = Start(token_->Uri());
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin->Log();
  v2::EncryptResponse before;
  ASSERT_TRUE(Encrypt("written before", before).ok());

  const std::string tokens = token_->dir() + "/tokens", away = token_->dir() + "/tokens.away";
  std::filesystem::rename(tokens, away);
  v2::EncryptResponse sealed;
  EXPECT_TRUE(Eventually([&] { return Encrypt("x", sealed).error_code() == grpc::StatusCode::UNAVAILABLE; }, 5s));
  EXPECT_TRUE(Eventually([&] { return Status().healthz() != "ok"; }, 5s));
  EXPECT_EQ(HttpGet(port_, "/livez").code, 200);

  std::filesystem::rename(away, tokens);
  // The prober retries at most every 2 s; a reconnect takes milliseconds.
  std::string plaintext;
  EXPECT_TRUE(Eventually([&] { return Decrypt(before, &plaintext).ok(); }, 5s)) << plugin->Log();
  EXPECT_EQ(plaintext, "written before");
  EXPECT_TRUE(Encrypt("after", sealed).ok());
  EXPECT_EQ(Status().healthz(), "ok");
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << "same process";
}

// ---- the active key deleted ------------------------------------------------------------------

TEST_F(FaultTest, TheFirstFailedUseOfTheActiveKeyMakesHealthUnhealthyAtOnce) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  // A long health TTL: no probe runs meanwhile, so only the failed Encrypt can say it.
  auto plugin = Start(token_->Uri(), {"--health-cache", "10m"});
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin->Log();
  ASSERT_NE(Metrics().find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 1"), std::string::npos);
  ASSERT_TRUE(token_->DestroyKey(1).ok());

  v2::EncryptResponse sealed;
  grpc::Status failed = Encrypt("seed", sealed);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(Status().healthz(), "ok") << "right after the failed Encrypt";
  EXPECT_NE(Metrics().find("trousseau_hsm_backend_up{backend=\"pkcs11\"} 0"), std::string::npos) << Metrics();
  EXPECT_EQ(HttpGet(port_, "/healthz").code, 503);
}

// ---- forged ciphertexts --------------------------------------------------------------------

// A tag that does not verify is the caller's error, answered after one device operation: no probe
// (which would cost an encrypt and a decrypt more, and an IV), no outage.
TEST_F(FaultTest, AForgedCiphertextCostsOneDeviceOperationAndNoProbe) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = Start(ShimUri(), {"--health-cache", "10m"});
  ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin->Log();
  v2::EncryptResponse forged;
  ASSERT_TRUE(Encrypt("genuine seed", forged).ok());
  std::string ciphertext = forged.ciphertext();
  ciphertext.back() ^= 0x01;
  forged.set_ciphertext(ciphertext);

  const int encrypts = Calls("C_EncryptInit"), decrypts = Calls("C_DecryptInit");
  constexpr int kForgeries = 20;
  for (int i = 0; i < kForgeries; ++i) {
    EXPECT_EQ(Decrypt(forged).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_EQ(Calls("C_DecryptInit") - decrypts, kForgeries);
  EXPECT_EQ(Calls("C_EncryptInit") - encrypts, 0) << "a forged ciphertext must not trigger a device probe";
  EXPECT_EQ(Status().healthz(), "ok");
}

// ---- settings and listeners before the first login -----------------------------------------

TEST_F(FaultTest, AHealthPortInUseIsExitTwoBeforeAnyLoginOrSocket) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  const int taken = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  ASSERT_EQ(bind(taken, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(taken, 1), 0);

  auto plugin = Start(ShimUri());
  EXPECT_EQ(plugin->Wait(10s), 2) << plugin->Log();
  close(taken);
  EXPECT_NE(plugin->Log().find("--health-listen 127.0.0.1:" + std::to_string(port_) + ": address already in use"),
            std::string::npos)
      << plugin->Log();
  EXPECT_EQ(Calls("C_Login"), 0) << "a configuration error must not cost a login attempt";
  EXPECT_FALSE(std::filesystem::exists(socket_)) << "the KMS socket must not serve before every listener is bound";
}

// ---- a device that stops answering -----------------------------------------------------------

// A black-holed network HSM does not fail: it stops answering. The shim's "hang" holds every call.
class HungDeviceTest : public FaultTest {
 protected:
  void SetUp() override {
    FaultTest::SetUp();
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    plugin_ = Start(ShimUri(), {"--hsm-timeout", "1s", "--shutdown-grace", "2s"});
    ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin_->Log();
    ASSERT_TRUE(Encrypt("written before", sealed_).ok());
  }
  int Threads() {
    std::ifstream status("/proc/" + std::to_string(plugin_->pid()) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("Threads:")) return std::stoi(line.substr(8));
    }
    return -1;
  }
  std::unique_ptr<Subprocess> plugin_;
  v2::EncryptResponse sealed_;
};

TEST_F(HungDeviceTest, CallsAnswerUnavailableStatusAnswersAtOnceAndServiceReturnsWithTheDevice) {
  support::WriteShimControl(control_, "hang");
  constexpr int kCallers = 64;
  std::atomic<int> unavailable{0}, other{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&] {
      // The client's deadline is longer than the plugin's device deadline: the plugin must answer first.
      grpc::Status status = Decrypt(sealed_, nullptr, 10s);
      ++(status.error_code() == grpc::StatusCode::UNAVAILABLE ? unavailable : other);
    });
  }
  // While they are in flight: Status answers from the health state, within a short client deadline.
  v2::StatusResponse during = Status(1500ms);
  EXPECT_NE(during.healthz(), "<no answer>") << "Status must not wait on the device";
  EXPECT_LE(Threads(), 100) << "threads stay bounded with " << kCallers << " callers";
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(unavailable.load(), kCallers);
  EXPECT_EQ(other.load(), 0);
  // The first timeout opened the breaker: later calls are refused without device work.
  grpc::Status later = Decrypt(sealed_, nullptr, 10s);
  EXPECT_EQ(later.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(later.error_message().find("refused at once"), std::string::npos) << later.error_message();
  EXPECT_NE(Status(1500ms).healthz(), "ok");
  EXPECT_EQ(HttpGet(port_, "/healthz").code, 503);
  EXPECT_EQ(HttpGet(port_, "/livez").code, 200);

  support::WriteShimControl(control_, "up");
  std::string plaintext;
  EXPECT_TRUE(Eventually([&] { return Decrypt(sealed_, &plaintext).ok(); }, 10s)) << plugin_->Log();
  EXPECT_EQ(plaintext, "written before");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s));
}

TEST_F(HungDeviceTest, SigtermEndsTheProcessWithinTheGraceThoughCallsAreStuck) {
  support::WriteShimControl(control_, "hang");
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i) callers.emplace_back([&] { (void)Decrypt(sealed_, nullptr, 10s); });
  for (auto& caller : callers) caller.join();  // each answered UNAVAILABLE; their calls stay in the device
  plugin_->Signal(SIGTERM);
  // --shutdown-grace is 2 s: a process that joined its stuck calls would still run when the wait ends.
  EXPECT_EQ(plugin_->Wait(4s), 0) << plugin_->Log();
  EXPECT_NE(plugin_->Log().find("abandoning"), std::string::npos) << plugin_->Log();
  support::WriteShimControl(control_, "up");
}

}  // namespace
}  // namespace trousseau
