// Capability discovery (issue 18, item 1) on real PKCS#11 implementations, read by hsm/capabilities and shown by
// `trousseau-hsm-init selftest`:
//   SoftHSM                       everything: new keys are aes-gcm
//   opencryptoki's soft token     no AES-GCM: new keys are aes-cbc-hmac, an aes-cbc-hmac version passes selftest
//   NSS softoken (x-init-reserved) aes-gcm, a version made by `key generate` passes selftest
//   tpm2-pkcs11 over swtpm        refused with the pointer to the native TPM backend (configuration, exit 2)
// and the decision functions on their own, for tokens no device here is (a token no scheme can use, GCM without
// decrypt, key sizes in bits, write-protected, device-chosen IVs without AES-ECB).
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/capabilities.h"
#include "hsm/key_admin.h"
#include "hsm/p11/attributes.h"
#include "hsm/p11/calls.h"
#include "hsm/pkcs11_uri.h"
#include "tests/testing/device_tokens.h"
#include "tests/testing/program_runner.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tests/tpm/swtpm.h"
#include "tools/support/softhsm_token.h"

namespace trousseau::hsm {
namespace {

using nlohmann::json;
using testing::NssDatabase;
using testing::OpencryptokiToken;
using ToolResult = testing::ProgramRun;

constexpr char kTpm2Pkcs11Module[] = "/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so";

void WriteSecretFile(const std::string& path, const std::string& content) {
  std::ofstream(path) << content << "\n";
  chmod(path.c_str(), 0600);
}

bool Contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

// Each of `parts` is in `text` (what a tool printed): a test failure for each one missing, showing `text`.
void ExpectContainsAll(const std::string& text, std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts) EXPECT_TRUE(Contains(text, part)) << "no '" << part << "' in:\n" << text;
}

// Runs the tool (and any other program) to its end; stdout and stderr apart. The environment is this
// process's (the tests set what a child needs with setenv).
class Runner : public testing::ProgramRunner {
 public:
  explicit Runner(std::string dir) : ProgramRunner(std::move(dir), "run-") {}
  ToolResult Tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    return Run(std::move(args));
  }
};

// The token's capabilities through the same module load, token lookup and login the tools use.
StatusOr<TokenCapabilities> CapabilitiesOf(const AdminSession& admin) {
  return ReadTokenCapabilities(admin.api(), admin.token().slot);
}

StatusOr<std::unique_ptr<AdminSession>> OpenAdmin(const std::string& uri_text) {
  StatusOr<Pkcs11Uri> uri = Pkcs11Uri::Parse(uri_text);
  if (!uri.ok()) return uri.status();
  return AdminSession::Open(*uri);
}

// ---- the decision functions alone, on what a token could say ----

// (unsigned long: the PKCS#11 integer types, which ci/check-seams keeps out of tests by name.)
MechanismSupport Offered(unsigned long type, unsigned long flags, unsigned long min_size, unsigned long max_size) {
  return MechanismSupport{.type = type,
                          .name = MechanismName(type),
                          .listed = true,
                          .flags = flags,
                          .min_key_size = min_size,
                          .max_key_size = max_size};
}
MechanismSupport NotOffered(unsigned long type) { return MechanismSupport{.type = type, .name = MechanismName(type)}; }

ModuleIdentity Module(std::string manufacturer, std::string library_description) {
  ModuleIdentity module;
  module.manufacturer = std::move(manufacturer);
  module.library_description = std::move(library_description);
  module.library_version = "1.0";
  module.cryptoki_version = "2.40";
  return module;
}

// What opencryptoki's soft token says (devices18.md, and CapabilitiesOpencryptoki below reads the same for real),
// with SHA256_HMAC as `hmac`: an AES-only token when it is not offered.
TokenCapabilities OpencryptokiLike(MechanismSupport hmac) {
  TokenCapabilities token;
  token.module = {.manufacturer = "IBM",
                  .library_description = "Meta PKCS11 LIBRARY",
                  .library_version = "3.8",
                  .cryptoki_version = "2.20"};
  token.token_label = "aes-only";
  token.token_model = "IBM SoftTok";
  token.token_manufacturer = "IBM Corp.";
  token.token_flags = CKF_TOKEN_INITIALIZED | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_RNG;
  token.mechanism_count = 40;
  token.mechanisms = {Offered(CKM_AES_KEY_GEN, CKF_GENERATE, 16, 32),
                      NotOffered(CKM_AES_GCM),
                      Offered(CKM_AES_ECB, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP, 16, 32),
                      Offered(CKM_AES_CBC_PAD, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP, 16, 32),
                      Offered(CKM_GENERIC_SECRET_KEY_GEN, CKF_GENERATE, 80, 2048),
                      std::move(hmac)};
  return token;
}

TEST(CapabilityDecisions, ATokenNoSchemeCanUseGetsOneMessageNamingWhatEachSchemeLacksAndWhatItOffers) {
  const TokenCapabilities token = OpencryptokiLike(NotOffered(CKM_SHA256_HMAC));
  StatusOr<KeyScheme> scheme = SchemeForNewKeys(token);
  ASSERT_FALSE(scheme.ok());
  EXPECT_TRUE(IsFailedPrecondition(scheme.status())) << scheme.status().message();
  const std::string message(scheme.status().message());
  EXPECT_TRUE(Contains(message, "token 'aes-only' (IBM SoftTok by IBM Corp.)")) << message;
  EXPECT_TRUE(Contains(message, "aes-gcm needs CKM_AES_GCM (not offered)")) << message;
  EXPECT_TRUE(Contains(message, "aes-cbc-hmac needs CKM_SHA256_HMAC (not offered)")) << message;
  EXPECT_TRUE(Contains(message, "the token offers CKM_AES_KEY_GEN (generate; key size 16-32), CKM_AES_ECB")) << message;
  EXPECT_TRUE(Contains(message, "CKM_AES_CBC_PAD (encrypt, decrypt, wrap, unwrap; key size 16-32)")) << message;
  EXPECT_TRUE(Contains(message, "(40 mechanisms in all)")) << message;
  EXPECT_TRUE(Contains(message, "What your HSM must offer")) << message;
  // Serving is refused for both schemes too, each naming its own lack.
  EXPECT_TRUE(Contains(CanServe(token, KeyScheme::kAesGcm).message(),
                       "cannot serve aes-gcm key versions: it needs "
                       "CKM_AES_GCM (not offered)"));
  EXPECT_TRUE(Contains(CanServe(token, KeyScheme::kAesCbcHmac).message(), "it needs CKM_SHA256_HMAC (not offered)"));
}

TEST(CapabilityDecisions, WithHmacTheSameTokenGetsAesCbcHmacAndCannotServeAesGcm) {
  const TokenCapabilities token = OpencryptokiLike(Offered(CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, 0, 0));
  StatusOr<KeyScheme> scheme = SchemeForNewKeys(token);
  ASSERT_TRUE(scheme.ok()) << scheme.status().message();
  EXPECT_EQ(*scheme, KeyScheme::kAesCbcHmac);
  EXPECT_TRUE(CanServe(token, KeyScheme::kAesCbcHmac).ok());
  EXPECT_TRUE(IsFailedPrecondition(CanServe(token, KeyScheme::kAesGcm)));
}

TEST(CapabilityDecisions, UsageFlagsKeySizesAndWriteProtectionCount) {
  TokenCapabilities token = OpencryptokiLike(Offered(CKM_SHA256_HMAC, CKF_SIGN, 0, 0));
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT, 16, 32);
  EXPECT_EQ(MissingForNewKeys(token, KeyScheme::kAesGcm),
            std::vector<std::string>{"CKM_AES_GCM with decrypt (has encrypt)"});
  EXPECT_EQ(MissingForNewKeys(token, KeyScheme::kAesCbcHmac),
            std::vector<std::string>{"CKM_SHA256_HMAC with verify (has sign)"});
  EXPECT_FALSE(SchemeForNewKeys(token).ok());

  // Key sizes in bits (some modules): 128-256 admits AES-256, 128-192 does not; in bytes 16-24 does not.
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 128, 256);
  EXPECT_TRUE(MissingForNewKeys(token, KeyScheme::kAesGcm).empty());
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 128, 192);
  EXPECT_EQ(MissingToServe(token, KeyScheme::kAesGcm),
            std::vector<std::string>{"CKM_AES_GCM for 256-bit keys (key size 128-192)"});
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 16, 24);
  EXPECT_EQ(MissingToServe(token, KeyScheme::kAesGcm),
            std::vector<std::string>{"CKM_AES_GCM for 256-bit keys (key size 16-24)"});

  // A write-protected token serves the versions it has but takes no new ones.
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 16, 32);
  token.token_flags |= CKF_WRITE_PROTECTED;
  EXPECT_TRUE(CanServe(token, KeyScheme::kAesGcm).ok());
  EXPECT_EQ(MissingForNewKeys(token, KeyScheme::kAesGcm),
            std::vector<std::string>{"a token that is not write-protected"});
  EXPECT_FALSE(SchemeForNewKeys(token).ok());
}

TEST(CapabilityDecisions, DeviceChosenGcmIvsNeedAesEcbForTheFingerprint) {
  TokenCapabilities token = OpencryptokiLike(Offered(CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, 0, 0));
  token.mechanisms[1] = Offered(CKM_AES_GCM, CKF_ENCRYPT | CKF_DECRYPT, 16, 32);
  token.mechanisms[2] = NotOffered(CKM_AES_ECB);
  EXPECT_TRUE(CanServe(token, KeyScheme::kAesGcm, GcmIvSource::kCaller).ok());
  Status device = CanServe(token, KeyScheme::kAesGcm, GcmIvSource::kDevice);
  EXPECT_TRUE(IsFailedPrecondition(device));
  EXPECT_TRUE(Contains(device.message(), "with IVs the device chooses: it needs CKM_AES_ECB (not offered)"))
      << device.message();
}

TEST(CapabilityDecisions, Tpm2Pkcs11IsRecognisedByItsCGetInfoStrings) {
  // What tpm2-pkcs11 1.9.0 answers (devices18.md), and the other modules seen on Debian bookworm.
  const ModuleIdentity tpm2{.manufacturer = "tpm2-software.github.io",
                            .library_description = "TPM2.0 Cryptoki",
                            .library_version = "1.9",
                            .cryptoki_version = "2.40"};
  EXPECT_TRUE(IsTpm2Pkcs11(tpm2));
  EXPECT_FALSE(IsTpm2Pkcs11(Module("IBM", "Meta PKCS11 LIBRARY")));
  EXPECT_FALSE(IsTpm2Pkcs11(Module("SoftHSM", "Implementation of PKCS11")));
  EXPECT_FALSE(IsTpm2Pkcs11(Module("Mozilla Foundation", "NSS Internal Crypto Services")));
  Status refused = RefuseTpm2Pkcs11(tpm2);
  EXPECT_TRUE(IsFailedPrecondition(refused));
  EXPECT_TRUE(Contains(refused.message(), "native TPM 2.0 backend")) << refused.message();
  EXPECT_TRUE(Contains(refused.message(), "trousseau-hsm-init tpm init")) << refused.message();
  // Whatever the token would offer, it is the TPM's message that new keys and serving get.
  TokenCapabilities token = OpencryptokiLike(Offered(CKM_SHA256_HMAC, CKF_SIGN | CKF_VERIFY, 0, 0));
  token.module = tpm2;
  EXPECT_TRUE(Contains(SchemeForNewKeys(token).status().message(), "native TPM 2.0 backend"));
  EXPECT_TRUE(Contains(CanServe(token, KeyScheme::kAesCbcHmac).message(), "native TPM 2.0 backend"));
}

// ---- SoftHSM ----

class CapabilitiesSoftHsm : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = support::SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    runner_ = std::make_unique<Runner>(token_->dir());
  }
  void TearDown() override {
    if (runner_ == nullptr) return;
    for (const std::string& output : runner_->outputs()) {
      EXPECT_FALSE(Contains(output, support::kTestUserPin)) << "a PIN was printed:\n" << output;
    }
  }
  std::unique_ptr<support::SoftHsmToken> token_;
  std::unique_ptr<Runner> runner_;
};

TEST_F(CapabilitiesSoftHsm, OffersEverySchemeAndNewKeysAreAesGcm) {
  StatusOr<std::unique_ptr<AdminSession>> admin = OpenAdmin(token_->Uri());
  ASSERT_TRUE(admin.ok()) << admin.status().message();
  StatusOr<TokenCapabilities> token = CapabilitiesOf(**admin);
  ASSERT_TRUE(token.ok()) << token.status().message();
  EXPECT_EQ(token->module.manufacturer, "SoftHSM");
  EXPECT_EQ(token->token_label, token_->label());
  EXPECT_EQ(token->token_model, "SoftHSM v2");
  EXPECT_NE(token->token_flags & CKF_LOGIN_REQUIRED, 0u);
  EXPECT_GT(token->mechanism_count, std::size(kMechanismsOfInterest));
  for (const MechanismSupport& mechanism : token->mechanisms) EXPECT_TRUE(mechanism.listed) << mechanism.name;
  EXPECT_TRUE(token->Of(CKM_AES_GCM).Has(CKF_ENCRYPT | CKF_DECRYPT));
  EXPECT_TRUE(token->Of(CKM_SHA256_HMAC).Has(CKF_SIGN | CKF_VERIFY));
  StatusOr<KeyScheme> scheme = SchemeForNewKeys(*token);
  ASSERT_TRUE(scheme.ok()) << scheme.status().message();
  EXPECT_EQ(*scheme, KeyScheme::kAesGcm);
  EXPECT_TRUE(CanServe(*token, KeyScheme::kAesGcm).ok());
  EXPECT_TRUE(CanServe(*token, KeyScheme::kAesGcm, GcmIvSource::kDevice).ok());
  EXPECT_TRUE(CanServe(*token, KeyScheme::kAesCbcHmac).ok());
}

TEST_F(CapabilitiesSoftHsm, SelftestPrintsTheModuleTheTokenAndTheSchemeOfNewKeys) {
  ASSERT_EQ(runner_->Tool({"key", "generate", "--pkcs11-uri", token_->Uri()}).code, 0);
  ToolResult human = runner_->Tool({"selftest", "--pkcs11-uri", token_->Uri()});
  EXPECT_EQ(human.code, 0) << human.all();
  const std::string token_line = "token       '" + token_->label() + "': SoftHSM v2 by SoftHSM project";
  ExpectContainsAll(
      human.out,
      {"module      'Implementation of PKCS11' 2.6 by SoftHSM", token_line,
       "mechanisms  CKM_AES_KEY_GEN (generate; key size 16-32)", "CKM_AES_GCM (encrypt, decrypt; key size 16-32)",
       "schemes     aes-gcm: new keys and serving", "new keys    aes-gcm\n", "version 1 (active)  aes-gcm  kek-v1-"});

  ToolResult machine = runner_->Tool({"selftest", "--pkcs11-uri", token_->Uri(), "--json"});
  EXPECT_EQ(machine.code, 0) << machine.all();
  json result = json::parse(machine.out, nullptr, false);
  ASSERT_FALSE(result.is_discarded()) << machine.out;
  const json& capabilities = result["capabilities"];
  EXPECT_EQ(capabilities["module"]["manufacturer"], "SoftHSM") << machine.out;
  EXPECT_EQ(capabilities["token"]["model"], "SoftHSM v2") << machine.out;
  EXPECT_EQ(capabilities["new_keys"], "aes-gcm") << machine.out;
  EXPECT_TRUE(capabilities["new_keys_problem"].is_null()) << machine.out;
  ASSERT_EQ(capabilities["mechanisms"].size(), std::size(kMechanismsOfInterest)) << machine.out;
  EXPECT_EQ(capabilities["mechanisms"][1]["name"], "CKM_AES_GCM");
  EXPECT_EQ(capabilities["mechanisms"][1]["offered"], true);
  EXPECT_TRUE(capabilities["missing"]["aes-gcm"]["to_serve"].empty()) << machine.out;
  EXPECT_TRUE(capabilities["missing"]["aes-cbc-hmac"]["for_new_keys"].empty()) << machine.out;
  ASSERT_EQ(result["keys"].size(), 1u) << machine.out;
  EXPECT_EQ(result["keys"][0]["scheme"], "aes-gcm");
  EXPECT_EQ(result["keys"][0]["round_trip"], true);
  EXPECT_EQ(result["keys"][0]["tamper_rejected"], true);
}

// ---- opencryptoki's soft token (pkcsslotd; one per host: ctest RESOURCE_LOCK opencryptoki) ----

class CapabilitiesOpencryptoki : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = OpencryptokiToken::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
    dir_ = std::make_unique<testing::TempDir>();
    runner_ = std::make_unique<Runner>(dir_->path());
    ock_ = std::make_unique<OpencryptokiToken>(dir_->path());
    ToolResult started = ock_->Start();
    ASSERT_EQ(started.code, 0) << started.all();
    uri_ = ock_->Uri();
  }
  void TearDown() override {
    if (ock_ == nullptr) return;
    ock_->Stop();
    ock_->ExpectNoPinIn(runner_->outputs());
  }

  std::unique_ptr<testing::TempDir> dir_;
  std::unique_ptr<Runner> runner_;
  std::unique_ptr<OpencryptokiToken> ock_;
  std::string uri_;
};

// Version 1 of family `kek` as aes-cbc-hmac, as `key generate` makes it on a token without GCM.
Status CreateAesCbcHmacVersion(const Session& session) {
  return GenerateVersionKeys(session, "kek", 1, KeyScheme::kAesCbcHmac).status();
}

TEST_F(CapabilitiesOpencryptoki, NoAesGcmSoNewKeysAreAesCbcHmacAndSelftestRunsSuchAVersion) {
  // What the token says, read in this process (one module load: opencryptoki must not be loaded twice here).
  {
    StatusOr<std::unique_ptr<AdminSession>> admin = OpenAdmin(uri_);
    ASSERT_TRUE(admin.ok()) << admin.status().message();
    StatusOr<TokenCapabilities> token = CapabilitiesOf(**admin);
    ASSERT_TRUE(token.ok()) << token.status().message();
    EXPECT_EQ(token->module.manufacturer, "IBM");
    EXPECT_EQ(token->module.library_description, "Meta PKCS11 LIBRARY");
    EXPECT_EQ(token->token_model, "IBM SoftTok");
    EXPECT_FALSE(token->Of(CKM_AES_GCM).listed);
    EXPECT_TRUE(token->Of(CKM_AES_CBC_PAD).Has(CKF_ENCRYPT | CKF_DECRYPT));
    EXPECT_TRUE(token->Of(CKM_SHA256_HMAC).Has(CKF_SIGN | CKF_VERIFY));
    EXPECT_TRUE(token->Of(CKM_GENERIC_SECRET_KEY_GEN).Has(CKF_GENERATE));
    StatusOr<KeyScheme> scheme = SchemeForNewKeys(*token);
    ASSERT_TRUE(scheme.ok()) << scheme.status().message();
    EXPECT_EQ(*scheme, KeyScheme::kAesCbcHmac);
    Status gcm = CanServe(*token, KeyScheme::kAesGcm);
    EXPECT_TRUE(IsFailedPrecondition(gcm));
    EXPECT_TRUE(Contains(gcm.message(), "CKM_AES_GCM (not offered)")) << gcm.message();
    EXPECT_TRUE(Contains(gcm.message(), "CKM_AES_CBC_PAD (encrypt, decrypt")) << gcm.message();
    EXPECT_TRUE(CanServe(*token, KeyScheme::kAesCbcHmac).ok());

    // An empty family: selftest shows the token and fails on the missing key (exit 1), not on the token.
    ToolResult empty = runner_->Tool({"selftest", "--pkcs11-uri", uri_});
    EXPECT_EQ(empty.code, 1) << empty.all();
    ExpectContainsAll(
        empty.out,
        {"module      'Meta PKCS11 LIBRARY' 3.8 by IBM", "token       'trousseau-ock': IBM SoftTok by IBM Corp.",
         "            CKM_AES_GCM (not offered)\n", "schemes     aes-gcm: unusable, missing CKM_AES_GCM (not offered)",
         "            aes-cbc-hmac: new keys and serving", "new keys    aes-cbc-hmac\n", "has no key"});

    ASSERT_TRUE(CreateAesCbcHmacVersion((*admin)->session()).ok());
  }

  ToolResult human = runner_->Tool({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(human.code, 0) << human.all();
  ExpectContainsAll(human.out,
                    {"version 1 (active)  aes-cbc-hmac  kek-v1-", "PASS KEK policy (HMAC key): 256-bit generic secret",
                     "PASS the token offers what aes-cbc-hmac needs", "PASS aes-cbc-hmac round trip on the device",
                     "PASS tamper check"});
  EXPECT_FALSE(Contains(human.out, "FAIL")) << human.out;

  ToolResult machine = runner_->Tool({"selftest", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(machine.code, 0) << machine.all();
  json result = json::parse(machine.out, nullptr, false);
  ASSERT_FALSE(result.is_discarded()) << machine.out;
  EXPECT_EQ(result["capabilities"]["new_keys"], "aes-cbc-hmac") << machine.out;
  EXPECT_EQ(result["capabilities"]["missing"]["aes-gcm"]["to_serve"], json::array({"CKM_AES_GCM (not offered)"}));
  ASSERT_EQ(result["keys"].size(), 1u) << machine.out;
  EXPECT_EQ(result["keys"][0]["scheme"], "aes-cbc-hmac");
  EXPECT_EQ(result["keys"][0]["tamper_rejected"], true);
}

// ---- NSS softoken, loaded directly with its initialisation string (x-init-reserved) ----

TEST(CapabilitiesNss, WithXInitReservedNewKeysAreAesGcmAndSelftestPasses) {
  if (std::string why = NssDatabase::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
  testing::TempDir dir;
  Runner runner(dir.path());
  NssDatabase nss(dir.path());
  ToolResult db = nss.Create();
  ASSERT_EQ(db.code, 0) << db.all();
  const std::string uri = nss.Uri();

  ASSERT_EQ(runner.Tool({"key", "generate", "--pkcs11-uri", uri}).code, 0) << runner.outputs().back();
  ToolResult human = runner.Tool({"selftest", "--pkcs11-uri", uri});
  EXPECT_EQ(human.code, 0) << human.all();
  ExpectContainsAll(human.out, {"module      'NSS Internal Crypto Services' 3.87 by Mozilla Foundation",
                                "token       'NSS Certificate DB': NSS 3 by Mozilla Foundation",
                                "new keys    aes-gcm\n", "PASS aes-gcm round trip on the device"});
  for (const std::vector<std::string>* outputs : {&runner.outputs(), &nss.outputs()}) {
    for (const std::string& output : *outputs) EXPECT_FALSE(Contains(output, NssDatabase::kPassword)) << output;
  }
}

// ---- tpm2-pkcs11 over a real swtpm: the TPM through PKCS#11 ----

TEST(CapabilitiesTpm2Pkcs11, SelftestSendsTheOperatorToTheNativeTpmBackend) {
  if (access(kTpm2Pkcs11Module, R_OK) != 0) {
    SKIP_OR_FAIL_IN_CI("tpm2-pkcs11 is not installed (Debian package libtpm2-pkcs11-1)");
  }
  testing::TempDir dir;
  std::unique_ptr<testing::Swtpm> tpm = testing::Swtpm::Start(dir.path() + "/tpm");
  ASSERT_NE(tpm, nullptr);
  mkdir((dir.path() + "/store").c_str(), 0700);
  setenv("TPM2_PKCS11_TCTI", tpm->Tcti().c_str(), 1);
  setenv("TPM2_PKCS11_STORE", (dir.path() + "/store").c_str(), 1);
  WriteSecretFile(dir.path() + "/pin", "tpm2-pin-1234");
  Runner runner(dir.path());
  // Whatever token the URI names: the module is recognised before any token is looked for.
  ToolResult result = runner.Tool({"selftest", "--pkcs11-uri",
                                   StrCat("pkcs11:token=k8s-kms;object=kek?module-path=", kTpm2Pkcs11Module,
                                          "&pin-source=file:", dir.path(), "/pin")});
  EXPECT_EQ(result.code, 2) << result.all();
  ExpectContainsAll(result.err,
                    {"this PKCS#11 module is tpm2-pkcs11 ('TPM2.0 Cryptoki' 1.9 by tpm2-software.github.io)",
                     "Use trousseau-hsm's native TPM 2.0 backend on that TPM", "trousseau-hsm-init tpm init"});
  EXPECT_FALSE(Contains(result.all(), "tpm2-pin-1234"));
}

}  // namespace
}  // namespace trousseau::hsm
