// The PKCS#11 recipient key of multi-recipient envelopes (issue 14, docs/ha.md "How it works") on a
// real SoftHSM token: made by provisioning (hsm/recipient_admin.h), judged (hsm/recipient_key.h), and used by
// Pkcs11Backend as a RecipientDevice (x-recipient in the URI). The token's ECDH must agree with OpenSSL's;
// bad points are refused on the host; an outage (fault shim) ends without a restart.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <array>
#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <string>

#include "core/recipient_device.h"
#include "core/status.h"
#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/capabilities.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/ecdh.h"
#include "hsm/pkcs11_backend.h"
#include "hsm/pkcs11_uri.h"
#include "recipients/p256.h"
#include "hsm/recipient_admin.h"
#include "hsm/recipient_key.h"
#include "tests/testing/device_tokens.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;
using testing::NssDatabase;
using testing::OpencryptokiToken;

constexpr char kLabel[] = "trousseau-recipient";

Deadline In(std::chrono::milliseconds time) { return std::chrono::steady_clock::now() + time; }

// A fresh ephemeral P-256 key on the host (OpenSSL, through src/recipients), as a sealer makes one per
// envelope: the reference every device's ECDH must equal.
class Ephemeral {
 public:
  Ephemeral() : key_(*recipients::EphemeralKey::Generate()) {}
  const std::string& point() const { return key_.public_point(); }
  // ECDH of this ephemeral key with `recipient_point`, computed by OpenSSL: what a sealer computes.
  std::string SharedSecretWith(const std::string& recipient_point) const {
    StatusOr<SecureBytes> secret = key_.SharedSecret(recipient_point);
    return secret.ok() ? std::string(secret->view()) : "";
  }

 private:
  recipients::EphemeralKey key_;
};

// The token's URI with x-recipient; `object` empty: no KEK family (a recipient-only backend).
std::string RecipientUri(const SoftHsmToken& token, const std::string& object = "",
                         const std::string& module = support::kSoftHsmModule) {
  return StrCat("pkcs11:token=", PercentEncode(token.label()), object.empty() ? "" : ";object=", object,
                "?module-path=", module, "&pin-source=file:", token.pin_file(), "&x-recipient=", kLabel);
}

StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> Backend(const std::string& uri_text) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(uri_text, hsm::KeyFamilyInUri::kOptionalWithRecipient);
  if (!uri.ok()) return uri.status();
  return hsm::Pkcs11Backend::Create(*std::move(uri), {});
}

// Provisioning as trousseau-hsm-init would run it, on the token `family_uri` names: a logged-in read-write
// session, closed again after.
StatusOr<hsm::RecipientKeyInfo> CreateRecipient(const std::string& family_uri) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(family_uri);
  if (!uri.ok()) return uri.status();
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
  if (!admin.ok()) return admin.status();
  return hsm::CreateRecipientKey((*admin)->session(), (*admin)->token().slot, kLabel);
}
StatusOr<hsm::RecipientKeyInfo> CreateRecipient(const SoftHsmToken& token) { return CreateRecipient(token.Uri()); }

StatusOr<hsm::RecipientKeyInfo> ShowRecipient(const std::string& family_uri) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(family_uri);
  if (!uri.ok()) return uri.status();
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
  if (!admin.ok()) return admin.status();
  return hsm::ShowRecipient((*admin)->session(), kLabel);
}
StatusOr<hsm::RecipientKeyInfo> ShowRecipient(const SoftHsmToken& token) { return ShowRecipient(token.Uri()); }

// A directory of the test's own, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "pkcs11-recipient-XXXXXX").string();
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class Pkcs11RecipientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    StatusOr<hsm::RecipientKeyInfo> created = CreateRecipient(*token_);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    created_ = *std::move(created);
  }

  // The device's answer for `ephemeral` equals OpenSSL's on the host.
  void ExpectSameSecretAsOpenSsl(RecipientDevice& device, const Ephemeral& ephemeral) {
    ASSERT_EQ(ephemeral.point().size(), kP256PointSize);
    const std::string expected = ephemeral.SharedSecretWith(created_.public_point);
    ASSERT_EQ(expected.size(), kP256SharedSecretSize);
    StatusOr<SecureBytes> secret = device.RecipientSharedSecret(ephemeral.point(), In(10s));
    ASSERT_TRUE(secret.ok()) << secret.status().ToString();
    EXPECT_EQ(secret->view(), expected);
  }

  std::unique_ptr<SoftHsmToken> token_;
  hsm::RecipientKeyInfo created_;
};

TEST_F(Pkcs11RecipientTest, TheTokensSharedSecretIsTheOneOpenSslComputes) {
  ASSERT_EQ(created_.public_point.size(), kP256PointSize);
  EXPECT_EQ(created_.public_point[0], '\x04');
  EXPECT_TRUE(hsm::CheckP256Point(created_.public_point).ok());

  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(RecipientUri(*token_));
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  RecipientDevice& device = **backend;
  EXPECT_EQ(device.RecipientKind(), "pkcs11");
  EXPECT_NE(device.DescribeRecipient().find(kLabel), std::string::npos) << device.DescribeRecipient();

  StatusOr<std::string> point = device.RecipientPublicPoint(In(10s));
  ASSERT_TRUE(point.ok()) << point.status().ToString();
  EXPECT_EQ(*point, created_.public_point);

  std::set<std::string> secrets;
  for (int i = 0; i < 8; ++i) {
    Ephemeral ephemeral;
    ExpectSameSecretAsOpenSsl(device, ephemeral);
    secrets.insert(ephemeral.SharedSecretWith(created_.public_point));
  }
  EXPECT_EQ(secrets.size(), 8u);  // a fresh ephemeral gives a fresh secret
  // SoftHSM takes the raw point (PKCS#11 2.40), the first form tried; remembered for the next calls.
  EXPECT_EQ((*backend)->ecdh_peer_point_form(), hsm::p11::PeerPointForm::kRaw);

  // No KEK family in the URI: nothing to load, and said so.
  Status loaded = (*backend)->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(loaded)) << loaded.ToString();
  EXPECT_NE(loaded.message().find("no key family"), std::string::npos) << loaded.ToString();
}

TEST_F(Pkcs11RecipientTest, BesideAKeyFamilyBothServe) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(RecipientUri(*token_, "kek"));
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  StatusOr<std::vector<BackendKey>> keys = (*backend)->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  StatusOr<std::string> sealed = (*backend)->Seal(1, "seed", "aad");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  Ephemeral ephemeral;
  ExpectSameSecretAsOpenSsl(**backend, ephemeral);
  StatusOr<SecureBytes> opened = (*backend)->Open(1, *sealed, "aad");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed");
}

TEST_F(Pkcs11RecipientTest, ThePrivateKeyDerivesOnlyAndNeverLeavesTheToken) {
  StatusOr<hsm::RecipientKeyInfo> shown = ShowRecipient(*token_);
  ASSERT_TRUE(shown.ok()) << shown.status().ToString();
  EXPECT_EQ(shown->public_point, created_.public_point);
  EXPECT_EQ(shown->id, created_.id);
  EXPECT_FALSE(shown->id.empty());
  EXPECT_EQ(shown->violation, "");
  const hsm::RecipientKeyPolicy& policy = shown->policy;
  EXPECT_TRUE(policy.is_p256);
  EXPECT_TRUE(policy.token);
  EXPECT_TRUE(policy.is_private);
  EXPECT_TRUE(policy.sensitive);
  EXPECT_TRUE(policy.always_sensitive);
  EXPECT_FALSE(policy.extractable);
  EXPECT_TRUE(policy.never_extractable);
  EXPECT_TRUE(policy.derive);
  EXPECT_FALSE(policy.sign);
  EXPECT_FALSE(policy.decrypt);
  EXPECT_FALSE(policy.unwrap);

  // Made once: a second create is refused and leaves the first key as it was.
  StatusOr<hsm::RecipientKeyInfo> again = CreateRecipient(*token_);
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status().ToString();
  StatusOr<hsm::RecipientKeyInfo> after = ShowRecipient(*token_);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_EQ(after->public_point, created_.public_point);
}

// The DER OCTET STRING form (04 41 <point>) that some tokens want instead of the raw point: SoftHSM takes
// both, so the bytes we build for it are checked here against OpenSSL's secret (the backend only falls back
// to it on a token that refuses the raw point).
TEST_F(Pkcs11RecipientTest, TheDerFormOfThePeerPointGivesTheSameSecret) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
  ASSERT_TRUE(uri.ok()) << uri.status().ToString();
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
  ASSERT_TRUE(admin.ok()) << admin.status().ToString();
  StatusOr<hsm::RecipientKeyObjects> key = hsm::FindRecipientKey((*admin)->session(), kLabel);
  ASSERT_TRUE(key.ok()) << key.status().ToString();
  for (hsm::p11::PeerPointForm form : {hsm::p11::PeerPointForm::kRaw, hsm::p11::PeerPointForm::kDerOctetString}) {
    Ephemeral ephemeral;
    StatusOr<hsm::p11::EcdhSecret> derived =
        hsm::p11::DeriveEcdhSecret((*admin)->session(), key->private_key, ephemeral.point(), form);
    ASSERT_TRUE(derived.ok()) << derived.status().ToString();
    EXPECT_EQ(derived->form, form);
    EXPECT_EQ(derived->secret.view(), ephemeral.SharedSecretWith(created_.public_point));
  }
}

TEST(RecipientPolicyTest, EachViolationIsNamed) {
  const hsm::RecipientKeyPolicy good{.is_p256 = true,
                                     .token = true,
                                     .is_private = true,
                                     .sensitive = true,
                                     .extractable = false,
                                     .always_sensitive = true,
                                     .never_extractable = true,
                                     .derive = true,
                                     .sign = false,
                                     .decrypt = false,
                                     .unwrap = false};
  EXPECT_EQ(hsm::RecipientPolicyViolation(good), "");
  const auto violation = [&](auto change) {
    hsm::RecipientKeyPolicy bad = good;
    change(bad);
    return hsm::RecipientPolicyViolation(bad);
  };
  EXPECT_NE(violation([](auto& p) { p.is_p256 = false; }).find("P-256"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.token = false; }).find("CKA_TOKEN"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.is_private = false; }).find("CKA_PRIVATE"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.sensitive = false; }).find("CKA_SENSITIVE"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.extractable = true; }).find("CKA_EXTRACTABLE"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.never_extractable = false; }).find("CKA_NEVER_EXTRACTABLE"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.derive = false; }).find("CKA_DERIVE"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.sign = true; }).find("sign"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.decrypt = true; }).find("decrypt"), std::string::npos);
  EXPECT_NE(violation([](auto& p) { p.unwrap = true; }).find("unwrap"), std::string::npos);
}

// What a token must list for a recipient key (hsm/capabilities.h MissingForRecipient), on described tokens.
hsm::MechanismSupport Mechanism(unsigned long type, unsigned long flags, unsigned long min_bits,
                                unsigned long max_bits) {
  return {.type = type,
          .name = hsm::MechanismName(type),
          .listed = true,
          .flags = flags,
          .min_key_size = min_bits,
          .max_key_size = max_bits};
}

TEST(RecipientPolicyTest, ATokenNeedsEcKeyPairGenerationAndEcdhForP256) {
  hsm::TokenCapabilities token;
  token.mechanisms = {Mechanism(CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 256, 521),
                      Mechanism(CKM_ECDH1_DERIVE, CKF_DERIVE, 256, 521)};
  EXPECT_TRUE(hsm::MissingForRecipient(token).empty());
  EXPECT_TRUE(hsm::CanHoldRecipient(token).ok());

  token.mechanisms[0] = Mechanism(CKM_EC_KEY_PAIR_GEN, CKF_GENERATE_KEY_PAIR, 0, 0);  // sizes not said: admitted
  EXPECT_TRUE(hsm::MissingForRecipient(token).empty());

  token.mechanisms[1] = Mechanism(CKM_ECDH1_DERIVE, CKF_DERIVE, 384, 521);
  std::vector<std::string> missing = hsm::MissingForRecipient(token);
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0], "CKM_ECDH1_DERIVE for P-256 keys (key size 384-521 bits)");

  token.mechanisms[1] = Mechanism(CKM_ECDH1_DERIVE, 0, 256, 521);
  missing = hsm::MissingForRecipient(token, /*to_create=*/false);
  ASSERT_EQ(missing.size(), 1u);
  EXPECT_EQ(missing[0], "CKM_ECDH1_DERIVE with derive (has none)");

  // Using a key made elsewhere needs ECDH only; making one needs key pair generation too.
  token.mechanisms = {Mechanism(CKM_ECDH1_DERIVE, CKF_DERIVE, 256, 521)};
  EXPECT_TRUE(hsm::CanHoldRecipient(token, /*to_create=*/false).ok());
  Status refused = hsm::CanHoldRecipient(token);
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_NE(refused.message().find("CKM_EC_KEY_PAIR_GEN (not offered)"), std::string::npos) << refused.ToString();
}

TEST_F(Pkcs11RecipientTest, BadPointsAreInvalidArgumentAndTheDeviceKeepsServing) {
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(RecipientUri(*token_));
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  Ephemeral ephemeral;
  const std::string good = ephemeral.point();
  ASSERT_EQ(good.size(), kP256PointSize);

  std::string off_curve = good;
  off_curve.back() = static_cast<char>(off_curve.back() ^ 0x01);  // y+-1: not on the curve
  std::string compressed = good.substr(0, 33);
  compressed[0] = '\x02';
  std::string not_uncompressed = good;
  not_uncompressed[0] = '\x03';
  const std::string beyond_field = "\x04" + std::string(64, '\xff');  // x, y >= p
  const std::string all_zero = "\x04" + std::string(64, '\0');
  for (const std::string& bad : {std::string(), good.substr(0, 64), good + std::string(1, '\0'), off_curve, compressed,
                                 not_uncompressed, beyond_field, all_zero}) {
    StatusOr<SecureBytes> refused = (*backend)->RecipientSharedSecret(bad, In(10s));
    EXPECT_TRUE(IsInvalidArgument(refused.status())) << HexEncode(bad) << ": " << refused.status().ToString();
  }
  ExpectSameSecretAsOpenSsl(**backend, ephemeral);
}

// The key replaced on the token while the backend serves (an operator's rotation of this member): the old
// handle is gone, which reads as a lost connection; the reconnect finds the new key by its label, and the
// backend then gives the new point and its secrets, without a restart.
TEST_F(Pkcs11RecipientTest, AKeyReplacedOnTheTokenIsFoundAgainByItsLabel) {
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(RecipientUri(*token_));
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  Ephemeral before;
  ExpectSameSecretAsOpenSsl(**backend, before);

  hsm::RecipientKeyInfo replaced;
  {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
    ASSERT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
    StatusOr<hsm::RecipientKeyObjects> old = hsm::FindRecipientKey((*admin)->session(), kLabel);
    ASSERT_TRUE(old.ok()) << old.status().ToString();
    ASSERT_TRUE(hsm::p11::DestroyObject((*admin)->session(), old->private_key).ok());
    ASSERT_TRUE(hsm::p11::DestroyObject((*admin)->session(), old->public_key).ok());
    StatusOr<hsm::RecipientKeyInfo> created =
        hsm::CreateRecipientKey((*admin)->session(), (*admin)->token().slot, kLabel);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    replaced = *std::move(created);
  }
  ASSERT_NE(replaced.public_point, created_.public_point);

  EXPECT_TRUE(support::Eventually(
      [&] {
        StatusOr<std::string> point = (*backend)->RecipientPublicPoint(In(2s));
        return point.ok() && *point == replaced.public_point;
      },
      20s));
  Ephemeral after;
  StatusOr<SecureBytes> secret = (*backend)->RecipientSharedSecret(after.point(), In(10s));
  ASSERT_TRUE(secret.ok()) << secret.status().ToString();
  EXPECT_EQ(secret->view(), after.SharedSecretWith(replaced.public_point));
}

TEST_F(Pkcs11RecipientTest, ConfigurationErrorsAreFailedPrecondition) {
  // A URI without x-recipient: the backend holds no recipient key.
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> family_only = Backend(token_->Uri());
  ASSERT_TRUE(family_only.ok()) << family_only.status().ToString();
  Ephemeral ephemeral;
  Status none = (*family_only)->RecipientSharedSecret(ephemeral.point(), In(10s)).status();
  EXPECT_TRUE(IsFailedPrecondition(none)) << none.ToString();

  // x-recipient naming a key that is not on the token: said with its label, not as an outage.
  StatusOr<hsm::Pkcs11Uri> other = hsm::Pkcs11Uri::Parse(
      StrCat("pkcs11:token=", PercentEncode(token_->label()), "?module-path=", support::kSoftHsmModule,
             "&pin-source=file:", token_->pin_file(), "&x-recipient=no-such-recipient"),
      hsm::KeyFamilyInUri::kOptionalWithRecipient);
  ASSERT_TRUE(other.ok()) << other.status().ToString();
  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> missing = hsm::Pkcs11Backend::Create(*std::move(other), {});
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  Status absent = (*missing)->RecipientPublicPoint(In(10s)).status();
  EXPECT_TRUE(IsFailedPrecondition(absent)) << absent.ToString();
  EXPECT_NE(absent.message().find("no-such-recipient"), std::string::npos) << absent.ToString();

  // The key tools' parse still needs object=; only the recipient-only parse takes a URI without it.
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse(RecipientUri(*token_)).status()));
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse(StrCat("pkcs11:token=t?module-path=", support::kSoftHsmModule),
                                                      hsm::KeyFamilyInUri::kOptionalWithRecipient)
                                    .status()));
}

// The device behind the fault shim (tests/fault_shim): the link cut, or every call hanging.
class Pkcs11RecipientOutageTest : public Pkcs11RecipientTest {
 protected:
  void SetUp() override {
    Pkcs11RecipientTest::SetUp();
    if (HasFatalFailure()) return;
    control_ = token_->dir() + "/shim.control";
    support::WriteShimControl(control_, "up");
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control_.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(RecipientUri(*token_, "", FAULT_SHIM_PATH));
    ASSERT_TRUE(backend.ok()) << backend.status().ToString();
    backend_ = *std::move(backend);
  }
  void TearDown() override {
    support::WriteShimControl(control_, "up");  // releases hung calls before the backend waits for them
    backend_.reset();
    unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
    unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
  }

  bool SharedSecretWorks(const Ephemeral& ephemeral) {
    StatusOr<SecureBytes> secret = backend_->RecipientSharedSecret(ephemeral.point(), In(2s));
    return secret.ok() && secret->view() == ephemeral.SharedSecretWith(created_.public_point);
  }

  std::string control_;
  std::unique_ptr<hsm::Pkcs11Backend> backend_;
};

TEST_F(Pkcs11RecipientOutageTest, ALostLinkIsUnavailableAndRecoversWithoutARestart) {
  Ephemeral ephemeral;
  ExpectSameSecretAsOpenSsl(*backend_, ephemeral);

  support::WriteShimControl(control_, "down");
  Status during = backend_->RecipientSharedSecret(ephemeral.point(), In(5s)).status();
  EXPECT_TRUE(IsUnavailable(during)) << during.ToString();
  // Marked broken: the next calls reconnect, and fail as an outage while the link is down.
  Status still = backend_->RecipientSharedSecret(ephemeral.point(), In(5s)).status();
  EXPECT_TRUE(IsUnavailable(still)) << still.ToString();
  EXPECT_TRUE(IsUnavailable(backend_->RecipientPublicPoint(In(5s)).status()));

  support::WriteShimControl(control_, "up");
  EXPECT_TRUE(support::Eventually([&] { return SharedSecretWorks(ephemeral); }, 20s));
  StatusOr<std::string> point = backend_->RecipientPublicPoint(In(5s));
  ASSERT_TRUE(point.ok()) << point.status().ToString();
  EXPECT_EQ(*point, created_.public_point);  // the same key, found again by its label
}

TEST_F(Pkcs11RecipientOutageTest, AHungDeviceFailsByTheDeadlineAndServesOnceItAnswers) {
  Ephemeral ephemeral;
  ExpectSameSecretAsOpenSsl(*backend_, ephemeral);

  support::WriteShimControl(control_, "hang");
  Status hung = backend_->RecipientSharedSecret(ephemeral.point(), In(300ms)).status();
  EXPECT_TRUE(IsUnavailable(hung)) << hung.ToString();
  EXPECT_NE(hung.message().find("did not answer"), std::string::npos) << hung.ToString();

  support::WriteShimControl(control_, "up");
  EXPECT_TRUE(support::Eventually([&] { return SharedSecretWorks(ephemeral); }, 20s));
  EXPECT_TRUE(support::Eventually([&] { return backend_->calls_stuck() == 0; }, 20s));
}

// ---- NSS softoken (libsoftokn3 loaded directly, with x-init-reserved) ----

TEST(Pkcs11RecipientNss, MadeOnTheTokenAndItsSharedSecretIsOpenSsls) {
  if (std::string why = NssDatabase::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  NssDatabase nss(dir.path());
  testing::ProgramRun db = nss.Create();
  ASSERT_EQ(db.code, 0) << db.all();

  StatusOr<hsm::RecipientKeyInfo> created = CreateRecipient(nss.Uri());
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  EXPECT_EQ(created->violation, "");
  EXPECT_TRUE(created->policy.never_extractable);
  EXPECT_TRUE(created->policy.derive);
  EXPECT_FALSE(created->policy.sign);
  EXPECT_EQ(CreateRecipient(nss.Uri()).status().code(), StatusCode::kAlreadyExists);

  StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = Backend(nss.Uri() + "&x-recipient=" + kLabel);
  ASSERT_TRUE(backend.ok()) << backend.status().ToString();
  StatusOr<std::string> point = (*backend)->RecipientPublicPoint(In(20s));
  ASSERT_TRUE(point.ok()) << point.status().ToString();
  EXPECT_EQ(*point, created->public_point);
  for (int i = 0; i < 4; ++i) {
    Ephemeral ephemeral;
    StatusOr<SecureBytes> secret = (*backend)->RecipientSharedSecret(ephemeral.point(), In(20s));
    ASSERT_TRUE(secret.ok()) << secret.status().ToString();
    EXPECT_EQ(secret->view(), ephemeral.SharedSecretWith(created->public_point));
  }
  EXPECT_NE((*backend)->ecdh_peer_point_form(), hsm::p11::PeerPointForm::kUnknown);
  std::string off_curve = Ephemeral().point();
  off_curve.back() = static_cast<char>(off_curve.back() ^ 0x01);
  EXPECT_TRUE(IsInvalidArgument((*backend)->RecipientSharedSecret(off_curve, In(20s)).status()));
  for (const std::string& output : nss.outputs()) EXPECT_EQ(output.find(NssDatabase::kPassword), std::string::npos);
}

// ---- opencryptoki's soft token (pkcsslotd; one per host: ctest RESOURCE_LOCK opencryptoki) ----

// Its soft token offers no EC mechanism (opencryptoki 3.8 as Debian builds it): creating a recipient key is
// refused before anything is made, naming what is missing, and nothing is left on the token.
TEST(Pkcs11RecipientOpencryptoki, ASoftTokenWithoutEcIsRefusedNamingWhatItLacks) {
  if (std::string why = OpencryptokiToken::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
  ScratchDir dir;
  ASSERT_FALSE(dir.path().empty());
  OpencryptokiToken ock(dir.path());
  testing::ProgramRun started = ock.Start();
  ASSERT_EQ(started.code, 0) << started.all();
  {
    // One module load for the whole test (opencryptoki is not loaded twice in one process here).
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(ock.Uri());
    ASSERT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
    StatusOr<hsm::RecipientKeyInfo> refused =
        hsm::CreateRecipientKey((*admin)->session(), (*admin)->token().slot, kLabel);
    EXPECT_TRUE(IsFailedPrecondition(refused.status())) << refused.status().ToString();
    EXPECT_NE(refused.status().message().find("CKM_EC_KEY_PAIR_GEN (not offered)"), std::string::npos)
        << refused.status().ToString();
    EXPECT_NE(refused.status().message().find("CKM_ECDH1_DERIVE (not offered)"), std::string::npos)
        << refused.status().ToString();
    EXPECT_TRUE(IsNotFound(hsm::ShowRecipient((*admin)->session(), kLabel).status()));
  }
  testing::ProgramRun stopped = ock.Stop();
  EXPECT_EQ(stopped.code, 0) << stopped.all();
  for (const std::string& output : ock.outputs()) {
    for (const char* pin : {OpencryptokiToken::kSoPin, OpencryptokiToken::kUserPin}) {
      EXPECT_EQ(output.find(pin), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace trousseau
