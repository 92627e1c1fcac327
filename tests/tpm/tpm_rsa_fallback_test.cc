// The RSA-OAEP fallback for TPMs without TPM2_EncryptDecrypt(2): created on request here (swtpm has
// both commands), used through the same backend.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/tpm/swtpm_test.h"
#include "tpm/provisioning.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using testing::Swtpm;
using testing::TempDir;

class TpmRsaFallbackTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    if (HasFatalFailure()) return;
    config_ = {tpm_->Tcti(), key_dir_, KeyScheme::kRsaOaep};
  }
  std::unique_ptr<TpmBackend> Backend() {
    auto backend = *TpmBackend::Create({.tcti = config_.tcti, .key_dir = config_.key_dir});
    StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
    EXPECT_TRUE(keys.ok()) << keys.status().ToString();
    return backend;
  }

  TpmConfig config_;
};

TEST_F(TpmRsaFallbackTest, AnRsaVersionIsOneTpmObjectWhoseLabelBindsTheAad) {
  StatusOr<TpmKeyInfo> v1 = InitKeyDir(config_, "kek");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_TRUE(std::filesystem::exists(config_.key_dir + "/v000001.rsa.pub"));
  EXPECT_TRUE(std::filesystem::exists(config_.key_dir + "/v000001.rsa.priv"));
  EXPECT_FALSE(std::filesystem::exists(config_.key_dir + "/v000001.aes.pub"));

  auto backend = Backend();
  EXPECT_EQ(backend->SealOverhead(), 256u);
  const std::string seed(32, '\x33');
  StatusOr<std::string> sealed = backend->Seal(1, seed, "header");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->size(), 256u);
  EXPECT_NE(*sealed, *backend->Seal(1, seed, "header"));
  StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "header");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), seed);

  for (size_t i = 0; i < sealed->size(); i += 5) {
    std::string tampered = *sealed;
    tampered[i] ^= 0x01;
    Status s = backend->Open(1, tampered, "header").status();
    ASSERT_TRUE(IsInvalidArgument(s)) << "byte " << i << ": " << s.ToString();
  }
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, *sealed, "other header").status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed->substr(1), "header").status()));
  EXPECT_TRUE(backend->Seal(1, std::string(190, 'm'), "header").ok());
  EXPECT_TRUE(IsInvalidArgument(backend->Seal(1, std::string(191, 'm'), "header").status()));
  EXPECT_TRUE(backend->Probe(1).ok());
}

TEST_F(TpmRsaFallbackTest, RsaAndAesVersionsMixAndKeepTheirFingerprints) {
  ASSERT_TRUE(InitKeyDir({config_.tcti, config_.key_dir, KeyScheme::kAesCfbHmac}, "kek").ok());
  ASSERT_TRUE(RotateKey(config_, "kek").ok());  // v2: RSA
  std::string by_v1, by_v2;
  std::vector<BackendKey> first;
  {
    auto backend = Backend();
    first = *backend->LoadKeys();
    ASSERT_EQ(first.size(), 2u);
    EXPECT_EQ(backend->SealOverhead(), 256u) << "the active version is RSA";
    by_v1 = *backend->Seal(1, "seed one", "h");
    by_v2 = *backend->Seal(2, "seed two", "h");
    for (int round = 0; round < 3; ++round) {
      EXPECT_EQ(backend->Open(1, by_v1, "h")->view(), "seed one");
      EXPECT_EQ(backend->Open(2, by_v2, "h")->view(), "seed two");
    }
    EXPECT_TRUE(IsInvalidArgument(backend->Open(2, std::string(by_v1.size(), 'x'), "h").status()));
  }
  auto backend = Backend();
  StatusOr<std::vector<BackendKey>> again = backend->LoadKeys();
  ASSERT_TRUE(again.ok());
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ((*again)[i].fingerprint, first[i].fingerprint);
  EXPECT_EQ(backend->Open(2, by_v2, "h")->view(), "seed two");
  backend.reset();  // swtpm: no resource manager, so provisioning needs the plugin's slots
  Status self_test = SelfTest(config_);
  EXPECT_TRUE(self_test.ok()) << self_test.ToString();
}

TEST_F(TpmRsaFallbackTest, AnotherTpmCannotLoadAnRsaVersion) {
  ASSERT_TRUE(InitKeyDir(config_, "kek").ok());
  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");
  ASSERT_NE(other, nullptr);
  auto stranger = *TpmBackend::Create({.tcti = other->Tcti(), .key_dir = config_.key_dir});
  Status s = stranger->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("another TPM"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace trousseau::tpm
