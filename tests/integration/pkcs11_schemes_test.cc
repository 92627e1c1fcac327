// The PKCS#11 backend's key schemes (hsm/key_scheme.h) on real tokens: AES-GCM where the device
// chooses the IV (a FIPS-mode HSM, emulated by the fault shim's "device_iv" mode in front of SoftHSM).
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>

#include "hsm/pkcs11_backend.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"

namespace trousseau {
namespace {

using support::SoftHsmToken;

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
