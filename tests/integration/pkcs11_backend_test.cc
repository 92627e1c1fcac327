// The PKCS#11 backend against a real SoftHSM2 token.
#include "hsm/pkcs11_backend.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include "core/envelope.h"
#include "core/kms_engine.h"
#include "hsm/pin_source.h"
#include "tools/support/softhsm_token.h"

namespace trousseau {
namespace {

using support::SoftHsmToken;

class Pkcs11BackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr) << "softhsm2-util could not create a token";
  }

  std::shared_ptr<hsm::Pkcs11Backend> NewBackend(hsm::Pkcs11BackendOptions options = {},
                                                 const std::string& uri_text = "") {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(uri_text.empty() ? token_->Uri() : uri_text);
    EXPECT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = hsm::Pkcs11Backend::Create(*std::move(uri), options);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return *std::move(backend);
  }

  std::unique_ptr<SoftHsmToken> token_;
};

TEST_F(Pkcs11BackendTest, SealsAndOpensOnTheDevice) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].version, 1u);
  EXPECT_EQ((*keys)[0].fingerprint.size(), 16u);

  const std::string seed(32, '\x5a');
  StatusOr<std::string> sealed = backend->Seal(1, seed, "aad");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(sealed->size(), seed.size() + backend->SealOverhead());
  EXPECT_EQ(sealed->find(seed), std::string::npos);
  StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "aad");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), seed);
}

TEST_F(Pkcs11BackendTest, SameInputSealsDifferentlyEachTime) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  ASSERT_TRUE(backend->LoadKeys().ok());
  EXPECT_NE(*backend->Seal(1, "seed", ""), *backend->Seal(1, "seed", ""));
}

TEST_F(Pkcs11BackendTest, AnyFlippedBitOrOtherAadFailsAuthenticationAsInvalidArgument) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "0123456789abcdef0123456789abcdef", "header");
  for (size_t i = 0; i < sealed.size(); i += 7) {
    std::string tampered = sealed;
    tampered[i] ^= 0x01;
    Status s = backend->Open(1, tampered, "header").status();
    EXPECT_TRUE(IsInvalidArgument(s)) << "byte " << i << ": " << s.ToString();
  }
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, "other header").status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed.substr(0, 20), "header").status()));
  // The device stays healthy after forgeries.
  EXPECT_TRUE(backend->Probe(1).ok());
}

TEST_F(Pkcs11BackendTest, EveryVersionOpensItsOwnAndOnlyItsOwnCiphertexts) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  auto backend = NewBackend();
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_NE((*keys)[0].fingerprint, (*keys)[1].fingerprint);
  const std::string by_v1 = *backend->Seal(1, "seed", "");
  EXPECT_EQ(backend->Open(1, by_v1, "")->view(), "seed");
  EXPECT_TRUE(IsInvalidArgument(backend->Open(2, by_v1, "").status()));
  EXPECT_TRUE(IsNotFound(backend->Seal(3, "seed", "").status()));
}

TEST_F(Pkcs11BackendTest, FingerprintIsStableAcrossConnectionsAndChangesWhenTheKeyIsRecreated) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  std::string first;
  {
    auto backend = NewBackend();
    first = (*backend->LoadKeys())[0].fingerprint;
  }
  {
    auto backend = NewBackend({.sessions = 2, .session_key_copies = false});
    EXPECT_EQ((*backend->LoadKeys())[0].fingerprint, first);
  }
  ASSERT_TRUE(token_->DestroyKey(1).ok());
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  EXPECT_NE((*backend->LoadKeys())[0].fingerprint, first);
}

TEST_F(Pkcs11BackendTest, ReloadPicksUpNewVersionsAndDropsRemovedOnes) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  ASSERT_EQ(backend->LoadKeys()->size(), 1u);
  const std::string by_v1 = *backend->Seal(1, "seed", "");
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok());
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ(backend->Open(1, by_v1, "")->view(), "seed");
  ASSERT_TRUE(token_->DestroyKey(1).ok());
  ASSERT_EQ(backend->LoadKeys()->size(), 1u);
  EXPECT_TRUE(IsNotFound(backend->Open(1, by_v1, "").status()));
}

TEST_F(Pkcs11BackendTest, ReloadWithSessionCopiesCountsOnlyTokenObjects) {
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
  auto backend = NewBackend({.session_key_copies = true});
  ASSERT_EQ(backend->LoadKeys()->size(), 1u);
  const std::string by_v1 = *backend->Seal(1, "seed", "");
  ASSERT_TRUE(token_->GenerateCopyableKek(2).ok());
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ(keys->size(), 2u);
  EXPECT_EQ(backend->Open(1, by_v1, "")->view(), "seed");
}

TEST_F(Pkcs11BackendTest, RefusesAnExtractableOrNonSensitiveKey) {
  ASSERT_TRUE(token_->GenerateUnsafeKey(1).ok());
  auto backend = NewBackend();
  Status s = backend->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("extractable"), std::string::npos) << s.message();
}

// A key that is not CKA_PRIVATE can be used by any process that opens a session, without the PIN.
TEST_F(Pkcs11BackendTest, RefusesAKeyUsableWithoutLogin) {
  ASSERT_TRUE(token_->GeneratePublicKey(1).ok());
  auto backend = NewBackend();
  Status s = backend->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("not private (CKA_PRIVATE=false)"), std::string::npos) << s.message();
}

TEST_F(Pkcs11BackendTest, AnUnsafeNewVersionLeavesTheLoadedKeysInService) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend();
  ASSERT_TRUE(backend->LoadKeys().ok());
  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  EXPECT_TRUE(IsFailedPrecondition(backend->LoadKeys().status()));
  EXPECT_TRUE(backend->Seal(1, "seed", "").ok());
}

TEST_F(Pkcs11BackendTest, WorksWithoutSessionKeyCopiesAndWithOneSession) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend({.sessions = 1, .session_key_copies = false});
  ASSERT_TRUE(backend->LoadKeys().ok());
  // The tamper path probes the device on a second lease; with one session it must not deadlock.
  std::string sealed = *backend->Seal(1, "seed", "");
  sealed.back() ^= 1;
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, "").status()));
}

TEST_F(Pkcs11BackendTest, MissingTokenIsUnavailable) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto backend = NewBackend({},
                            "pkcs11:token=no-such-token;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&"
                            "pin-source=file:" +
                                token_->pin_file());
  Status s = backend->LoadKeys().status();
  EXPECT_TRUE(IsUnavailable(s)) << s.ToString();
  EXPECT_NE(s.message().find("no-such-token"), std::string::npos);
}

// The fault shim forwards to SoftHSM and appends one line per C_Login to a file: every login the
// backend attempts is counted, not inferred from a message.
class RejectedPinTest : public Pkcs11BackendTest {
 protected:
  void SetUp() override {
    Pkcs11BackendTest::SetUp();
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    login_log_ = token_->dir() + "/logins";
    setenv("TROUSSEAU_FAULT_SHIM_CALL_LOG", login_log_.c_str(), 1);
    pin_file_ = token_->dir() + "/operator.pin";
    WritePin("00000000");
  }
  void TearDown() override { unsetenv("TROUSSEAU_FAULT_SHIM_CALL_LOG"); }

  // As an operator fixing it would: a new file renamed over the old one.
  void WritePin(const std::string& pin) {
    const std::string tmp = pin_file_ + ".tmp";
    std::ofstream(tmp) << pin << "\n";
    chmod(tmp.c_str(), 0600);
    std::rename(tmp.c_str(), pin_file_.c_str());
  }
  std::string Uri() const {
    return "pkcs11:token=" + token_->label() +
           ";object=kek?module-path=" FAULT_SHIM_PATH "&pin-source=file:" + pin_file_;
  }
  int LoginAttempts() const {
    std::ifstream log(login_log_);
    int lines = 0;
    for (std::string line; std::getline(log, line);) lines += line.starts_with("C_Login ");
    return lines;
  }

  std::string login_log_, pin_file_;
};

TEST_F(RejectedPinTest, IsTriedOnceNotUntilTheTokenLocks) {
  auto backend = NewBackend({}, Uri());
  Status first = backend->LoadKeys().status();
  EXPECT_TRUE(IsPermissionDenied(first)) << first.ToString();
  EXPECT_NE(first.message().find("CKR_PIN_INCORRECT"), std::string::npos) << first.ToString();
  EXPECT_EQ(first.message().find("00000000"), std::string::npos);
  for (int i = 0; i < 10; ++i) {
    Status load = backend->LoadKeys().status();
    EXPECT_TRUE(IsPermissionDenied(load)) << load.ToString();
    EXPECT_NE(load.message().find("not trying that PIN again"), std::string::npos) << load.ToString();
    EXPECT_FALSE(backend->Probe(1).ok());
  }
  EXPECT_EQ(LoginAttempts(), 1);
}

TEST_F(RejectedPinTest, AChangedPinFileIsTriedWithoutASignal) {
  auto backend = NewBackend({}, Uri());
  ASSERT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  WritePin(support::kTestUserPin);
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_TRUE(backend->Probe(1).ok());
  EXPECT_EQ(LoginAttempts(), 2);
}

// A SIGHUP sent before the PIN was refused (a key rotation's, say) is no go-ahead to try it again.
TEST_F(RejectedPinTest, ASighupFromBeforeTheRefusalDoesNotUnblockIt) {
  auto backend = NewBackend({}, Uri());
  backend->AllowLoginRetry();
  ASSERT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  EXPECT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  EXPECT_EQ(LoginAttempts(), 1);
}

TEST_F(RejectedPinTest, SighupTriesTheSamePinOnceMore) {
  auto backend = NewBackend({}, Uri());
  ASSERT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  backend->AllowLoginRetry();
  EXPECT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  EXPECT_TRUE(IsPermissionDenied(backend->LoadKeys().status()));
  EXPECT_EQ(LoginAttempts(), 2);
}

TEST(PinSource, RefusesAPinFileOthersCanRead) {
  char templ[] = "/tmp/trousseau-pin-XXXXXX";
  const std::string dir = mkdtemp(templ);
  const std::string path = dir + "/pin";
  std::ofstream(path) << "1234\n";
  chmod(path.c_str(), 0644);
  StatusOr<SecureBytes> pin = hsm::ReadPinFile(path);
  EXPECT_TRUE(IsFailedPrecondition(pin.status()));
  EXPECT_NE(pin.status().message().find("0644"), std::string::npos) << pin.status().message();
  EXPECT_EQ(pin.status().message().find("1234"), std::string::npos);
  chmod(path.c_str(), 0600);
  pin = hsm::ReadPinFile(path);
  ASSERT_TRUE(pin.ok());
  EXPECT_EQ(pin->view(), "1234");
  std::remove(path.c_str());
  rmdir(dir.c_str());
}

TEST(PinSource, FallsBackToTheEnvironment) {
  setenv(hsm::kPinEnvVar, "4321\n", 1);
  StatusOr<std::optional<SecureBytes>> pin = hsm::LoadPin(std::nullopt);
  unsetenv(hsm::kPinEnvVar);
  ASSERT_TRUE(pin.ok() && pin->has_value());
  EXPECT_EQ((*pin)->view(), "4321");
  // The variable leaves the environment once read; a later login (after an outage) still has the PIN.
  EXPECT_EQ(getenv(hsm::kPinEnvVar), nullptr);
  EXPECT_EQ((*hsm::LoadPin(std::nullopt))->view(), "4321");
}

TEST(Pkcs11UriParse, TakesModuleTokenObjectAndPinSource) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(
      "pkcs11:token=k8s-kms;serial=abc;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/p");
  ASSERT_TRUE(uri.ok()) << uri.status().ToString();
  EXPECT_EQ(uri->module_path(), "/usr/lib/softhsm/libsofthsm2.so");
  EXPECT_EQ(uri->object_label(), "kek");
  EXPECT_EQ(uri->pin_file(), "/etc/p");
  EXPECT_EQ(uri->token_description(), "token 'k8s-kms' serial abc");
}

TEST(Pkcs11UriParse, TakesThePercentEncodedModuleInitialisationString) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(
      "pkcs11:token=NSS%20Certificate%20DB;object=kek?module-path=/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
      "&x-init-reserved=configdir%3D%27sql%3A%2Fvar%2Flib%2Fnss%27%20certPrefix%3D%27%27&pin-source=file:/etc/p");
  ASSERT_TRUE(uri.ok()) << uri.status().ToString();
  EXPECT_EQ(uri->init_reserved(), "configdir='sql:/var/lib/nss' certPrefix=''");
  EXPECT_EQ(uri->pin_file(), "/etc/p");

  StatusOr<hsm::Pkcs11Uri> plain = hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=kek?module-path=/m.so");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->init_reserved().has_value());
  EXPECT_TRUE(
      IsInvalidArgument(hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=k?module-path=/m.so&x-init-reserved=").status()));
}

TEST(Pkcs11UriParse, RefusesAPinValueWithoutEchoingIt) {
  StatusOr<hsm::Pkcs11Uri> uri =
      hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=kek?module-path=/m.so&pin-value=s3cr3t-pin");
  EXPECT_TRUE(IsInvalidArgument(uri.status()));
  EXPECT_EQ(uri.status().message().find("s3cr3t-pin"), std::string::npos);
  EXPECT_NE(uri.status().message().find("pin-source"), std::string::npos);
}

TEST(Pkcs11UriParse, ExplainsWhatIsMissingOrWrong) {
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse("not-a-uri").status()));
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=kek").status()));         // no module
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse("pkcs11:token=t?module-path=/m.so").status()));  // no object
  EXPECT_TRUE(IsInvalidArgument(hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=k;id=%01?module-path=/m.so").status()));
  EXPECT_TRUE(IsInvalidArgument(
      hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=k?module-path=/m.so&pin-source=relative/pin").status()));
}

// The mistakes operators make in a URI, each named by the attribute (values are never shown).
TEST(Pkcs11UriParse, PointsAtTheCulprit) {
  const auto message = [](const std::string& text) {
    return std::string(hsm::Pkcs11Uri::Parse(text).status().message());
  };
  EXPECT_NE(
      message("pkcs11:token=t;objct=kek?module-path=/m.so").find("unknown attribute objct= (did you mean object=?)"),
      std::string::npos)
      << message("pkcs11:token=t;objct=kek?module-path=/m.so");
  EXPECT_NE(message("pkcs11:token=t;object=kek&module-path=/m.so&pin-source=file:/p").find("starts with '?'"),
            std::string::npos);
  EXPECT_NE(message("pkcs11:token=t;object=kek;module-path=/m.so").find("module-path= belongs in the query"),
            std::string::npos);
  EXPECT_NE(message("pkcs11:token=t?object=kek&module-path=/m.so").find("object= belongs in the path"),
            std::string::npos);
  const std::string slot = message("pkcs11:token=t;object=kek;slot-id=3?module-path=/m.so");
  EXPECT_NE(slot.find("must not contain slot-id="), std::string::npos) << slot;
  EXPECT_NE(slot.find("token="), std::string::npos) << slot;
  const std::string secret = message("pkcs11:token=t;object=kek;p1n=s3cr3t-value?module-path=/m.so");
  EXPECT_NE(secret.find("an attribute no PKCS#11 URI has (not shown"), std::string::npos) << secret;
  EXPECT_EQ(secret.find("p1n"), std::string::npos) << "a name unlike any attribute is not shown: " << secret;
  EXPECT_EQ(secret.find("s3cr3t"), std::string::npos) << secret;
  // Nothing of a PIN, whatever it holds: a name unlike any attribute is not shown, pieces of a pin-value never.
  for (const std::string uri : {"pkcs11:token=t;object=kek;hunter2=x?module-path=/m.so",
                                "pkcs11:token=t;object=kek?module-path=/m.so&pin-value=ab&cd",
                                "pkcs11:token=t;object=kek?module-path=/m.so&pin-value=x&iid=y"}) {
    const std::string said = message(uri);
    EXPECT_FALSE(said.empty());
    for (const char* piece : {"hunter2", "cd", "iid"}) EXPECT_EQ(said.find(piece), std::string::npos) << said;
  }
  EXPECT_TRUE(hsm::Pkcs11Uri::Parse("pkcs11:token=t;object=kek?module-path=/m.so&x-gcm-iv=device").ok());
  EXPECT_TRUE(hsm::Pkcs11Uri::Parse("pkcs11:token=R&D;object=kek?module-path=/m.so").ok())
      << "'&' is allowed in a path value (RFC 7512)";
}

}  // namespace
}  // namespace trousseau
