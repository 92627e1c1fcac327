// The PKCS#11 backend's key schemes (hsm/key_scheme.h) on real tokens: AES-CBC + HMAC-SHA256 (on SoftHSM,
// which has both mechanism sets; opencryptoki's soft token, which has no GCM, runs it in the conformance
// suite and init_tool_scheme_test), and AES-GCM where the device chooses the IV (a FIPS-mode HSM,
// emulated by the fault shim's "device_iv" mode in front of SoftHSM).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>

#include "core/envelope.h"
#include "core/kms_engine.h"
#include "hsm/pkcs11_backend.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"

namespace trousseau {
namespace {

using support::SoftHsmToken;

class CbcHmacTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
  }
  std::unique_ptr<hsm::Pkcs11Backend> Backend() {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
    EXPECT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = hsm::Pkcs11Backend::Create(*std::move(uri), {});
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return *std::move(backend);
  }
  std::unique_ptr<SoftHsmToken> token_;
};

TEST_F(CbcHmacTest, AVersionWithAnHmacKeyBesideItsAesKeySealsInFormatTwo) {
  ASSERT_TRUE(token_->GenerateCbcHmacKek(1).ok());
  auto backend = Backend();
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].envelope_format, kEnvelopeFormatV2);
  EXPECT_EQ((*keys)[0].fingerprint.size(), hsm::kHmacTagSize + hsm::kCbcBlockSize);
  EXPECT_EQ(backend->SealOverhead(), hsm::kCbcHmacMaxOverhead);
  // Every length around the block boundaries: IV, whole padded blocks, the 32-byte MAC.
  for (size_t size = 0; size <= 49; ++size) {
    const std::string plaintext(size, static_cast<char>('a' + size % 26));
    StatusOr<std::string> sealed = backend->Seal(1, plaintext, "header");
    ASSERT_TRUE(sealed.ok()) << size << ": " << sealed.status().ToString();
    EXPECT_EQ(sealed->size(), hsm::kCbcIvSize + (size / 16 + 1) * 16 + hsm::kHmacTagSize) << size;
    EXPECT_LE(sealed->size(), size + backend->SealOverhead());
    if (size >= 8) {
      EXPECT_EQ(sealed->find(plaintext), std::string::npos);
    }
    StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "header");
    ASSERT_TRUE(opened.ok()) << size << ": " << opened.status().ToString();
    EXPECT_EQ(opened->view(), plaintext);
  }
  EXPECT_NE(*backend->Seal(1, "seed", ""), *backend->Seal(1, "seed", ""));  // a fresh IV each time
  EXPECT_TRUE(backend->Probe(1).ok());
}

TEST_F(CbcHmacTest, EveryFlippedBitOtherAadTruncationOrExtensionIsInvalidArgumentAndTheDeviceStaysHealthy) {
  ASSERT_TRUE(token_->GenerateCbcHmacKek(1).ok());
  auto backend = Backend();
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "0123456789abcdef0123456789abcdef", "header");
  for (size_t byte = 0; byte < sealed.size(); ++byte) {
    for (int bit = 0; bit < 8; bit += 3) {
      std::string forged = sealed;
      forged[byte] = static_cast<char>(forged[byte] ^ (1 << bit));
      Status s = backend->Open(1, forged, "header").status();
      EXPECT_TRUE(IsInvalidArgument(s)) << "byte " << byte << " bit " << bit << ": " << s.ToString();
    }
  }
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, "Header").status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, "").status()));
  // The length prefix of the associated data: moving bytes between header and body never verifies.
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed.substr(1), "header" + sealed.substr(0, 1)).status()));
  for (size_t cut : {size_t{1}, size_t{16}, size_t{32}, sealed.size() - 28}) {
    EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed.substr(0, sealed.size() - cut), "header").status())) << cut;
  }
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed + std::string(16, 'x'), "header").status()));
  EXPECT_TRUE(backend->Probe(1).ok());
}

TEST_F(CbcHmacTest, BothSchemesServeSideBySideAndTheEngineBindsEachEnvelopeToItsVersionsFormat) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());         // aes-gcm
  ASSERT_TRUE(token_->GenerateCbcHmacKek(2).ok());  // aes-cbc-hmac, the active one
  std::shared_ptr<hsm::Pkcs11Backend> backend = Backend();
  KmsEngine engine(backend, EngineOptions{.family_label = "kek"});
  ASSERT_TRUE(engine.LoadKeyRing().ok());
  StatusOr<EncryptResult> under_v2 = engine.Encrypt("seed-2", 1024);
  ASSERT_TRUE(under_v2.ok()) << under_v2.status().ToString();
  EXPECT_EQ(under_v2->ciphertext[2], static_cast<char>(kEnvelopeFormatV2));
  StatusOr<SecureBytes> opened = engine.Decrypt(under_v2->ciphertext, under_v2->key_id);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed-2");

  // Version 1's ciphertexts (format 1) still open; an envelope claiming the other format for a version
  // is refused before the device is asked.
  StatusOr<std::string> sealed_v1 = backend->Seal(1, "seed-1", EncodeEnvelopeHeader(1, kEnvelopeFormatV1));
  ASSERT_TRUE(sealed_v1.ok());
  const std::string v1 = EncodeEnvelopeHeader(1, kEnvelopeFormatV1) + *sealed_v1;
  ASSERT_TRUE(engine.Decrypt(v1, "").ok());
  std::string relabelled = under_v2->ciphertext;
  relabelled[2] = static_cast<char>(kEnvelopeFormatV1);
  Status refused = engine.Decrypt(relabelled, under_v2->key_id).status();
  EXPECT_TRUE(IsInvalidArgument(refused)) << refused.ToString();
  EXPECT_NE(refused.message().find("format"), std::string::npos) << refused.ToString();
}

class DeviceIvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    control_ = token_->dir() + "/shim.control";
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control_.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
  }
  void TearDown() override {
    unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
    unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
  }

  // The shim in `mode` ("up": SoftHSM as it is; "device_iv": a device that refuses our IVs).
  std::unique_ptr<hsm::Pkcs11Backend> Backend(const std::string& mode, const std::string& query = "") {
    support::WriteShimControl(control_, mode);
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri("kek", FAULT_SHIM_PATH) + query);
    EXPECT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = hsm::Pkcs11Backend::Create(*std::move(uri), {});
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return *std::move(backend);
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::string control_;
};

TEST_F(DeviceIvTest, ADeviceThatRefusesOurIvIsDetectedAndSealsWithItsOwn) {
  auto backend = Backend("device_iv");
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].envelope_format, hsm::kEnvelopeFormatAesGcm);  // same layout as our own IVs

  std::set<std::string> ivs;
  for (int i = 0; i < 20; ++i) {
    StatusOr<std::string> sealed = backend->Seal(1, "data key", "header");
    ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
    ASSERT_EQ(sealed->size(), 8 + backend->SealOverhead());
    const std::string iv = sealed->substr(0, kGcmIvSize);
    EXPECT_NE(iv, std::string(kGcmIvSize, '\0'));
    ivs.insert(iv);
    StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "header");
    ASSERT_TRUE(opened.ok()) << opened.status().ToString();
    EXPECT_EQ(opened->view(), "data key");
    for (size_t byte = 0; byte < sealed->size(); ++byte) {
      std::string forged = *sealed;
      forged[byte] ^= 0x20;
      EXPECT_TRUE(IsInvalidArgument(backend->Open(1, forged, "header").status())) << "byte " << byte;
    }
  }
  EXPECT_EQ(ivs.size(), 20u);  // the device's IVs, never repeated
  EXPECT_TRUE(backend->Probe(1).ok());
}

TEST_F(DeviceIvTest, SayingSoInTheUriGivesTheSameKeyIdentityAsDetectingIt) {
  StatusOr<std::vector<BackendKey>> detected = Backend("device_iv")->LoadKeys();
  ASSERT_TRUE(detected.ok()) << detected.status().ToString();
  StatusOr<std::vector<BackendKey>> configured = Backend("device_iv", "&x-gcm-iv=device")->LoadKeys();
  ASSERT_TRUE(configured.ok()) << configured.status().ToString();
  EXPECT_EQ((*detected)[0].fingerprint, (*configured)[0].fingerprint);
  // A device that takes our IVs fingerprints the same key differently (the AES-GCM tag, unchanged since
  // the first release, so existing key_ids stay): the device's IV mode is part of the key's identity.
  StatusOr<std::vector<BackendKey>> caller = Backend("up")->LoadKeys();
  ASSERT_TRUE(caller.ok()) << caller.status().ToString();
  EXPECT_NE((*caller)[0].fingerprint, (*detected)[0].fingerprint);
}

TEST_F(DeviceIvTest, CallerIvsRequiredByTheUriOnADeviceThatRefusesThemIsAConfigurationError) {
  Status loaded = Backend("device_iv", "&x-gcm-iv=caller")->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(loaded)) << loaded.ToString();
  // The shim takes the all-zero fingerprint IV as room for its own and writes one there; a device that
  // refuses outright says CKR_MECHANISM_PARAM_INVALID. Either way the message names FIPS mode.
  EXPECT_NE(loaded.message().find("FIPS mode"), std::string::npos) << loaded.ToString();
  EXPECT_NE(loaded.message().find("x-gcm-iv=caller"), std::string::npos) << loaded.ToString();
}

TEST_F(DeviceIvTest, ADeviceThatLeavesTheIvUnwrittenIsNeverUsedWithAZeroIv) {
  // SoftHSM takes CK_GCM_PARAMS.pIv as our IV and writes nothing back: with x-gcm-iv=device every seal
  // would use the all-zero IV. The backend must refuse, not seal.
  auto backend = Backend("up", "&x-gcm-iv=device");
  ASSERT_TRUE(backend->LoadKeys().ok());
  StatusOr<std::string> sealed = backend->Seal(1, "data key", "header");
  EXPECT_TRUE(IsFailedPrecondition(sealed.status())) << sealed.status().ToString();
  EXPECT_NE(sealed.status().message().find("returned no IV"), std::string::npos) << sealed.status().ToString();
}

TEST(Pkcs11UriParse, TakesTheGcmIvSource) {
  const std::string base = "pkcs11:token=t;object=kek?module-path=/m.so";
  EXPECT_FALSE(hsm::Pkcs11Uri::Parse(base)->gcm_iv_source().has_value());
  EXPECT_EQ(hsm::Pkcs11Uri::Parse(base + "&x-gcm-iv=device")->gcm_iv_source(), hsm::GcmIvSource::kDevice);
  EXPECT_EQ(hsm::Pkcs11Uri::Parse(base + "&x-gcm-iv=caller")->gcm_iv_source(), hsm::GcmIvSource::kCaller);
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse(base + "&x-gcm-iv=fips").status()));
}

}  // namespace
}  // namespace trousseau
