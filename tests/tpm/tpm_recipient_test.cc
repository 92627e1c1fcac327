// The TPM recipient key of multi-recipient envelopes (issue 14, docs/ha.md) on a real swtpm:
// provisioning, TPM2_ECDH_ZGen through the backend checked against OpenSSL's ECDH, and the faults
// the backend must survive (bad points, a restarted, foreign or hung TPM, shared object slots).
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include "recipients/p256.h"
#include "tests/tpm/swtpm_test.h"
#include "tpm/key_store.h"
#include "tpm/provisioning.h"
#include "tpm/recipient_provisioning.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using testing::Swtpm;

// An ephemeral P-256 key pair made by OpenSSL (through src/recipients), as a sealing node makes one.
struct Ephemeral {
  std::shared_ptr<const recipients::EphemeralKey> key;
  std::string point;  // uncompressed SEC1

  static Ephemeral Generate() {
    StatusOr<recipients::EphemeralKey> key = recipients::EphemeralKey::Generate();
    if (!key.ok()) return {};
    Ephemeral e;
    e.point = key->public_point();
    e.key = std::make_shared<const recipients::EphemeralKey>(*std::move(key));
    return e;
  }
};

// ECDH on the host: x(e * Q), what a sealing node computes for the recipient whose point is Q.
std::string HostSharedSecret(const Ephemeral& ephemeral, const std::string& recipient_point) {
  if (!ephemeral.key) return "";
  StatusOr<SecureBytes> secret = ephemeral.key->SharedSecret(recipient_point);
  return secret.ok() ? std::string(secret->view()) : "";
}

// Whether `point` is a P-256 point (OpenSSL checks it lies on the curve).
bool OnTheCurve(const std::string& point) { return recipients::UncompressedPoint(point).ok(); }

Deadline Soon() { return Clock::now() + 30s; }

class TpmRecipientTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    recipient_dir_ = dir_.path() + "/recipient";
  }

  RecipientConfig Config() const {
    RecipientConfig config;
    config.tcti = tpm_->Tcti();
    config.recipient_dir = recipient_dir_;
    return config;
  }

  RecipientInfo CreateKey() {
    StatusOr<RecipientInfo> info = CreateRecipientKey(Config());
    EXPECT_TRUE(info.ok()) << info.status().ToString();
    return info.ok() ? *info : RecipientInfo{};
  }

  // A backend on this test's TPM and recipient directory unless told otherwise; no key directory.
  std::unique_ptr<TpmBackend> NewBackend(std::chrono::milliseconds request_timeout = defaults::kDeviceTimeout,
                                         const std::string& tcti = "", const std::string& key_dir = "",
                                         const std::string& recipient_dir = "") {
    TpmBackendOptions options;
    options.tcti = tcti.empty() ? tpm_->Tcti() : tcti;
    options.key_dir = key_dir;
    options.recipient_dir = recipient_dir.empty() ? recipient_dir_ : recipient_dir;
    options.request_timeout = request_timeout;
    StatusOr<std::unique_ptr<TpmBackend>> backend = TpmBackend::Create(options);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return backend.ok() ? *std::move(backend) : nullptr;
  }

  // The TPM's shared secret with `ephemeral`, as bytes (test only: never printed).
  static StatusOr<std::string> TpmSharedSecret(RecipientDevice& device, const Ephemeral& ephemeral) {
    StatusOr<SecureBytes> secret = device.RecipientSharedSecret(ephemeral.point, Soon());
    if (!secret.ok()) return secret.status();
    return std::string(secret->view());
  }

  std::string recipient_dir_;
};

TEST_F(TpmRecipientTest, TheTpmSharedSecretIsTheOneOpenSslComputesForEveryEphemeralKey) {
  const RecipientInfo info = CreateKey();
  ASSERT_EQ(info.public_point.size(), kP256PointSize);
  EXPECT_EQ(info.public_point[0], 0x04);
  EXPECT_TRUE(OnTheCurve(info.public_point)) << "the exported point is not on P-256";
  // TPM name: nameAlg SHA-256 (0x000b) and the digest of the public area.
  ASSERT_EQ(info.tpm_name.size(), 34u);
  EXPECT_EQ(info.tpm_name.substr(0, 2), std::string("\x00\x0b", 2));
  EXPECT_TRUE(info.fixed_tpm && info.fixed_parent && info.sensitive_data_origin);
  EXPECT_NE(info.object_attributes & TPMA_OBJECT_DECRYPT, 0u);
  EXPECT_EQ(info.object_attributes & (TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT), 0u);
  EXPECT_NE(info.object_attributes & TPMA_OBJECT_NODA, 0u);

  StatusOr<RecipientInfo> shown = ShowRecipient(Config());
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->public_point, info.public_point);
  EXPECT_EQ(shown->tpm_name, info.tpm_name);

  // An HA node without any key family: recipient only.
  auto backend = NewBackend();
  ASSERT_NE(backend, nullptr);
  RecipientDevice* recipient = backend->AsRecipient();
  ASSERT_EQ(recipient, backend.get());
  EXPECT_EQ(recipient->RecipientKind(), "tpm2");
  EXPECT_NE(recipient->DescribeRecipient().find(recipient_dir_), std::string::npos);
  StatusOr<std::string> point = recipient->RecipientPublicPoint(Soon());
  ASSERT_TRUE(point.ok()) << point.status().ToString();
  EXPECT_EQ(*point, info.public_point);

  std::string previous;
  for (int i = 0; i < 8; ++i) {
    const Ephemeral ephemeral = Ephemeral::Generate();
    ASSERT_EQ(ephemeral.point.size(), kP256PointSize);
    const std::string expected = HostSharedSecret(ephemeral, info.public_point);
    ASSERT_EQ(expected.size(), kP256SharedSecretSize);
    StatusOr<std::string> secret = TpmSharedSecret(*recipient, ephemeral);
    ASSERT_TRUE(secret.ok()) << i << ": " << secret.status().ToString();
    EXPECT_TRUE(*secret == expected) << "ephemeral " << i << ": the TPM's Z differs from OpenSSL's";
    EXPECT_FALSE(*secret == previous) << "two ephemerals gave the same Z";
    previous = *secret;
  }
  EXPECT_EQ(backend->stats().connection_losses, 0u);

  Status no_family = backend->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(no_family)) << no_family.ToString();
  EXPECT_NE(no_family.message().find("no key directory"), std::string::npos) << no_family.message();
}

TEST_F(TpmRecipientTest, ABackendWithoutARecipientDirectoryIsNoRecipient) {
  TpmBackendOptions options;
  options.tcti = tpm_->Tcti();
  StatusOr<std::unique_ptr<TpmBackend>> neither = TpmBackend::Create(options);
  EXPECT_TRUE(IsFailedPrecondition(neither.status())) << neither.status().ToString();

  StatusOr<TpmKeyInfo> v1 = InitKeyDir({tpm_->Tcti(), key_dir_}, kTpmFamilyLabel);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  options.key_dir = key_dir_;
  StatusOr<std::unique_ptr<TpmBackend>> family_only = TpmBackend::Create(options);
  ASSERT_TRUE(family_only.ok()) << family_only.status().ToString();
  EXPECT_EQ((*family_only)->AsRecipient(), nullptr);
  EXPECT_TRUE(IsFailedPrecondition((*family_only)->RecipientPublicPoint(Soon()).status()));
}

TEST_F(TpmRecipientTest, APointOffTheCurveIsInvalidArgumentAndTheBackendKeepsServing) {
  const RecipientInfo info = CreateKey();
  auto backend = NewBackend();
  ASSERT_NE(backend, nullptr);
  const Ephemeral ephemeral = Ephemeral::Generate();
  ASSERT_TRUE(TpmSharedSecret(*backend, ephemeral).ok());

  std::string off_curve = ephemeral.point;
  off_curve[kP256PointSize - 1] ^= 0x01;  // same x, another y: not on the curve
  ASSERT_FALSE(OnTheCurve(off_curve)) << "OpenSSL must refuse it too, or the test shows nothing";
  std::string zero(kP256PointSize, '\0');  // the point at infinity has no uncompressed encoding
  zero[0] = 0x04;
  const std::string compressed = std::string(1, '\x02') + ephemeral.point.substr(1, kEccP256CoordinateSize);
  for (const std::string& bad : {off_curve, zero, compressed, ephemeral.point.substr(0, 64), std::string()}) {
    StatusOr<SecureBytes> refused = backend->RecipientSharedSecret(bad, Soon());
    EXPECT_TRUE(IsInvalidArgument(refused.status())) << bad.size() << ": " << refused.status().ToString();
  }
  // The TPM itself refused the off-curve point (it was well formed): the link and key stay up.
  StatusOr<std::string> again = TpmSharedSecret(*backend, ephemeral);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(*again == HostSharedSecret(ephemeral, info.public_point));
  EXPECT_EQ(backend->stats().connection_losses, 0u);
  EXPECT_EQ(backend->stats().connects, 1u);
}

TEST_F(TpmRecipientTest, TheKeyIsReloadedAfterTheTpmRestartsAndGivesTheSameSecret) {
  const RecipientInfo info = CreateKey();
  auto backend = NewBackend(2000ms);
  ASSERT_NE(backend, nullptr);
  const Ephemeral ephemeral = Ephemeral::Generate();
  StatusOr<std::string> before = TpmSharedSecret(*backend, ephemeral);
  ASSERT_TRUE(before.ok()) << before.status().ToString();

  // Restarted between two requests: our handle is stale, one clean reload on a new context.
  ASSERT_TRUE(tpm_->Restart());
  StatusOr<std::string> after_restart = TpmSharedSecret(*backend, ephemeral);
  ASSERT_TRUE(after_restart.ok()) << after_restart.status().ToString();
  EXPECT_TRUE(*after_restart == *before);
  EXPECT_EQ(backend->stats().connection_losses, 1u);

  // Down for a while: UNAVAILABLE, then back by itself with the same key.
  tpm_->Kill();
  Status down = backend->RecipientSharedSecret(ephemeral.point, Soon()).status();
  EXPECT_TRUE(IsUnavailable(down)) << down.ToString();
  EXPECT_TRUE(IsUnavailable(backend->RecipientPublicPoint(Soon()).status()));
  ASSERT_TRUE(tpm_->Restart());
  StatusOr<std::string> after_crash = TpmSharedSecret(*backend, ephemeral);
  ASSERT_TRUE(after_crash.ok()) << after_crash.status().ToString();
  EXPECT_TRUE(*after_crash == *before);
  EXPECT_EQ(*backend->RecipientPublicPoint(Soon()), info.public_point);
  EXPECT_GE(backend->stats().connects, 3u);
}

TEST_F(TpmRecipientTest, BlobsOfAnotherTpmAreRefusedNamingItsTcti) {
  CreateKey();
  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");  // fresh state: other seeds
  ASSERT_NE(other, nullptr);
  RecipientConfig elsewhere = Config();
  elsewhere.tcti = other->Tcti();
  StatusOr<RecipientInfo> shown = ShowRecipient(elsewhere);
  EXPECT_TRUE(IsFailedPrecondition(shown.status())) << shown.status().ToString();
  EXPECT_NE(shown.status().message().find(other->Tcti()), std::string::npos) << shown.status().message();
  EXPECT_NE(shown.status().message().find("another TPM"), std::string::npos) << shown.status().message();

  auto stranger = NewBackend(defaults::kDeviceTimeout, other->Tcti());
  ASSERT_NE(stranger, nullptr);
  const Ephemeral ephemeral = Ephemeral::Generate();
  Status refused = stranger->RecipientSharedSecret(ephemeral.point, Soon()).status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_NE(refused.message().find(other->Tcti()), std::string::npos) << refused.message();
  EXPECT_TRUE(IsFailedPrecondition(stranger->RecipientPublicPoint(Soon()).status()));
  // Nothing was cached: a key of its own put in the directory serves without a restart.
  std::filesystem::remove(recipient_dir_ + "/" + kRecipientPublicFile);
  std::filesystem::remove(recipient_dir_ + "/" + kRecipientPrivateFile);
  StatusOr<RecipientInfo> replacement = CreateRecipientKey(elsewhere);
  ASSERT_TRUE(replacement.ok()) << replacement.status().ToString();
  StatusOr<std::string> replaced_secret = TpmSharedSecret(*stranger, ephemeral);
  ASSERT_TRUE(replaced_secret.ok()) << replaced_secret.status().ToString();
  EXPECT_TRUE(*replaced_secret == HostSharedSecret(ephemeral, replacement->public_point));
  // The other TPM itself is fine: its own key works next to the refused one.
  RecipientConfig own = Config();
  own.tcti = other->Tcti();
  own.recipient_dir = dir_.path() + "/other-recipient";
  StatusOr<RecipientInfo> own_info = CreateRecipientKey(own);
  ASSERT_TRUE(own_info.ok()) << own_info.status().ToString();
  auto own_backend = NewBackend(defaults::kDeviceTimeout, other->Tcti(), "", own.recipient_dir);
  StatusOr<std::string> secret = TpmSharedSecret(*own_backend, ephemeral);
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_TRUE(*secret == HostSharedSecret(ephemeral, own_info->public_point));
}

TEST_F(TpmRecipientTest, AHungTpmCostsTheDeadlineNotAHang) {
  CreateKey();
  auto backend = NewBackend(300ms);
  ASSERT_NE(backend, nullptr);
  const Ephemeral ephemeral = Ephemeral::Generate();
  ASSERT_TRUE(TpmSharedSecret(*backend, ephemeral).ok());

  tpm_->Pause();  // the next command sticks in the TPM
  Status stuck = backend->RecipientSharedSecret(ephemeral.point, Soon()).status();
  EXPECT_TRUE(IsUnavailable(stuck)) << stuck.ToString();
  Status queued = backend->RecipientPublicPoint(Soon()).status();
  EXPECT_TRUE(IsUnavailable(queued)) << queued.ToString();
  tpm_->Resume();

  StatusOr<std::string> secret = UnavailableError("not tried");
  EXPECT_TRUE(Eventually(
      [&] {
        secret = TpmSharedSecret(*backend, ephemeral);
        return secret.ok();
      },
      5s))
      << secret.status().ToString();
  EXPECT_TRUE(Eventually([&] { return backend->calls_stuck() == 0; }, 5s));
}

TEST_F(TpmRecipientTest, ASecondKeyIsRefusedAndTheFirstStays) {
  const RecipientInfo first = CreateKey();
  StatusOr<RecipientInfo> second = CreateRecipientKey(Config());
  EXPECT_EQ(second.status().code(), StatusCode::kAlreadyExists) << second.status().ToString();
  StatusOr<RecipientInfo> shown = ShowRecipient(Config());
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->public_point, first.public_point);
  // Created as 0700 / 0600.
  struct stat st {};
  ASSERT_EQ(::stat(recipient_dir_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  for (const char* file : {kRecipientPublicFile, kRecipientPrivateFile}) {
    ASSERT_EQ(::stat((recipient_dir_ + "/" + file).c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_mode & 07777, 0600u) << file;
  }
}

TEST_F(TpmRecipientTest, NoKeyAndUnsafePermissionsAreRefused) {
  // No key yet: NOT_FOUND for the tool, FAILED_PRECONDITION for the backend (configuration).
  std::filesystem::create_directory(recipient_dir_);
  std::filesystem::permissions(recipient_dir_, std::filesystem::perms(0700));
  EXPECT_TRUE(IsNotFound(ShowRecipient(Config()).status()));
  auto backend = NewBackend();
  Status missing = backend->RecipientPublicPoint(Soon()).status();
  EXPECT_TRUE(IsFailedPrecondition(missing)) << missing.ToString();

  std::filesystem::permissions(recipient_dir_, std::filesystem::perms(0777));
  Status open_dir = CreateRecipientKey(Config()).status();
  EXPECT_TRUE(IsFailedPrecondition(open_dir)) << open_dir.ToString();
  EXPECT_NE(open_dir.message().find("chmod 700"), std::string::npos) << open_dir.message();
  EXPECT_FALSE(std::filesystem::exists(recipient_dir_ + "/" + kRecipientPublicFile));

  std::filesystem::permissions(recipient_dir_, std::filesystem::perms(0700));
  CreateKey();
  const std::string priv = recipient_dir_ + "/" + kRecipientPrivateFile;
  std::filesystem::permissions(priv, std::filesystem::perms(0640));
  Status readable = ShowRecipient(Config()).status();
  EXPECT_TRUE(IsFailedPrecondition(readable)) << readable.ToString();
  EXPECT_NE(readable.message().find("chmod 600"), std::string::npos) << readable.message();
  auto second_backend = NewBackend();
  EXPECT_TRUE(IsFailedPrecondition(second_backend->RecipientPublicPoint(Soon()).status()));
  std::filesystem::permissions(priv, std::filesystem::perms(0600));  // fixed: served without a restart
  EXPECT_TRUE(second_backend->RecipientPublicPoint(Soon()).ok());
}

TEST_F(TpmRecipientTest, AKeyOfAnotherKindUnderTheRecipientNamesIsRefused) {
  // A key version's AES key (same TPM, loads fine) put where the recipient key belongs.
  ASSERT_TRUE(InitKeyDir({tpm_->Tcti(), key_dir_}, kTpmFamilyLabel).ok());
  std::filesystem::create_directory(recipient_dir_);
  std::filesystem::permissions(recipient_dir_, std::filesystem::perms(0700));
  std::filesystem::copy_file(key_dir_ + "/v000001.aes.pub", recipient_dir_ + "/" + kRecipientPublicFile);
  std::filesystem::copy_file(key_dir_ + "/v000001.aes.priv", recipient_dir_ + "/" + kRecipientPrivateFile);
  Status shown = ShowRecipient(Config()).status();
  EXPECT_TRUE(IsFailedPrecondition(shown)) << shown.ToString();
  EXPECT_NE(shown.message().find("P-256"), std::string::npos) << shown.message();
  auto backend = NewBackend();
  EXPECT_TRUE(IsFailedPrecondition(backend->RecipientPublicPoint(Soon()).status()));
}

// swtpm holds 3 transient objects: an AES-CFB+HMAC version (2) and the recipient key (1) fill it, and
// loading either needs the primary too. The backend makes room instead of failing for object memory.
TEST_F(TpmRecipientTest, AKeyFamilyAndTheRecipientKeyShareTheTpmsObjectSlots) {
  ASSERT_TRUE(InitKeyDir({tpm_->Tcti(), key_dir_}, kTpmFamilyLabel).ok());
  // The recipient key in the key directory itself: versions and recipient files side by side.
  recipient_dir_ = key_dir_;
  const RecipientInfo info = CreateKey();
  auto backend = NewBackend(5000ms, "", key_dir_);
  ASSERT_NE(backend, nullptr);
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  for (int i = 0; i < 4; ++i) {
    StatusOr<std::string> sealed = backend->Seal(1, "seed", "aad");
    ASSERT_TRUE(sealed.ok()) << i << ": " << sealed.status().ToString();
    const Ephemeral ephemeral = Ephemeral::Generate();
    StatusOr<std::string> secret = TpmSharedSecret(*backend, ephemeral);
    ASSERT_TRUE(secret.ok()) << i << ": " << secret.status().ToString();
    EXPECT_TRUE(*secret == HostSharedSecret(ephemeral, info.public_point));
    StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "aad");
    ASSERT_TRUE(opened.ok()) << i << ": " << opened.status().ToString();
    EXPECT_EQ(opened->view(), "seed");
    ASSERT_TRUE(backend->Probe(1).ok()) << i;
  }
  // Reloading the family with the recipient key loaded.
  ASSERT_TRUE(backend->LoadKeys().ok());
  ASSERT_TRUE(backend->RecipientPublicPoint(Soon()).ok());
  EXPECT_EQ(backend->stats().connection_losses, 0u);
}

}  // namespace
}  // namespace trousseau::tpm
