// Provisioning the TPM key directory (the library behind `trousseau-hsm-init tpm ...`).
#include "tpm/provisioning.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <thread>

#include "core/key_id.h"
#include "tests/tpm/swtpm.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using testing::Swtpm;
using testing::TempDir;

class TpmProvisioningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tpm_ = Swtpm::Start(dir_.path() + "/tpm");
    ASSERT_NE(tpm_, nullptr) << "swtpm did not start";
  }
  TpmConfig Config() const { return {tpm_->Tcti(), dir_.path() + "/keys"}; }

  TempDir dir_;
  std::unique_ptr<Swtpm> tpm_;
};

mode_t Mode(const std::string& path) {
  struct stat st{};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

TEST_F(TpmProvisioningTest, InitCreatesVersionOneAsFourPrivateFilesAndRefusesToRunTwice) {
  StatusOr<TpmKeyInfo> v1 = InitKeyDir(Config(), "kek");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->key_id, DeriveKeyId("tpm2", "kek", 1, v1->fingerprint));
  EXPECT_EQ(Mode(Config().key_dir), 0700u);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(Config().key_dir)) {
    names.push_back(entry.path().filename());
    EXPECT_EQ(Mode(entry.path()), 0600u) << entry.path();
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"v000001.aes.priv", "v000001.aes.pub", "v000001.hmac.priv",
                                             "v000001.hmac.pub"}));

  StatusOr<TpmKeyInfo> again = InitKeyDir(Config(), "kek");
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status().ToString();
}

TEST_F(TpmProvisioningTest, ListAgreesWithTheBackendsKeyIdsAndRotateAddsTheNextVersion) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[1].key_id, v2->key_id);

  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = Config().key_dir});
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ((*keys)[i].fingerprint, (*listed)[i].fingerprint);
}

TEST_F(TpmProvisioningTest, RotateNeedsAnInitialisedDirectory) {
  EXPECT_TRUE(IsFailedPrecondition(RotateKey(Config(), "kek").status()));
  std::filesystem::create_directory(Config().key_dir);
  EXPECT_TRUE(IsFailedPrecondition(RotateKey(Config(), "kek").status()));
}

TEST_F(TpmProvisioningTest, LeftoversOfAnInterruptedRotationAreNotAVersion) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  const std::string dir = Config().key_dir;
  // A rotation that died before writing v000002.aes.pub, its commit marker.
  std::filesystem::copy_file(dir + "/v000001.hmac.pub", dir + "/v000002.hmac.pub");
  std::filesystem::copy_file(dir + "/v000001.hmac.priv", dir + "/v000002.hmac.priv");
  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->size(), 1u);
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");  // overwrites the leftovers
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(ListKeys(Config(), "kek")->size(), 2u);
}

TEST_F(TpmProvisioningTest, SelfTestPassesHereAndFailsOnAnotherTpm) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  Status here = SelfTest(Config());
  EXPECT_TRUE(here.ok()) << here.ToString();

  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");
  ASSERT_NE(other, nullptr);
  Status there = SelfTest({other->Tcti(), Config().key_dir});
  EXPECT_TRUE(IsFailedPrecondition(there)) << there.ToString();
}

TEST_F(TpmProvisioningTest, AFullTpmIsRetriedWithBackoffThenUnavailable) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  // A running backend holds 2 of swtpm's 3 object slots; listing needs 3 (primary + two keys).
  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = Config().key_dir});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const auto start = std::chrono::steady_clock::now();
  Status full = ListKeys(Config(), "kek").status();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(IsUnavailable(full)) << full.ToString();
  EXPECT_NE(full.message().find("object"), std::string::npos) << full.message();
  EXPECT_GE(waited, std::chrono::milliseconds(100)) << "bounded retries with backoff";
  EXPECT_LT(waited, std::chrono::seconds(2));

  // Slots freed while it backs off: the retry succeeds.
  std::thread release([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    backend.reset();  // the worker flushes its objects
  });
  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  release.join();
  EXPECT_TRUE(listed.ok()) << listed.status().ToString();
}

TEST_F(TpmProvisioningTest, AnUnreachableTpmIsUnavailable) {
  tpm_->Kill();
  Status s = InitKeyDir(Config(), "kek").status();
  EXPECT_TRUE(IsUnavailable(s)) << s.ToString();
}

}  // namespace
}  // namespace trousseau::tpm
