// Two control-plane nodes, as two plugin processes on one SoftHSM token (one network HSM, or
// replicated tokens holding the same keys): a rotation seen by one node first must never make a
// read through the other fail.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::SoftHsmToken;
using support::Subprocess;
using testing::CallContext;
using testing::KmsClients;

struct Node {
  std::string name;
  std::string socket;
  int health_port = 0;
  std::unique_ptr<Subprocess> plugin;
};

class TwoPluginsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateKek(1).ok());
  }

  Node Start(const std::string& name, std::vector<std::string> extra) {
    Node node{name, token_->dir() + "/" + name + "/kms.sock", testing::FreeLoopbackPort(), nullptr};
    mkdir((token_->dir() + "/" + name).c_str(), 0700);
    std::vector<std::string> argv = {PLUGIN_PATH,
                                     "--listen",
                                     "unix://" + node.socket,
                                     "--pkcs11-uri",
                                     token_->Uri(),
                                     "--health-listen",
                                     "127.0.0.1:" + std::to_string(node.health_port)};
    argv.insert(argv.end(), extra.begin(), extra.end());
    node.plugin = std::make_unique<Subprocess>(argv, token_->dir() + "/" + name + ".log");
    return node;
  }

  static std::string KeyId(const Node& node) {
    KmsClients clients(node.socket);
    v2::StatusResponse status;
    if (!clients.v2->Status(CallContext(500ms).get(), {}, &status).ok() || status.healthz() != "ok") return "";
    return status.key_id();
  }

  // Encrypts through `writer` and decrypts through `reader`, as a Secret written through one
  // apiserver and read through another. False (and why, in `failure`) if either step fails.
  static bool WriteThenRead(const Node& writer, const Node& reader, int i, std::string& key_id, std::string& failure) {
    KmsClients to_writer(writer.socket), to_reader(reader.socket);
    v2::EncryptRequest encrypt;
    encrypt.set_uid("uid-" + std::to_string(i));
    encrypt.set_plaintext("seed-" + std::to_string(i));
    v2::EncryptResponse sealed;
    grpc::Status s = to_writer.v2->Encrypt(CallContext().get(), encrypt, &sealed);
    if (!s.ok()) {
      failure = writer.name + " Encrypt: " + s.error_message();
      return false;
    }
    v2::DecryptRequest decrypt;
    decrypt.set_ciphertext(sealed.ciphertext());
    decrypt.set_key_id(sealed.key_id());
    decrypt.set_uid(encrypt.uid());
    v2::DecryptResponse opened;
    s = to_reader.v2->Decrypt(CallContext().get(), decrypt, &opened);
    if (!s.ok() || opened.plaintext() != encrypt.plaintext()) {
      failure = reader.name + " Decrypt of " + sealed.key_id() + ": " + s.error_message();
      return false;
    }
    key_id = sealed.key_id();
    return true;
  }

  static double Metric(const Node& node, const std::string& series) {
    return testing::MetricValue(testing::HttpGet(node.health_port, "/metrics").body, series);
  }

  std::unique_ptr<SoftHsmToken> token_;
};

// The reported failure: node A takes a new version on SIGHUP, node B would only on its next refresh
// (60 s by default), and until then every read through B of what A wrote was NOT_FOUND.
TEST_F(TwoPluginsTest, WhatTheNodeThatRotatedFirstWritesReadsThroughTheOtherAtOnce) {
  Node a = Start("a", {"--key-refresh-interval", "0"});
  Node b = Start("b", {"--key-refresh-interval", "0"});
  ASSERT_TRUE(Eventually([&] { return !KeyId(a).empty() && !KeyId(b).empty(); }, 10s))
      << a.plugin->Log() << b.plugin->Log();
  const std::string v1 = KeyId(a);
  ASSERT_EQ(KeyId(b), v1);

  ASSERT_TRUE(token_->GenerateKek(2).ok());
  a.plugin->Signal(SIGHUP);  // only A: B has no refresh interval, so only a Decrypt can teach it
  ASSERT_TRUE(Eventually([&] { return KeyId(a).rfind("kek-v2-", 0) == 0; }, 10s)) << a.plugin->Log();
  int failures = 0;
  std::string last_failure, key_id;
  for (int i = 0; i < 20; ++i) {
    if (!WriteThenRead(a, b, i, key_id, last_failure)) ++failures;
  }
  EXPECT_EQ(failures, 0) << last_failure << "\n" << b.plugin->Log();
  EXPECT_EQ(key_id, KeyId(a));
  EXPECT_EQ(Metric(b, "trousseau_hsm_decrypt_key_miss_total{outcome=\"found\"}"), 1)
      << "B reloaded once, on the first read under version 2";
  EXPECT_EQ(KeyId(b), v1) << "a Decrypt's reload does not activate: B still encrypts under version 1";
  // Both directions work: what B still writes under version 1, A reads.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(WriteThenRead(b, a, i, key_id, last_failure)) << last_failure;
  EXPECT_EQ(key_id, v1);
}

// With the activation delay, neither node encrypts under a version before both hold it, and both
// switch: traffic in both directions through the whole rotation has no failure, and their
// /readyz?verbose key lines agree at the end.
TEST_F(TwoPluginsTest, WithAnActivationDelayBothNodesHoldAVersionBeforeEitherEncryptsUnderIt) {
  const std::vector<std::string> flags = {"--key-refresh-interval", "1s", "--key-activation-delay", "3s"};
  Node a = Start("a", flags);
  Node b = Start("b", flags);
  ASSERT_TRUE(Eventually([&] { return !KeyId(a).empty() && !KeyId(b).empty(); }, 10s))
      << a.plugin->Log() << b.plugin->Log();
  const std::string v1 = KeyId(a);

  ASSERT_TRUE(token_->GenerateKek(2).ok());
  a.plugin->Signal(SIGHUP);
  int failures = 0, rounds = 0;
  std::string last_failure, key_id;
  bool b_held_v2_before_anyone_used_it = true;
  const bool switched = Eventually(
      [&] {
        ++rounds;
        for (const auto& [writer, reader] : {std::pair{&a, &b}, std::pair{&b, &a}}) {
          if (!WriteThenRead(*writer, *reader, rounds, key_id, last_failure)) ++failures;
          if (key_id.rfind("kek-v2-", 0) == 0 &&
              Metric(b, "trousseau_hsm_key_version_info{key_id=\"" + key_id +
                            "\",state=\"decrypt_only\",version=\"2\"}") != 1 &&
              Metric(b, "trousseau_hsm_key_version_info{key_id=\"" + key_id + "\",state=\"active\",version=\"2\"}") !=
                  1) {
            b_held_v2_before_anyone_used_it = false;
          }
        }
        return KeyId(a).rfind("kek-v2-", 0) == 0 && KeyId(b).rfind("kek-v2-", 0) == 0;
      },
      15s);
  EXPECT_TRUE(switched) << a.plugin->Log() << b.plugin->Log();
  EXPECT_EQ(failures, 0) << last_failure;
  EXPECT_GT(rounds, 2);
  EXPECT_TRUE(b_held_v2_before_anyone_used_it);
  const std::string a_keys = testing::HttpGet(a.health_port, "/readyz?verbose").body;
  EXPECT_EQ(a_keys, testing::HttpGet(b.health_port, "/readyz?verbose").body);
  EXPECT_NE(a_keys.find("key active: " + KeyId(a)), std::string::npos) << a_keys;
  EXPECT_NE(a_keys.find("key decrypt-only: " + v1), std::string::npos) << a_keys;
}

}  // namespace
}  // namespace trousseau
