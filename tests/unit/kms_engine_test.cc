// KmsEngine against a real in-memory AES-256-GCM backend (tests/testing/software_backend.h): the
// engine's own rules (key_id checks, tamper detection, the active version's monotonicity, the
// settle read of a new version, health and the circuit breaker) without an HSM. The same rules on SoftHSM are in
// tests/integration/kms_service_test.cc.
#include "core/kms_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
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

// The settle read comes new_version_settle after the first read, and requests keep the current
// key meanwhile (a lower bound on the wait, which sleep_for guarantees: no speed assertion).
TEST(KmsEngine, TheSettleReadWaitsTheSettleTimeWhileRequestsKeepTheCurrentKey) {
  constexpr auto kSettle = std::chrono::milliseconds(50);
  Fixture f(kSettle);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v2 = f.ActiveKeyId();
  f.backend->AddVersion(3);
  std::chrono::steady_clock::time_point first_read, settle_read;
  std::string key_id_during_settle;
  f.backend->OnLoadKeys([&](int call) {
    if (call == 2) first_read = std::chrono::steady_clock::now();
    if (call == 3) {
      settle_read = std::chrono::steady_clock::now();
      StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
      if (sealed.ok()) key_id_during_settle = sealed->key_id;
    }
  });
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_GE(settle_read - first_read, kSettle);
  EXPECT_EQ(key_id_during_settle, v2) << "a request during the settle used the unconfirmed version";
  EXPECT_EQ(f.engine->key_ring()->active_version(), 3u);
}

TEST(KmsEngine, AnUnknownOrMismatchedKeyIdCostsNoDeviceCallAndNoHealth) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  const std::string v1 = f.engine->key_ring()->key_ids().at(1);
  const int calls = f.backend->device_calls();
  EXPECT_EQ(f.engine->Decrypt(sealed->ciphertext, "kek-v2-" + std::string(32, 'f')).status().code(),
            StatusCode::kNotFound);
  // A key_id this ring knows, but for another version than the envelope's header.
  const Status mismatched = f.engine->Decrypt(sealed->ciphertext, v1).status();
  EXPECT_EQ(mismatched.code(), StatusCode::kInvalidArgument) << mismatched.ToString();
  EXPECT_EQ(f.backend->device_calls(), calls) << "a key_id check reached the device";
  EXPECT_TRUE(f.engine->Health().ok);
}

TEST(KmsEngine, BeforeTheFirstKeyRingHealthSaysWhyAndRequestsAreUnavailable) {
  Fixture f;
  HealthReport before = f.engine->Health();
  EXPECT_FALSE(before.ok);
  EXPECT_TRUE(before.active_key_id.empty());
  EXPECT_NE(before.detail.find("no key loaded yet"), std::string::npos) << before.detail;
  EXPECT_EQ(f.engine->Encrypt(kSeed, kMaxCiphertext).status().code(), StatusCode::kUnavailable);

  // A load that fails for the device: its reason shows, and it is an outage (the breaker opens).
  f.backend->SetUnavailable(true);
  EXPECT_EQ(f.engine->LoadKeyRing().code(), StatusCode::kUnavailable);
  HealthReport failed = f.engine->Health();
  EXPECT_FALSE(failed.ok);
  EXPECT_NE(failed.detail.find("test outage"), std::string::npos) << failed.detail;
  EXPECT_TRUE(f.engine->BreakerOpen());

  f.backend->SetUnavailable(false);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());  // the first ring is proved by one round trip at once
  EXPECT_TRUE(f.engine->Health().ok) << f.engine->Health().detail;
  EXPECT_FALSE(f.engine->BreakerOpen());
}

TEST(KmsEngine, HealthNeverTouchesTheDeviceNorWaitsForIt) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const int calls = f.backend->device_calls();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(f.engine->Health().ok);
  EXPECT_EQ(f.backend->device_calls(), calls);

  // A Seal held inside the device: Health still answers, from the state, before the Seal returns.
  std::promise<void> in_device, release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> released_by_safety_timeout{false};
  f.backend->OnDeviceCall([&, first = std::make_shared<std::atomic<bool>>(true)] {
    if (!first->exchange(false)) return;
    in_device.set_value();
    if (released.wait_for(std::chrono::seconds(30)) != std::future_status::ready) released_by_safety_timeout = true;
  });
  std::thread request([&] { (void)f.engine->Encrypt(kSeed, kMaxCiphertext); });
  in_device.get_future().wait();
  EXPECT_TRUE(f.engine->Health().ok);
  EXPECT_FALSE(released_by_safety_timeout.load()) << "Health() waited for the device call";
  release.set_value();
  request.join();
}

// An outage (UNAVAILABLE, or the device refusing our credentials) opens the breaker: requests fail at
// once without a device call until a probe succeeds.
TEST(KmsEngine, AnOutageOpensTheBreakerUntilAProbeSucceeds) {
  for (const Status& outage : {UnavailableError("test outage"), PermissionDeniedError("PIN refused (test)")}) {
    SCOPED_TRACE(outage.ToString());
    Fixture f;
    ASSERT_TRUE(f.engine->LoadKeyRing().ok());
    StatusOr<EncryptResult> before = f.engine->Encrypt(kSeed, kMaxCiphertext);
    ASSERT_TRUE(before.ok());

    f.backend->SetFailure(outage);
    EXPECT_EQ(f.engine->Encrypt(kSeed, kMaxCiphertext).status().code(), outage.code());
    EXPECT_TRUE(f.engine->BreakerOpen());
    HealthReport health = f.engine->Health();
    EXPECT_FALSE(health.ok);
    EXPECT_NE(health.detail.find(outage.message()), std::string::npos) << health.detail;

    const int calls = f.backend->device_calls();
    const Status refused = f.engine->Encrypt(kSeed, kMaxCiphertext).status();
    EXPECT_EQ(refused.code(), StatusCode::kUnavailable) << refused.ToString();
    EXPECT_EQ(f.engine->Decrypt(before->ciphertext, before->key_id).status().code(), StatusCode::kUnavailable);
    EXPECT_EQ(f.backend->device_calls(), calls) << "a request reached the device while the breaker was open";

    // The device is back, but nothing proved it yet: still refused at once.
    f.backend->SetFailure(OkStatus());
    EXPECT_EQ(f.engine->Encrypt(kSeed, kMaxCiphertext).status().code(), StatusCode::kUnavailable);
    EXPECT_EQ(f.backend->device_calls(), calls);
    ASSERT_TRUE(f.engine->ProbeNow().ok());
    EXPECT_FALSE(f.engine->BreakerOpen());
    EXPECT_TRUE(f.engine->Health().ok);
    EXPECT_TRUE(f.engine->Encrypt(kSeed, kMaxCiphertext).ok());
  }
}

// A fault (the device answers, but the active key cannot be used) is unhealthy at once, yet the
// breaker stays closed: other versions still decrypt.
TEST(KmsEngine, AFaultWithTheActiveKeyIsUnhealthyButKeepsServingOtherVersions) {
  Fixture f;
  f.backend->RemoveVersion(2);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());  // version 1 active
  StatusOr<EncryptResult> under_v1 = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(under_v1.ok());
  f.backend->AddVersion(2);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());  // version 2 active

  f.backend->RemoveVersion(2);  // deleted from the device behind the plugin's back
  EXPECT_EQ(f.engine->Encrypt(kSeed, kMaxCiphertext).status().code(), StatusCode::kNotFound);
  HealthReport health = f.engine->Health();
  EXPECT_FALSE(health.ok);
  EXPECT_FALSE(f.engine->BreakerOpen());
  const int calls = f.backend->device_calls();
  StatusOr<SecureBytes> opened = f.engine->Decrypt(under_v1->ciphertext, under_v1->key_id);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), kSeed);
  EXPECT_GT(f.backend->device_calls(), calls);
}

// A Decrypt that fails with an older version (removed from the device, not yet from the ring) says
// nothing about whether the plugin can encrypt: health stays ok.
TEST(KmsEngine, ADecryptFailureWithAnOlderVersionLeavesHealthOk) {
  Fixture f;
  f.backend->RemoveVersion(2);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> under_v1 = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(under_v1.ok());
  f.backend->AddVersion(2);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  ASSERT_TRUE(f.engine->Encrypt(kSeed, kMaxCiphertext).ok());

  f.backend->RemoveVersion(1);
  EXPECT_EQ(f.engine->Decrypt(under_v1->ciphertext, under_v1->key_id).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(f.engine->Health().ok) << f.engine->Health().detail;
  EXPECT_FALSE(f.engine->BreakerOpen());
}

}  // namespace
}  // namespace trousseau
