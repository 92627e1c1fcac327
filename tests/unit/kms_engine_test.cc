// KmsEngine against a real in-memory AES-256-GCM backend (tests/testing/software_backend.h): the
// engine's own rules (key_id checks, tamper detection, the active version's monotonicity, the
// activation of a new version (settle, fleet delay), the reload on a Decrypt miss, health and the circuit breaker)
// without an HSM. The same rules on SoftHSM are in tests/integration/kms_service_test.cc.
#include "core/kms_engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
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

TEST(KmsEngine, AnEnvelopeNamingAnotherFormatThanItsVersionsSchemeIsRefusedBeforeTheDevice) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->ciphertext[2], static_cast<char>(kEnvelopeFormatV1));  // the version's own format
  std::string other = sealed->ciphertext;
  other[2] = static_cast<char>(kEnvelopeFormatV2);  // a valid format, but not this version's scheme
  const int calls = f.backend->device_calls();
  for (const std::string& key_id : {sealed->key_id, std::string()}) {
    StatusOr<SecureBytes> opened = f.engine->Decrypt(other, key_id);
    EXPECT_EQ(opened.status().code(), StatusCode::kInvalidArgument) << opened.status().ToString();
    EXPECT_NE(opened.status().message().find("envelope format 2"), std::string::npos) << opened.status().ToString();
  }
  EXPECT_EQ(f.backend->device_calls(), calls);
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
  EXPECT_EQ(
      f.engine->Decrypt(sealed->ciphertext.substr(0, sealed->ciphertext.size() - 1), sealed->key_id).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(f.engine->Decrypt(sealed->ciphertext + "x", sealed->key_id).status().code(), StatusCode::kInvalidArgument);
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

// A clock the test moves by hand: activation and the reload rate are rules about time.
struct FakeClock {
  std::chrono::steady_clock::time_point now = std::chrono::steady_clock::time_point() + std::chrono::hours(1);
  std::function<std::chrono::steady_clock::time_point()> Function() {
    return [this] { return now; };
  }
};

struct FleetFixture {
  FleetFixture(std::chrono::milliseconds settle, std::chrono::milliseconds delay) {
    backend->AddVersion(1);
    backend->AddVersion(2);
    engine = std::make_unique<KmsEngine>(
        backend,
        EngineOptions{
            .family_label = "kek", .new_version_settle = settle, .activation_delay = delay, .now = clock.Function()});
  }
  // Another node's plugin on the same device that activates new versions at once.
  std::unique_ptr<KmsEngine> EagerPeer() {
    return std::make_unique<KmsEngine>(backend, EngineOptions{.family_label = "kek", .now = clock.Function()});
  }
  uint64_t Active() const { return engine->key_ring()->active_version(); }

  FakeClock clock;
  std::shared_ptr<SoftwareBackend> backend = std::make_shared<SoftwareBackend>();
  std::unique_ptr<KmsEngine> engine;
};

TEST(KmsEngine, ANewVersionDecryptsAtOnceAndEncryptsOnlyOnceASecondReadAfterTheSettleStillShowsIt) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(0));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  auto peer = f.EagerPeer();
  ASSERT_TRUE(peer->LoadKeyRing().ok());
  StatusOr<EncryptResult> from_peer = peer->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(from_peer.ok());

  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 2u) << "active on the first read that saw it";
  StatusOr<SecureBytes> opened = f.engine->Decrypt(from_peer->ciphertext, from_peer->key_id);
  ASSERT_TRUE(opened.ok()) << "a version found on the device decrypts at once: " << opened.status().ToString();
  ASSERT_TRUE(f.engine->NextActivationAt().has_value());
  EXPECT_EQ(*f.engine->NextActivationAt(), f.clock.now + std::chrono::seconds(2));

  f.clock.now += std::chrono::milliseconds(1999);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 2u);
  f.clock.now += std::chrono::milliseconds(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 3u);
  EXPECT_FALSE(f.engine->NextActivationAt().has_value());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  EXPECT_EQ(sealed->key_id, from_peer->key_id) << "both nodes name version 3 alike";
}

TEST(KmsEngine, NewVersionWithdrawnBeforeItIsDueIsNeverUsed) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(0));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->RemoveVersion(3);  // a rival rotation withdrew it
  f.clock.now += std::chrono::seconds(5);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 2u);
  EXPECT_EQ(f.engine->key_ring()->KeyIdOf(3), nullptr);
  EXPECT_FALSE(f.engine->NextActivationAt().has_value());
}

TEST(KmsEngine, NewVersionReplacedBeforeItIsDueWaitsAgainFromTheReplacement) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(0));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.clock.now += std::chrono::seconds(1);
  f.backend->AddVersion(3);  // same number, other key material: another key_id
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.clock.now += std::chrono::seconds(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 2u) << "the replacement has been seen for 1 s only";
  f.clock.now += std::chrono::seconds(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 3u);
}

TEST(KmsEngine, TheActivationDelayHoldsANewVersionBackLongerThanTheSettle) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(62));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.clock.now += std::chrono::seconds(61);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 2u);
  EXPECT_EQ(f.engine->Health().active_key_id, *f.engine->key_ring()->KeyIdOf(2)) << "Status reports the active one";
  f.clock.now += std::chrono::seconds(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 3u);
}

TEST(KmsEngine, OfSeveralWaitingVersionsTheHighestDueOneBecomesActive) {
  FleetFixture f(std::chrono::seconds(0), std::chrono::seconds(10));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.clock.now += std::chrono::seconds(5);
  f.backend->AddVersion(4);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(*f.engine->NextActivationAt(), f.clock.now + std::chrono::seconds(5)) << "version 3's turn first";
  f.clock.now += std::chrono::seconds(5);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 3u);
  f.clock.now += std::chrono::seconds(5);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 4u);
}

TEST(KmsEngine, AnActiveKeyThatVanishedGivesWayToANewerOneAtOnce) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(60));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  f.backend->RemoveVersion(2);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.Active(), 3u) << "nothing can encrypt under a key that is gone";
}

// Another node activated a version this plugin has not read yet: the Decrypt that meets it reloads
// the family once and answers, instead of NOT_FOUND until the next refresh.
TEST(KmsEngine, ADecryptUnderAVersionAnotherNodeActivatedReloadsAndSucceeds) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(60));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  auto peer = f.EagerPeer();
  ASSERT_TRUE(peer->LoadKeyRing().ok());
  StatusOr<EncryptResult> from_peer = peer->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(from_peer.ok());
  const int loads = f.backend->load_keys_calls();

  for (const std::string& key_id : {from_peer->key_id, std::string()}) {  // v2, then v1beta1 (no key_id)
    StatusOr<SecureBytes> opened = f.engine->Decrypt(from_peer->ciphertext, key_id);
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    EXPECT_EQ(opened->view(), kSeed);
  }
  EXPECT_EQ(f.backend->load_keys_calls(), loads + 1) << "one reload, then the version is known";
  EXPECT_EQ(f.Active(), 2u) << "a Decrypt's reload never activates: the fleet rule still holds";
}

struct MissCounter : BackendObserver {
  void OnBackendCall(std::string_view, std::chrono::nanoseconds, const Status&) override {}
  void OnHealth(bool) override {}
  void OnDecryptMiss(std::string_view outcome) override { outcomes[std::string(outcome)]++; }
  std::map<std::string, int> outcomes;
};

TEST(KmsEngine, ForgedNewerVersionsCauseAtMostOneReloadPerInterval) {
  FakeClock clock;
  MissCounter misses;
  auto backend = std::make_shared<SoftwareBackend>();
  backend->AddVersion(1);
  KmsEngine engine(backend, EngineOptions{.family_label = "kek",
                                          .observer = &misses,
                                          .miss_refresh_interval = std::chrono::seconds(1),
                                          .now = clock.Function()});
  ASSERT_TRUE(engine.LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = engine.Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  const int loads = backend->load_keys_calls();
  for (int i = 0; i < 20; ++i) {
    std::string forged = EncodeEnvelopeHeader(1000 + i) + sealed->ciphertext.substr(kEnvelopeHeaderSize);
    EXPECT_EQ(engine.Decrypt(forged, "").status().code(), StatusCode::kNotFound);
    EXPECT_EQ(engine.Decrypt(forged, "kek-v" + std::to_string(1000 + i) + "-" + std::string(32, '0')).status().code(),
              StatusCode::kNotFound);
  }
  EXPECT_EQ(backend->load_keys_calls(), loads + 1);
  EXPECT_EQ(misses.outcomes["not_found"], 1);
  EXPECT_EQ(misses.outcomes["limited"], 39);
  clock.now += std::chrono::seconds(1);
  EXPECT_EQ(
      engine.Decrypt(EncodeEnvelopeHeader(5000) + sealed->ciphertext.substr(kEnvelopeHeaderSize), "").status().code(),
      StatusCode::kNotFound);
  EXPECT_EQ(backend->load_keys_calls(), loads + 2) << "one more after the interval";
}

TEST(KmsEngine, AnUnknownOlderOrForgedKeyIdOfAKnownVersionNeverReloads) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  StatusOr<EncryptResult> sealed = f.engine->Encrypt(kSeed, kMaxCiphertext);
  ASSERT_TRUE(sealed.ok());
  const int loads = f.backend->load_keys_calls();
  EXPECT_EQ(f.engine->Decrypt(sealed->ciphertext, "kek-v2-" + std::string(32, '0')).status().code(),
            StatusCode::kNotFound);
  f.backend->RemoveVersion(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string retired = EncodeEnvelopeHeader(1) + sealed->ciphertext.substr(kEnvelopeHeaderSize);
  EXPECT_EQ(f.engine->Decrypt(retired, "").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(f.backend->load_keys_calls(), loads + 1) << "only the explicit reload read the device";
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

// ---- versions that vanish from the device ----

TEST(KmsEngine, ADecryptOnlyVersionThatVanishesIsRecordedOnceWithItsKeyId) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v1 = *f.engine->key_ring()->KeyIdOf(1);
  EXPECT_TRUE(f.engine->VanishedKeys().empty());
  f.backend->RemoveVersion(1);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok()) << "the active key is still there: the load succeeds";
  std::vector<VanishedKey> vanished = f.engine->VanishedKeys();
  ASSERT_EQ(vanished.size(), 1u);
  EXPECT_EQ(vanished[0].version, 1u);
  EXPECT_EQ(vanished[0].key_id, v1);
  EXPECT_FALSE(vanished[0].was_active);
  EXPECT_TRUE(vanished[0].replaced_by.empty());
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.engine->VanishedKeys().size(), 1u) << "one key_id is one incident, however often it is read";
}

TEST(KmsEngine, AVersionReplacedUnderTheSameNumberIsRecordedWithTheKeyIdThatTookIt) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string old_v1 = *f.engine->key_ring()->KeyIdOf(1);
  f.backend->AddVersion(1);  // other key material under version 1 (NSS replacing a key with the same CKA_ID)
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  std::vector<VanishedKey> vanished = f.engine->VanishedKeys();
  ASSERT_EQ(vanished.size(), 1u);
  EXPECT_EQ(vanished[0].key_id, old_v1);
  EXPECT_EQ(vanished[0].replaced_by, *f.engine->key_ring()->KeyIdOf(1));
  EXPECT_NE(vanished[0].replaced_by, old_v1);
}

TEST(KmsEngine, TheActiveVersionVanishingIsRecordedEvenThoughTheLoadIsRefused) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  const std::string v2 = f.ActiveKeyId();
  f.backend->RemoveVersion(2);
  EXPECT_EQ(f.engine->LoadKeyRing().code(), StatusCode::kFailedPrecondition);
  std::vector<VanishedKey> vanished = f.engine->VanishedKeys();
  ASSERT_EQ(vanished.size(), 1u);
  EXPECT_EQ(vanished[0].key_id, v2);
  EXPECT_TRUE(vanished[0].was_active);
  f.backend->RemoveVersion(1);  // the whole family gone: an empty listing
  EXPECT_FALSE(f.engine->LoadKeyRing().ok());
  EXPECT_EQ(f.engine->VanishedKeys().size(), 2u);
}

TEST(KmsEngine, APendingVersionWithdrawnBeforeItWasActiveIsNoIncident) {
  FleetFixture f(std::chrono::seconds(2), std::chrono::seconds(0));
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->AddVersion(3);
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  ASSERT_NE(f.engine->key_ring()->KeyIdOf(3), nullptr);
  f.backend->RemoveVersion(3);  // a rival rotation withdrew it: nothing was encrypted under it
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  EXPECT_TRUE(f.engine->VanishedKeys().empty());
}

TEST(KmsEngine, AVersionGoneAtADecryptsReloadIsRecordedToo) {
  Fixture f;
  ASSERT_TRUE(f.engine->LoadKeyRing().ok());
  f.backend->RemoveVersion(1);
  // A Decrypt naming a version above all held reloads the family (another node may have activated it).
  std::string forged =
      EncodeEnvelopeHeader(9) + std::string(SoftwareBackend::kIvSize + SoftwareBackend::kTagSize + 1, 'x');
  (void)f.engine->Decrypt(forged, "");
  ASSERT_EQ(f.engine->VanishedKeys().size(), 1u);
  EXPECT_EQ(f.engine->VanishedKeys()[0].version, 1u);
}

}  // namespace
}  // namespace trousseau
