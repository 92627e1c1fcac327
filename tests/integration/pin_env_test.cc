// TROUSSEAU_HSM_PIN: the plugin takes it out of its environment once read (so /proc/PID/environ and
// child processes no longer hold it), and keeps it only in its own wiped buffer, so a re-login after
// an HSM outage (fault shim: link down, then up) still works.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "hsm/pin_source.h"
#include "tools/support/fault_shim_control.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::CallContext;
using testing::KmsClients;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class PinEnvTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    UseFaultShim();
    // The URI without pin-source: the PIN comes from the environment only.
    uri_ = ShimUri();
    const std::string pin_source = "&pin-source=file:" + token_->pin_file();
    ASSERT_NE(uri_.find(pin_source), std::string::npos) << uri_;
    uri_.erase(uri_.find(pin_source), pin_source.size());
    setenv(hsm::kPinEnvVar, support::kTestUserPin, 1);
    plugin_ = StartPlugin({"--health-cache", "100ms"}, uri_);
    unsetenv(hsm::kPinEnvVar);
    ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s)) << plugin_->Log();
  }

  std::string uri_;
  std::unique_ptr<Subprocess> plugin_;
};

TEST_F(PinEnvTest, TheRunningPluginsEnvironmentNoLongerHoldsThePin) {
  const std::string environ = ReadAll("/proc/" + std::to_string(plugin_->pid()) + "/environ");
  ASSERT_FALSE(environ.empty()) << "cannot read the plugin's /proc/PID/environ";
  // The variables the test set are there, so this is the plugin's environment as it started...
  EXPECT_NE(environ.find("TROUSSEAU_FAULT_SHIM_CONTROL="), std::string::npos);
  // ...but the PIN variable is gone, name and value (the PIN is not a substring of anything else here).
  EXPECT_EQ(environ.find(hsm::kPinEnvVar), std::string::npos);
  EXPECT_EQ(environ.find(support::kTestUserPin), std::string::npos);
}

TEST_F(PinEnvTest, ALoginAfterAnOutageStillUsesTheEnvironmentsPin) {
  KmsClients clients(socket_);
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("sealed-before-the-outage");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok()) << plugin_->Log();

  v2::DecryptRequest decrypt;
  decrypt.set_ciphertext(sealed.ciphertext());
  decrypt.set_key_id(sealed.key_id());
  v2::DecryptResponse opened;
  support::WriteShimControl(control_, "down");
  grpc::Status during = clients.v2->Decrypt(CallContext().get(), decrypt, &opened);
  ASSERT_EQ(during.error_code(), grpc::StatusCode::UNAVAILABLE) << during.error_message() << "\n" << plugin_->Log();
  support::WriteShimControl(control_, "up");
  // Recovery means a fresh C_Initialize, sessions and C_Login: the PIN must still be at hand.
  EXPECT_TRUE(Eventually([&] { return clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok(); }, 10s))
      << plugin_->Log();
  EXPECT_EQ(opened.plaintext(), "sealed-before-the-outage");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s)) << plugin_->Log();
  EXPECT_EQ(plugin_->Log().find("needs a PIN"), std::string::npos) << plugin_->Log();
}

}  // namespace
}  // namespace trousseau
