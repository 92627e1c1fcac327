// RecipientBackend under the real KmsEngine: several "nodes" (each its own backend, device and state
// directory) holding one recipient set behave as one cluster. The devices here are in-memory
// (SoftwareRecipient); the same scenarios on swtpm and SoftHSM are in the integration tests.
#include "recipients/recipient_backend.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <iterator>
#include <fstream>
#include <atomic>
#include <memory>
#include <thread>

#include "core/envelope.h"
#include "core/kms_engine.h"
#include "recipients/sealing_key.h"
#include "recipients/set_store.h"
#include "tests/recipients/admin_keys.h"
#include "tests/testing/software_recipient.h"

namespace trousseau {
namespace {

using recipients::RecipientBackend;
using recipients::RecipientSet;
using testing::SoftwareRecipient;

constexpr size_t kMaxCiphertext = 1024;

class Cluster : public ::testing::Test {
 protected:
  struct Node {
    std::vector<std::shared_ptr<SoftwareRecipient>> devices;
    std::shared_ptr<RecipientBackend> backend;
    std::unique_ptr<KmsEngine> engine;
  };

  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("recipient-cluster-" + std::to_string(::getpid()) + "-" +
                                                     ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override {
    nodes_.clear();
    std::filesystem::remove_all(dir_);
  }

  // A node with `devices` local recipient devices; its state directory is its own.
  Node& AddNode(size_t devices = 1, std::chrono::milliseconds retry = std::chrono::hours(1)) {
    const size_t index = nodes_.size();
    auto node = std::make_unique<Node>();
    recipients::RecipientBackendOptions options;
    for (size_t i = 0; i < devices; ++i) {
      node->devices.push_back(std::make_shared<SoftwareRecipient>());
      options.devices.push_back({.name = "device-" + std::to_string(i), .device = node->devices.back()});
    }
    recipients::SetStoreOptions store{.set_file = (dir_ / "set.json").string(),
                                      .state_dir = (dir_ / ("state-" + std::to_string(index))).string(),
                                      .policy = testing::PolicyOf({admin_})};
    options.load_sets = [store](const recipients::SetAdmission& admit) {
      return recipients::LoadAcceptedSets(store, admit);
    };
    options.retry_min = retry;  // by default a device taken out stays out for the test's length
    StatusOr<std::unique_ptr<RecipientBackend>> backend = RecipientBackend::Create(std::move(options));
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    node->backend = *std::move(backend);
    node->engine =
        std::make_unique<KmsEngine>(node->backend, EngineOptions{.family_label = recipients::kRecipientFamilyLabel});
    nodes_.push_back(std::move(node));
    return *nodes_.back();
  }

  // Signs and distributes a set of the given devices' keys.
  void Distribute(uint64_t epoch, const std::vector<std::shared_ptr<SoftwareRecipient>>& members) {
    std::vector<std::string> points;
    for (const auto& m : members) points.push_back(m->public_point());
    std::ofstream(dir_ / "set.json") << recipients::SerializeRecipientSet(
        testing::Signed(testing::MakeSet("prod", epoch, points), {admin_}));
  }

  std::filesystem::path dir_;
  testing::AdminKeyPair admin_ = testing::MakeAdminKey();
  std::vector<std::unique_ptr<Node>> nodes_;
};

TEST_F(Cluster, WhatAnyNodeEncryptsEveryOtherDecryptsUnderOneKeyId) {
  Node& a = AddNode();
  Node& b = AddNode();
  Node& c = AddNode();
  Distribute(1, {a.devices[0], b.devices[0], c.devices[0]});
  for (Node* node : {&a, &b, &c}) ASSERT_TRUE(node->engine->LoadKeyRing().ok());
  const std::string key_id = a.engine->Health().active_key_id;
  EXPECT_EQ(b.engine->Health().active_key_id, key_id) << "kube-apiserver would see stale objects forever otherwise";
  EXPECT_EQ(c.engine->Health().active_key_id, key_id);

  auto computed = [&] {
    return a.devices[0]->shared_secrets_computed() + b.devices[0]->shared_secrets_computed() +
           c.devices[0]->shared_secrets_computed();
  };
  const int before = computed();
  for (Node* writer : {&a, &b, &c}) {
    StatusOr<EncryptResult> sealed = writer->engine->Encrypt("a 32-byte seed from kube-apiserv", kMaxCiphertext);
    ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
    EXPECT_EQ(sealed->key_id, key_id);
    for (Node* reader : {&a, &b, &c}) {
      StatusOr<SecureBytes> opened = reader->engine->Decrypt(sealed->ciphertext, sealed->key_id);
      ASSERT_TRUE(opened.ok()) << opened.status().ToString();
      EXPECT_EQ(opened->view(), "a 32-byte seed from kube-apiserv");
    }
  }
  EXPECT_EQ(computed() - before, 9) << "each Decrypt is one ECDH on the reader's own device, and Encrypt needs none";
}

TEST_F(Cluster, ANodeRemovedInANewEpochCannotOpenNewEnvelopesButOldOnesStillOpenWhereTheirWrapIs) {
  Node& a = AddNode();
  Node& b = AddNode();
  Node& c = AddNode();
  Distribute(1, {a.devices[0], b.devices[0], c.devices[0]});
  for (Node* node : {&a, &b, &c}) ASSERT_TRUE(node->engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> old_envelope = a.engine->Encrypt("sealed under epoch 1", kMaxCiphertext);
  ASSERT_TRUE(old_envelope.ok());

  Distribute(2, {a.devices[0], b.devices[0]});  // c leaves
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  ASSERT_TRUE(b.engine->LoadKeyRing().ok());
  const Status c_load = c.engine->LoadKeyRing();
  EXPECT_EQ(c_load.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(c_load.message().find("none of this node's recipient keys is a member"), std::string::npos)
      << c_load.message();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "state-2" / "epoch-2.json"))
      << "a set the node cannot use is not stored: it would become the lowest epoch the node accepts";
  EXPECT_TRUE(std::filesystem::exists(dir_ / "state-0" / "epoch-2.json"));
  EXPECT_NE(a.engine->Health().active_key_id, old_envelope->key_id) << "a new membership is a new key_id";
  EXPECT_EQ(a.engine->Health().active_key_id, b.engine->Health().active_key_id);

  StatusOr<EncryptResult> new_envelope = b.engine->Encrypt("sealed under epoch 2", kMaxCiphertext);
  ASSERT_TRUE(new_envelope.ok());
  EXPECT_TRUE(a.engine->Decrypt(new_envelope->ciphertext, new_envelope->key_id).ok());
  EXPECT_FALSE(c.engine->Decrypt(new_envelope->ciphertext, new_envelope->key_id).ok())
      << "a removed node opens nothing sealed after it left";
  for (Node* node : {&a, &b, &c}) {
    StatusOr<SecureBytes> opened = node->engine->Decrypt(old_envelope->ciphertext, old_envelope->key_id);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    EXPECT_EQ(opened->view(), "sealed under epoch 1");
  }
}

TEST_F(Cluster, ANodeThatJoinedLaterSaysWhyItCannotOpenWhatWasWrittenBeforeIt) {
  Node& a = AddNode();
  Distribute(1, {a.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> before = a.engine->Encrypt("written before d joined", kMaxCiphertext);
  ASSERT_TRUE(before.ok());
  Node& d = AddNode();
  Distribute(2, {a.devices[0], d.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  ASSERT_TRUE(d.engine->LoadKeyRing().ok());
  const Status refused = d.engine->Decrypt(before->ciphertext, before->key_id).status();
  EXPECT_EQ(refused.code(), StatusCode::kNotFound) << refused.ToString();
}

TEST_F(Cluster, WithTwoLocalDevicesOneDownDecryptsThroughTheOtherAndHealthStaysOk) {
  Node& a = AddNode(/*devices=*/2);
  Node& b = AddNode();
  Distribute(1, {a.devices[0], a.devices[1], b.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  ASSERT_TRUE(b.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = b.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  ASSERT_TRUE(a.engine->Decrypt(sealed->ciphertext, sealed->key_id).ok());

  a.devices[0]->SetUnavailable(true);
  a.devices[1]->SetUnavailable(false);
  for (int i = 0; i < 5; ++i) {
    StatusOr<SecureBytes> opened = a.engine->Decrypt(sealed->ciphertext, sealed->key_id);
    ASSERT_TRUE(opened.ok()) << i << ": " << opened.status().ToString();
  }
  EXPECT_TRUE(a.engine->ProbeNow().ok());
  std::vector<recipients::RecipientDeviceState> states = a.backend->DeviceStates();
  ASSERT_EQ(states.size(), 2u);
  const auto& down = states[0].up ? states[1] : states[0];
  const auto& up = states[0].up ? states[0] : states[1];
  EXPECT_FALSE(down.up);
  EXPECT_NE(down.last_error.find("down"), std::string::npos) << down.last_error;
  EXPECT_TRUE(up.up);
  EXPECT_EQ(up.member_id.rfind("node-", 0), 0u);
  const int asked_down_device = a.devices[0]->calls();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a.engine->Decrypt(sealed->ciphertext, sealed->key_id).ok());
  EXPECT_EQ(a.devices[0]->calls(), asked_down_device) << "a device taken out is not asked again before its backoff";
}

// The only member device down: calls fail UNAVAILABLE at once (no call reaches the dead device, which on an
// HSM would be a reconnect per request), and once its backoff has passed it is asked again and serves.
TEST_F(Cluster, WhenEveryDeviceIsDownCallsFailAtOnceAndTheNodeRecoversByItself) {
  Node& a = AddNode(/*devices=*/1);
  Distribute(1, {a.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = a.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  a.devices[0]->SetUnavailable(true);
  EXPECT_EQ(a.engine->Decrypt(sealed->ciphertext, sealed->key_id).status().code(), StatusCode::kUnavailable);
  const int asked = a.devices[0]->calls();
  EXPECT_FALSE(a.engine->ProbeNow().ok());
  EXPECT_EQ(a.devices[0]->calls(), asked) << "resting: not asked by the probe before its backoff either";

  Node& b = AddNode(/*devices=*/1, /*retry=*/std::chrono::milliseconds(0));
  Distribute(2, {b.devices[0]});
  ASSERT_TRUE(b.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> for_b = b.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(for_b.ok());
  b.devices[0]->SetUnavailable(true);
  EXPECT_EQ(b.engine->Decrypt(for_b->ciphertext, for_b->key_id).status().code(), StatusCode::kUnavailable);
  b.devices[0]->SetUnavailable(false);
  EXPECT_TRUE(b.engine->ProbeNow().ok()) << "its backoff (0 here) has passed: the probe asks it and it serves";
  EXPECT_TRUE(b.engine->Decrypt(for_b->ciphertext, for_b->key_id).ok());
}

TEST_F(Cluster, ADeviceDownSinceTheStartIsTakenInOnceItAnswers) {
  Node& a = AddNode(/*devices=*/2, /*retry=*/std::chrono::milliseconds(0));
  Distribute(1, {a.devices[0], a.devices[1]});
  a.devices[1]->SetUnavailable(true);
  ASSERT_TRUE(a.engine->LoadKeyRing().ok()) << "one device that answers is enough";
  StatusOr<EncryptResult> sealed = a.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());

  a.devices[0]->SetUnavailable(true);
  a.devices[1]->SetUnavailable(false);
  const Status unknown = a.engine->Decrypt(sealed->ciphertext, sealed->key_id).status();
  EXPECT_EQ(unknown.code(), StatusCode::kUnavailable) << "not 'not a member': " << unknown.ToString();
  EXPECT_TRUE(a.engine->ProbeNow().ok()) << "the probe asks the silent device for its key and uses it";
  StatusOr<SecureBytes> opened = a.engine->Decrypt(sealed->ciphertext, sealed->key_id);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed");
}

// Decrypts from several threads while one of the node's two devices keeps failing and coming back, and
// the set is reloaded and probed: every Decrypt is answered by the device that stays up (TSan runs it).
TEST_F(Cluster, ConcurrentDecryptsWhileADeviceFlapsAndTheSetReloads) {
  Node& a = AddNode(/*devices=*/2, /*retry=*/std::chrono::milliseconds(0));
  Distribute(1, {a.devices[0], a.devices[1]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = a.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  std::atomic<bool> stop{false};
  std::atomic<int> opened{0}, failed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&] {
      while (!stop) {
        StatusOr<SecureBytes> plain = a.engine->Decrypt(sealed->ciphertext, sealed->key_id);
        (plain.ok() && plain->view() == "seed" ? opened : failed)++;
      }
    });
  }
  for (int round = 0; round < 50; ++round) {
    a.devices[0]->SetUnavailable(round % 2 == 0);
    EXPECT_TRUE(a.engine->LoadKeyRing().ok());
    EXPECT_TRUE(a.engine->ProbeNow().ok());
    (void)a.backend->DeviceStates();
  }
  stop = true;
  for (std::thread& reader : readers) reader.join();
  EXPECT_GT(opened.load(), 0);
  EXPECT_EQ(failed.load(), 0) << "device 1 never failed, so no Decrypt may";
}

TEST_F(Cluster, AForgedEnvelopeIsInvalidArgumentAndTheNodeKeepsServing) {
  Node& a = AddNode();
  Distribute(1, {a.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = a.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  std::string forged = sealed->ciphertext;
  forged.back() ^= 1;
  EXPECT_EQ(a.engine->Decrypt(forged, sealed->key_id).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(a.engine->Decrypt(sealed->ciphertext, sealed->key_id).ok());
  EXPECT_TRUE(a.engine->Health().ok);
}

// The set is public: anyone who can write etcd could wrap a seed of their own to every member. Only the
// epoch's sealing secret, which members alone can open, makes an envelope acceptable.
TEST_F(Cluster, AnEnvelopeSealedByAnyoneButAMemberIsRefusedBeforeAnyDeviceCall) {
  Node& a = AddNode();
  Node& b = AddNode();
  Distribute(1, {a.devices[0], b.devices[0]});
  for (Node* node : {&a, &b}) ASSERT_TRUE(node->engine->LoadKeyRing().ok());
  const std::string key_id = a.engine->Health().active_key_id;

  // What an attacker can make from the public set file alone: real wraps for every member, any tag.
  std::ifstream file(dir_ / "set.json");
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  StatusOr<RecipientSet> published = recipients::ParseRecipientSet(text);
  ASSERT_TRUE(published.ok());
  const std::string header = EncodeEnvelopeHeader(1, kEnvelopeFormatV3);
  const std::string planted_seed = "a seed the attacker chose, 32 b.";
  StatusOr<std::string> wraps = recipients::SealToSet(*published, planted_seed, header);
  ASSERT_TRUE(wraps.ok());
  // The wraps alone would fool a member's device: without the tag check this envelope would open.
  StatusOr<recipients::ParsedWraps> parsed = recipients::ParseWraps(*published, *wraps, header);
  ASSERT_TRUE(parsed.ok());
  StatusOr<SecureBytes> z = a.devices[0]->RecipientSharedSecret(parsed->ephemeral_point, Deadline::max());
  ASSERT_TRUE(z.ok());
  StatusOr<SecureBytes> opened = recipients::OpenWithSharedSecret(*published, *parsed, 0, *z);
  ASSERT_TRUE(opened.ok());
  ASSERT_EQ(opened->view(), planted_seed);

  const int device_calls = a.devices[0]->calls() + b.devices[0]->calls();
  for (const std::string& tag : {std::string(recipients::kSenderTagSize, '\0'), std::string("0123456789abcdef")}) {
    for (Node* reader : {&a, &b}) {
      const StatusOr<SecureBytes> refused = reader->engine->Decrypt(header + *wraps + tag, key_id);
      EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(refused.status().message().find("sender tag does not verify"), std::string::npos)
          << refused.status().message();
    }
  }
  // Without a tag at all, the last 16 bytes of the body are taken for one: refused alike.
  EXPECT_EQ(a.engine->Decrypt(header + *wraps, key_id).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(a.devices[0]->calls() + b.devices[0]->calls(), device_calls)
      << "a forged envelope is refused before any device is asked";

  // A member's own envelope still opens everywhere, and every bit of its tag counts.
  StatusOr<EncryptResult> genuine = b.engine->Encrypt("sealed by member b", kMaxCiphertext);
  ASSERT_TRUE(genuine.ok());
  EXPECT_TRUE(a.engine->Decrypt(genuine->ciphertext, key_id).ok());
  for (size_t bit = 0; bit < recipients::kSenderTagSize * 8; ++bit) {
    std::string flipped = genuine->ciphertext;
    flipped[flipped.size() - recipients::kSenderTagSize + bit / 8] ^= static_cast<char>(1 << (bit % 8));
    EXPECT_EQ(a.engine->Decrypt(flipped, key_id).status().code(), StatusCode::kInvalidArgument) << "bit " << bit;
  }
  EXPECT_TRUE(a.engine->Health().ok);
}

TEST_F(Cluster, EachNodeOpensAnEpochsSealingKeyOnceAndEncryptThenNeedsNoDevice) {
  Node& a = AddNode();
  Distribute(1, {a.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  const int after_load = a.devices[0]->shared_secrets_computed();
  EXPECT_GE(after_load, 1) << "the load opened the sealing key";
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(a.engine->Encrypt("seed", kMaxCiphertext).ok());
  EXPECT_EQ(a.devices[0]->shared_secrets_computed(), after_load);
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());  // a refresh with the same set keeps the opened key
  EXPECT_EQ(a.devices[0]->shared_secrets_computed(), after_load);
}

TEST_F(Cluster, WhileTheDeviceIsDownAtStartEncryptWaitsForTheSealingKeyAndWorksOnceItAnswers) {
  Node& a = AddNode(1, std::chrono::milliseconds(1));
  Distribute(1, {a.devices[0]});
  ASSERT_TRUE(a.engine->LoadKeyRing().ok()) << "learns the point, opens the sealing key";
  Node& b = AddNode(1, std::chrono::milliseconds(1));
  Distribute(2, {a.devices[0], b.devices[0]});
  b.devices[0]->SetUnavailable(true);
  ASSERT_TRUE(a.engine->LoadKeyRing().ok());
  // b has never seen its device answer: it cannot know it is a member yet.
  EXPECT_FALSE(b.engine->LoadKeyRing().ok());
  b.devices[0]->SetUnavailable(false);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_TRUE(b.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = b.engine->Encrypt("seed", kMaxCiphertext);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_TRUE(a.engine->Decrypt(sealed->ciphertext, sealed->key_id).ok());
}

}  // namespace
}  // namespace trousseau
