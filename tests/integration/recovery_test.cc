// An HSM outage and its end, through the fault-injecting PKCS#11 shim: while the link is down the
// plugin answers UNAVAILABLE and Status is not ok; once it is back the plugin recovers without a
// restart (re-initialise, re-open sessions, log in again) and old ciphertexts decrypt again.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdio>
#include <fstream>
#include <thread>

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

class RecoveryTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    UseFaultShim();
    plugin_ = StartPlugin({"--health-cache", "100ms"}, ShimUri());
    ASSERT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s)) << plugin_->Log();
    clients_ = std::make_unique<KmsClients>(socket_);
  }

  std::unique_ptr<Subprocess> plugin_;
  std::unique_ptr<KmsClients> clients_;
};

TEST_F(RecoveryTest, OutageIsUnavailableAndUnhealthyThenRecoversWithoutRestart) {
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed-written-before-the-outage");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());

  SetLink("down");
  std::string plaintext;
  grpc::Status during = Decrypt(sealed, &plaintext);
  EXPECT_EQ(during.error_code(), grpc::StatusCode::UNAVAILABLE) << during.error_message();
  EXPECT_EQ(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  v2::StatusResponse unhealthy = Status();
  EXPECT_NE(unhealthy.healthz(), "ok");
  EXPECT_NE(unhealthy.healthz(), "<no answer>") << "the plugin must keep serving during an outage";
  EXPECT_EQ(unhealthy.key_id(), sealed.key_id()) << "key_id must not change during an outage";
  EXPECT_FALSE(plugin_->Wait(0ms).has_value()) << "the plugin died: " << plugin_->Log();

  SetLink("up");
  EXPECT_TRUE(Eventually([&] { return Decrypt(sealed, &plaintext).ok(); }, 10s)) << plugin_->Log();
  EXPECT_EQ(plaintext, "seed-written-before-the-outage");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s)) << plugin_->Log();
  EXPECT_NE(plugin_->Log().find("reconnected"), std::string::npos) << plugin_->Log();
  // The token (SoftHSM, a non-modifiable key) copies no key into a session: said once, not at every reconnect.
  const std::string log = plugin_->Log();
  size_t said = 0;
  for (size_t at = 0; (at = log.find("does not copy key version 1", at)) != std::string::npos; ++at) ++said;
  EXPECT_EQ(said, 1u) << log;
}

// A bad key put on the token (here an extractable version 2) is refused by the refresh, which keeps the
// last good ring. An outage after that must still end: reconnecting restores that ring and does not
// judge the newcomer again, and a re-created version 1 (new key, old version number) stays out of it.
TEST_F(RecoveryTest, ABadNewKeyOnTheTokenDoesNotStopRecoveryFromAnOutage) {
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  plugin_->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return plugin_->Log().find("it is extractable") != std::string::npos; }, 5s))
      << plugin_->Log();
  EXPECT_EQ(Status().key_id(), sealed.key_id()) << "the refused refresh keeps the last good ring";

  SetLink("down");
  std::string plaintext;
  EXPECT_EQ(Decrypt(sealed, &plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  SetLink("up");
  EXPECT_TRUE(Eventually([&] { return Decrypt(sealed, &plaintext).ok(); }, 10s)) << plugin_->Log();
  EXPECT_EQ(plaintext, "seed");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 5s)) << plugin_->Log();
  v2::EncryptResponse again;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &again).ok());
  EXPECT_EQ(again.key_id(), sealed.key_id()) << "the bad version 2 must not have become active";

  // Version 1 re-created while the link is down: after it, the old key_id no longer opens anything.
  SetLink("down");
  EXPECT_EQ(Decrypt(sealed, &plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(token_->DestroyKey(1).ok());
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  SetLink("up");  // after the swap: a reconnect between the two steps would see version 1 merely gone
  EXPECT_TRUE(Eventually([&] { return Decrypt(sealed, &plaintext).error_code() == grpc::StatusCode::NOT_FOUND; }, 10s))
      << plugin_->Log();
  EXPECT_NE(plugin_->Log().find("version 1 was replaced on the token"), std::string::npos) << plugin_->Log();
  EXPECT_FALSE(plugin_->Wait(0ms).has_value()) << plugin_->Log();
}

// The same with refreshes coming faster than reconnects are tried (a short --key-refresh-interval, or
// SIGHUP in a loop): the refresh itself reconnects to the last good ring, so it cannot keep the plugin
// down by failing over the bad key again and again.
TEST_F(RecoveryTest, FrequentRefreshesWithABadNewKeyDoNotHoldTheOutageOpen) {
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  SetLink("down");
  std::string plaintext;
  EXPECT_EQ(Decrypt(sealed, &plaintext).error_code(), grpc::StatusCode::UNAVAILABLE);
  plugin_->Signal(SIGHUP);
  // The refresh met the outage (not merely: the signal was sent) before the link returns.
  ASSERT_TRUE(Eventually([&] { return plugin_->Log().find("key refresh (SIGHUP) failed") != std::string::npos; }, 5s))
      << plugin_->Log();
  SetLink("up");
  bool recovered = false;
  for (const auto end = std::chrono::steady_clock::now() + 6s; !recovered && std::chrono::steady_clock::now() < end;) {
    plugin_->Signal(SIGHUP);
    std::this_thread::sleep_for(200ms);
    recovered = Decrypt(sealed, &plaintext).ok();
  }
  EXPECT_TRUE(recovered) << plugin_->Log();
  EXPECT_EQ(Status().key_id(), sealed.key_id());
}

// A key refresh (SIGHUP) while the HSM is away fails like any device call: Status is unhealthy, the
// key ring and key_id stay, and once the HSM is back the plugin is healthy again by itself.
TEST_F(RecoveryTest, AKeyRefreshDuringAnOutageKeepsTheRingAndRecovers) {
  const std::string key_id = Status().key_id();
  ASSERT_FALSE(key_id.empty());
  SetLink("down");
  plugin_->Signal(SIGHUP);
  EXPECT_TRUE(Eventually([&] { return plugin_->Log().find("key refresh (SIGHUP) failed") != std::string::npos; }, 5s))
      << plugin_->Log();
  v2::StatusResponse during = Status();
  EXPECT_NE(during.healthz(), "ok");
  EXPECT_EQ(during.key_id(), key_id);
  SetLink("up");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin_->Log();
  EXPECT_EQ(Status().key_id(), key_id);
  // And a refresh after the outage works again: a version added now becomes active on SIGHUP.
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  plugin_->Signal(SIGHUP);
  EXPECT_TRUE(Eventually([&] { return Status().key_id().rfind("kek-v2-", 0) == 0; }, 5s)) << plugin_->Log();
}

TEST_F(RecoveryTest, StatusAloneDrivesRecoveryWhenNoRequestsArrive) {
  SetLink("down");
  EXPECT_TRUE(Eventually([&] { return Status().healthz() != "ok"; }, 5s));
  SetLink("up");
  // kube-apiserver polls Status every 10 s after a failure; that is enough to recover.
  EXPECT_TRUE(Eventually([&] { return Status().healthz() == "ok"; }, 10s)) << plugin_->Log();
}

TEST_F(RecoveryTest, RepeatedOutagesUnderConcurrentLoad) {
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  for (int round = 0; round < 3; ++round) {
    std::atomic<bool> stop{false};
    std::atomic<int> wrong{0};
    std::vector<std::thread> load;
    for (int t = 0; t < 8; ++t) {
      load.emplace_back([&] {
        KmsClients clients(socket_);
        while (!stop) {
          v2::DecryptRequest request;
          request.set_ciphertext(sealed.ciphertext());
          request.set_key_id(sealed.key_id());
          v2::DecryptResponse response;
          grpc::Status s = clients.v2->Decrypt(CallContext().get(), request, &response);
          // Only two outcomes are acceptable: the right plaintext, or UNAVAILABLE.
          if (s.ok() ? response.plaintext() != "seed" : s.error_code() != grpc::StatusCode::UNAVAILABLE) ++wrong;
        }
      });
    }
    std::this_thread::sleep_for(100ms);
    SetLink("down");
    std::this_thread::sleep_for(300ms);
    SetLink("up");
    std::string plaintext;
    EXPECT_TRUE(Eventually([&] { return Decrypt(sealed, &plaintext).ok(); }, 10s)) << "round " << round;
    stop = true;
    for (auto& thread : load) thread.join();
    EXPECT_EQ(wrong.load(), 0) << "round " << round;
  }
  EXPECT_FALSE(plugin_->Wait(0ms).has_value()) << plugin_->Log();
}

}  // namespace
}  // namespace trousseau
