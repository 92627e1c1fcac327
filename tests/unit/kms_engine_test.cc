// KmsEngine against a real in-memory AES-256-GCM backend (tests/testing/software_backend.h): the
// engine's own rules (key_id checks, tamper detection, the active version's monotonicity, the
// settle read of a new version) without an HSM. The same rules on SoftHSM are in
// tests/integration/kms_service_test.cc.
#include "core/kms_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/envelope.h"
#include "tests/testing/software_backend.h"

namespace trousseau {
namespace {

using testing::SoftwareBackend;

constexpr size_t kMaxCiphertext = 1024;
const std::string kSeed(32, 's');

struct Fixture {
  explicit Fixture(std::chrono::milliseconds settle = std::chrono::milliseconds(0)) {
    backend->AddVersion(1);
    backend->AddVersion(2);
    engine = std::make_unique<KmsEngine>(backend, EngineOptions{.family_label = "kek", .new_version_settle = settle});
  }
  std::string ActiveKeyId() const { return engine->key_ring()->active_key_id(); }

  std::shared_ptr<SoftwareBackend> backend = std::make_shared<SoftwareBackend>();
  std::unique_ptr<KmsEngine> engine;
};

TEST(KmsEngine, EncryptsUnderTheHighestVersionAndDecryptsWithItsKeyId) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->key_id, f.ActiveKeyId());
  EXPECT_EQ(f.engine->key_ring()->active_version(), 2u);
  EXPECT_EQ(sealed->ciphertext.size(), kEnvelopeHeaderSize + f.backend->SealOverhead() + kSeed.size());
  StatusOr<SecureBytes> opened = f.engine->Decrypt(sealed->ciphertext, sealed->key_id);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), kSeed);
  // v1beta1 requests carry no key_id: the header's version decides.
  StatusOr<SecureBytes> opened_v1 = f.engine->Decrypt(sealed->ciphertext, "");
  ASSERT_TRUE(opened_v1.ok()) << opened_v1.status().ToString();
  EXPECT_EQ(opened_v1->view(), kSeed);
}

TEST(KmsEngine, UnknownKeyIdIsNotFound) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  // Right shape, wrong hash: a key_id this ring never issued.
  const std::string unknown = "kek-v2-" + std::string(32, '0');
  StatusOr<SecureBytes> opened = f.engine->Decrypt(sealed->ciphertext, unknown);
  EXPECT_EQ(opened.status().code(), StatusCode::kNotFound) << opened.status().ToString();
  // Never quote a caller-controlled key_id without bounds.
  const std::string huge(5000, 'x');
  StatusOr<SecureBytes> opened_huge = f.engine->Decrypt(sealed->ciphertext, huge);
  EXPECT_EQ(opened_huge.status().code(), StatusCode::kNotFound);
  EXPECT_LT(opened_huge.status().message().size(), 1000u);
}

TEST(KmsEngine, EveryTamperedByteIsInvalidArgumentAndNotIllHealth) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  // Header (magic, format, version), IV, ciphertext and tag: any flipped bit is refused.
  for (size_t i = 0; i < sealed->ciphertext.size(); ++i) {
    std::string forged = sealed->ciphertext;
    forged[i] = static_cast<char>(forged[i] ^ 0x01);
    for (const std::string& key_id : {sealed->key_id, std::string()}) {
      StatusOr<SecureBytes> opened = f.engine->Decrypt(forged, key_id);
      ASSERT_FALSE(opened.ok()) << "byte " << i << " flipped was accepted";
      // A flipped bit in the header's version (bytes 3-10) names a version that is not on the
      // device: with no key_id to compare, that is NOT_FOUND; everything else is bad input.
      if (i >= 3 && i < kEnvelopeHeaderSize && key_id.empty()) {
        EXPECT_EQ(opened.status().code(), StatusCode::kNotFound) << opened.status().ToString();
      } else {
        EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument)
            << "byte " << i << ": " << opened.status().ToString();
      }
    }
  }
  // Truncated and extended envelopes too.
  EXPECT_EQ(f.engine->Decrypt(sealed->ciphertext.substr(0, sealed->ciphertext.size() - 1), sealed->key_id)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(f.engine->Decrypt(sealed->ciphertext + "x", sealed->key_id).status().code(),
            StatusCode::kInvalidArgument);
  // Forgeries are the client's problem, not the device's.
  EXPECT_TRUE(f.engine->Health().ok);
}

TEST(KmsEngine, ActiveVersionNeverFlipsBack) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v2 = f.ActiveKeyId();
  f.backend->RemoveVersion(2);
  const Status reload = f.engine->LoadKeyRing();
  EXPECT_EQ(reload.code(), StatusCode::kFailedPrecondition) << reload.ToString();
  EXPECT_EQ(f.ActiveKeyId(), v2) << "the active key_id flipped back to version 1";
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  // Still v2's key_id: the engine does not pretend version 1 is current. The device says the key is gone.
  EXPECT_EQ(sealed.status().code(), StatusCode::kNotFound) << sealed.status().ToString();

  // A higher version moves it forward; the lower one that comes back does not move it back.
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.engine->key_ring()->active_version(), 3u);
  f.backend->AddVersion(2);
  f.backend->RemoveVersion(3);
  EXPECT_FALSE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.engine->key_ring()->active_version(), 3u);
}

TEST(KmsEngine, FirstLoadReadsOnceWithoutSettling) {
  Fixture f(std::chrono::milliseconds(1));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.backend->load_keys_calls(), 1);
  EXPECT_EQ(f.engine->key_ring()->active_version(), 2u);
  // Nothing new: one read, no settle.
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.backend->load_keys_calls(), 2);
}

TEST(KmsEngine, NewVersionThatStaysThroughTheSettleReadBecomesActive) {
  Fixture f(std::chrono::milliseconds(1));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.backend->load_keys_calls(), 3) << "a new version must be confirmed by a second read";
  EXPECT_EQ(f.engine->key_ring()->active_version(), 3u);
}

TEST(KmsEngine, NewVersionWithdrawnDuringTheSettleIsNeverUsed) {
  Fixture f(std::chrono::milliseconds(1));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v2 = f.ActiveKeyId();
  f.backend->AddVersion(3);
  // Call 2 is the first read of this refresh (it sees version 3); before call 3, the settle read,
  // a rival rotation withdraws version 3.
  f.backend->OnLoadKeys([&](int call) {
    if (call == 3) f.backend->RemoveVersion(3);
  });
  const Status reload = f.engine->LoadKeyRing();
  EXPECT_EQ(reload.code(), StatusCode::kFailedPrecondition) << reload.ToString();
  EXPECT_EQ(f.ActiveKeyId(), v2);
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->key_id, v2);
}

TEST(KmsEngine, NewVersionReplacedDuringTheSettleIsNotTakenOnTheFirstRead) {
  Fixture f(std::chrono::milliseconds(1));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v2 = f.ActiveKeyId();
  f.backend->AddVersion(3);
  // Same version number, different key material by the settle read: a different key_id.
  f.backend->OnLoadKeys([&](int call) {
    if (call == 3) f.backend->AddVersion(3);
  });
  EXPECT_FALSE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.ActiveKeyId(), v2);
}

// The key ring is swapped (LoadKeyRing) while requests run: each request sees one whole ring, so a
// ciphertext always opens under the key_id Encrypt returned with it. Run under TSan by ci/sanitize.
TEST(KmsEngine, KeyRingSwapsDuringLoadNeverMixKeys) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  constexpr int kWorkers = 4;
  constexpr int kCalls = 300;
  constexpr uint64_t kLastVersion = 12;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string seed = "seed-" + std::to_string(w) + "-" + std::to_string(i);
        StatusOr<EncryptResult> sealed = f.engine->Encrypt(seed, kMaxCiphertext);
        if (!sealed.ok()) {
          ++failures;
          continue;
        }
        StatusOr<SecureBytes> opened = f.engine->Decrypt(sealed->ciphertext, sealed->key_id);
        if (!opened.ok() || opened->view() != seed) ++failures;
      }
    });
  }
  threads.emplace_back([&] {
    for (uint64_t v = 3; v <= kLastVersion; ++v) {
      f.backend->AddVersion(v);
      if (!f.engine->LoadKeyRing().ok()) ++failures;
    }
  });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(f.engine->key_ring()->active_version(), kLastVersion);
}

}  // namespace
}  // namespace trousseau
