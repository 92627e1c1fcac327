// trousseau-hsm-init and key schemes (issue 18, item 2): `key generate|rotate --scheme` makes aes-cbc-hmac versions
// (an AES-256 key and an HMAC key, same label and CKA_ID, both generated on the token), `key list` shows each
// version's scheme and both objects, `key retire` removes both, and the key_id the tool prints is the one the
// plugin reports. On opencryptoki's soft token (no AES-GCM: auto means aes-cbc-hmac) and on SoftHSM (both
// mechanism sets: --scheme chooses). The fixture is init_tool_test.h.
#include "tests/integration/init_tool_test.h"
#include "tests/testing/device_tokens.h"
#include "tests/testing/skip_or_fail_in_ci.h"

#include <cctype>
#include <map>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "tools/support/fault_shim_control.h"

namespace trousseau::init_tool {
namespace {

using testing::NssDatabase;
using testing::OpencryptokiToken;

bool Contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

// Both objects of an aes-cbc-hmac version as `key list --json` shows them: generated on the token, never
// readable, each allowed its own job only.
void ExpectAesCbcHmacVersion(const json& key, uint64_t version) {
  SCOPED_TRACE(key.dump());
  EXPECT_EQ(key["version"], version);
  EXPECT_EQ(key["scheme"], "aes-cbc-hmac");
  EXPECT_EQ(key["policy_ok"], true);
  EXPECT_EQ(key["key_type"], "AES");
  EXPECT_EQ(key["bits"], 256);
  ASSERT_TRUE(key.contains("hmac_key"));
  const json& mac = key["hmac_key"];
  EXPECT_EQ(mac["key_type"], "HMAC");
  EXPECT_EQ(mac["bits"], 256);
  EXPECT_EQ(key["usages"], json::array({"encrypt", "decrypt"}));
  EXPECT_EQ(mac["usages"], json::array({"sign", "verify"}));
  for (const json* object : {&key, &mac}) {
    EXPECT_EQ((*object)["sensitive"], true);
    EXPECT_EQ((*object)["extractable"], false);
    EXPECT_EQ((*object)["always_sensitive"], true);
    EXPECT_EQ((*object)["never_extractable"], true);
    EXPECT_EQ((*object)["local"], true);
    EXPECT_EQ((*object)["modifiable"], false);
  }
}

// ---- SoftHSM: both mechanism sets, so --scheme decides ----

class InitToolSchemeTest : public InitToolTest {
 protected:
  // `key list` shows one version: aes-cbc-hmac version 1 under `key_id`.
  void ExpectOnlyAesCbcHmacVersion1(const std::string& key_id) {
    json listed = ListJson();
    ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
    ExpectAesCbcHmacVersion(listed["keys"][0], 1);
    EXPECT_EQ(listed["keys"][0]["key_id"], key_id);
  }

  // The plugin reports `key_id` within `wait`, seals `plaintext` under it (into `sealed`) and opens it again.
  void ExpectPluginServes(const Subprocess& plugin, const std::string& key_id, std::chrono::seconds wait,
                          const std::string& plaintext, v2::EncryptResponse& sealed) {
    ASSERT_TRUE(Eventually([&] { return Status().key_id() == key_id; }, wait)) << Status().key_id() << "\n"
                                                                               << plugin.Log();
    sealed = Encrypt(plaintext);
    EXPECT_EQ(sealed.key_id(), key_id);
    std::string opened;
    ASSERT_TRUE(Decrypt(sealed, &opened).ok());
    EXPECT_EQ(opened, plaintext);
  }

  // `key rotate` with `flags` makes aes-cbc-hmac version 2 and waits for the plugin to report it: its key_id.
  void RotateToAesCbcHmacVersion2ThePluginConfirms(const Subprocess& plugin, std::vector<std::string> flags,
                                                   std::string& key_id) {
    std::vector<std::string> args{"key", "rotate", "--pkcs11-uri", uri_};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), {"--socket", "unix://" + socket_, "--wait-timeout", "20s", "--json"});
    ToolResult rotated = Run(std::move(args));
    ASSERT_EQ(rotated.code, 0) << rotated.all() << plugin.Log();
    const json second = json::parse(rotated.out);
    EXPECT_EQ(second["version"], 2);
    EXPECT_EQ(second["scheme"], "aes-cbc-hmac");
    EXPECT_EQ(second["plugin_confirmed"], true);
    key_id = second["key_id"];
    EXPECT_EQ(Status().key_id(), key_id);
  }
};

TEST_F(InitToolSchemeTest, AutoKeepsAesGcmOnATokenThatHasIt) {
  ToolResult made = Run({"key", "generate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(made.code, 0) << made.all();
  EXPECT_EQ(json::parse(made.out)["scheme"], "aes-gcm") << made.out;
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["scheme"], "aes-gcm");
  EXPECT_FALSE(listed["keys"][0].contains("hmac_key")) << listed.dump();
}

TEST_F(InitToolSchemeTest, AesCbcHmacOnSoftHsmIsServedByThePluginUnderTheToolsKeyIdAndRetiredWhole) {
  ToolResult made = Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac", "--json"});
  ASSERT_EQ(made.code, 0) << made.all();
  const json generated = json::parse(made.out);
  EXPECT_EQ(generated["scheme"], "aes-cbc-hmac");
  const std::string v1 = generated["key_id"];
  ASSERT_NO_FATAL_FAILURE(ExpectOnlyAesCbcHmacVersion1(v1));

  auto plugin = StartPlugin("1s");
  v2::EncryptResponse sealed;
  ASSERT_NO_FATAL_FAILURE(ExpectPluginServes(*plugin, v1, 5s, "a secret under aes-cbc-hmac", sealed));

  // Rotation keeps the scheme it is told, and the plugin confirms the new key_id.
  std::string v2;
  ASSERT_NO_FATAL_FAILURE(RotateToAesCbcHmacVersion2ThePluginConfirms(*plugin, {"--scheme", "aes-cbc-hmac"}, v2));

  // Retiring version 1 takes both of its objects: nothing with CKA_ID 01 is left of the family.
  ToolResult retired = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  ASSERT_EQ(retired.code, 0) << retired.all();
  EXPECT_TRUE(Contains(retired.out, "its 2 keys are destroyed")) << retired.out;
  plugin.reset();  // one module user at a time in this process's view of the token
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*hsm::Pkcs11Uri::Parse(uri_));
  ASSERT_TRUE(admin.ok()) << admin.status().message();
  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily((*admin)->session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().message();
  ASSERT_EQ(family->size(), 2u) << "version 2's AES and HMAC keys only";
  for (const hsm::KeyObject& key : *family) EXPECT_EQ(key.version, 2u);
}

TEST_F(InitToolSchemeTest, ALoneHmacKeyIsRefusedWithTheFamilyViolation) {
  {
    StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*hsm::Pkcs11Uri::Parse(uri_));
    ASSERT_TRUE(admin.ok()) << admin.status().message();
    ASSERT_TRUE(hsm::GenerateMacKeyOfVersion((*admin)->session(), "kek", 1).ok());
  }
  const std::string why = "version 1 has an HMAC key but no AES key (an aes-cbc-hmac version needs both)";
  ToolResult rotated = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotated.code, 1) << rotated.all();
  EXPECT_TRUE(Contains(rotated.err, why)) << rotated.all();
  ToolResult generated = Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac"});
  EXPECT_EQ(generated.code, 1) << generated.all();
  EXPECT_TRUE(Contains(generated.err, why)) << generated.all();
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["policy_ok"], false);
  EXPECT_TRUE(Contains(listed["keys"][0]["policy_violation"].get<std::string>(), "an HMAC key with no AES key"))
      << listed.dump();
  // Nothing was created by either run: still the one HMAC key.
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*hsm::Pkcs11Uri::Parse(uri_));
  ASSERT_TRUE(admin.ok()) << admin.status().message();
  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily((*admin)->session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().message();
  EXPECT_EQ(family->size(), 1u);
}

// A FIPS-mode HSM that chooses GCM IVs itself (the fault shim's device_iv mode in front of SoftHSM): the tool
// fingerprints the version as the plugin does (AES-ECB of the reserved block, found out or set with x-gcm-iv), so
// the key_id it prints is the one the plugin reports. (The caller-IV fingerprint alone was refused there.)
TEST_F(InitToolSchemeTest, ADeviceThatChoosesGcmIvsGetsOneKeyIdFromToolAndPlugin) {
  const std::string control = token_->dir() + "/shim.control";
  support::WriteShimControl(control, "device_iv");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
  setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
  uri_ = token_->Uri("kek", FAULT_SHIM_PATH);
  ToolResult made = Run({"key", "generate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(made.code, 0) << made.all();
  const json generated = json::parse(made.out);
  EXPECT_EQ(generated["scheme"], "aes-gcm");
  const std::string v1 = generated["key_id"];
  EXPECT_EQ(ListJson()["keys"][0]["key_id"], v1);
  const std::string detected_uri = uri_;
  uri_ = detected_uri + "&x-gcm-iv=device";
  EXPECT_EQ(ListJson()["keys"][0]["key_id"], v1) << "x-gcm-iv=device names the version alike";
  ToolResult rotated = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait", "--json"});
  ASSERT_EQ(rotated.code, 0) << rotated.all();
  const std::string v2 = json::parse(rotated.out)["key_id"];

  // The shim does refuse our IVs: told to use them, the tool cannot name the version.
  uri_ = detected_uri + "&x-gcm-iv=caller";
  const json caller = ListJson()["keys"][0];
  EXPECT_EQ(caller["key_id"], "") << caller.dump();
  EXPECT_NE(caller.value("key_id_error", "").find("x-gcm-iv=caller"), std::string::npos) << caller.dump();

  uri_ = detected_uri;
  auto plugin = StartPlugin("1s");
  v2::EncryptResponse sealed;
  ASSERT_NO_FATAL_FAILURE(ExpectPluginServes(*plugin, v2, 10s, "a secret under a device-chosen IV", sealed));
  plugin.reset();
  unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
}

// Rotations at the same moment with two objects per version, and runs of both schemes meeting over one number:
// each run keeps its own version (decided on the AES keys), a run that withdraws takes both of its objects with
// it, and the family never holds a version twice or an HMAC key on its own.
TEST_F(InitToolSchemeTest, ConcurrentRotationsOfBothSchemesLeaveWholeVersionsOnly) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac"}).code, 0);
  constexpr int kRounds = 3;
  constexpr int kAtOnce = 3;
  struct Printed {
    std::string key_id, scheme;
  };
  std::map<uint64_t, Printed> printed;
  int backed_off = 0;  // contests lost: shown, so a run of this test says whether runs met at all
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Started> runs;
    for (int i = 0; i < kAtOnce; ++i) {
      runs.push_back(Start({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait", "--json", "--scheme",
                            i == 0 ? "aes-gcm" : "aes-cbc-hmac"}));
    }
    std::vector<ToolResult> results;
    for (const Started& run : runs) results.push_back(Finish(run));  // all of them, before any ASSERT
    for (const ToolResult& result : results) {
      if (result.code == 1 && Contains(result.err, "this run created nothing")) continue;  // ABORTED
      ASSERT_EQ(result.code, 0) << "round " << round << ":\n" << result.all();
      const json created = json::parse(result.out, nullptr, /*allow_exceptions=*/false);
      ASSERT_TRUE(created.is_object()) << result.out;
      const uint64_t version = created["version"].get<uint64_t>();
      EXPECT_TRUE(printed.emplace(version, Printed{created["key_id"], created["scheme"]}).second)
          << "two runs printed version " << version;
      for (size_t at = 0; (at = result.err.find("at the same time", at)) != std::string::npos; ++at) ++backed_off;
    }
  }
  ASSERT_GE(printed.size(), static_cast<size_t>(kRounds)) << "at least one run per round must succeed";
  const json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u + printed.size()) << list.dump();
  size_t objects = 2;  // version 1
  for (size_t i = 1; i < list["keys"].size(); ++i) {
    const json& key = list["keys"][i];
    const uint64_t version = key["version"].get<uint64_t>();
    ASSERT_TRUE(printed.contains(version)) << "version " << version << " was printed by no run\n" << list.dump();
    EXPECT_EQ(key["key_id"], printed[version].key_id) << list.dump();
    EXPECT_EQ(key["scheme"], printed[version].scheme) << list.dump();
    EXPECT_EQ(key["policy_ok"], true) << list.dump();
    objects += key["scheme"] == "aes-cbc-hmac" ? 2 : 1;
  }
  // No object of a withdrawn run is left: exactly the objects of the listed versions.
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*hsm::Pkcs11Uri::Parse(uri_));
  ASSERT_TRUE(admin.ok()) << admin.status().message();
  StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily((*admin)->session(), "kek");
  ASSERT_TRUE(family.ok()) << family.status().message();
  EXPECT_EQ(family->size(), objects);
  EXPECT_EQ(hsm::KekFamilyViolation(*family), "");
  admin->reset();
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_}).code, 0);
  std::cout << "[ info     ] " << backed_off
            << " run(s) backed off from a version another run created at the same time\n";
}

// ---- opencryptoki's soft token: no AES-GCM, so auto makes aes-cbc-hmac (pkcsslotd: one per host) ----

class InitToolSchemeOpencryptokiTest : public InitToolSchemeTest {
 protected:
  void SetUp() override {
    InitToolSchemeTest::SetUp();
    if (std::string why = OpencryptokiToken::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
    ock_ = std::make_unique<OpencryptokiToken>(token_->dir());
    testing::ProgramRun started = ock_->Start();
    ASSERT_EQ(started.code, 0) << started.all();
    uri_ = ock_->Uri();
  }
  void TearDown() override {
    if (ock_ != nullptr) {
      ock_->Stop();
      std::vector<std::string> outputs = outputs_;
      outputs.push_back(ReadFile(plugin_log_));
      ock_->ExpectNoPinIn(outputs);
    }
    InitToolSchemeTest::TearDown();
  }
  std::unique_ptr<OpencryptokiToken> ock_;
};

TEST_F(InitToolSchemeOpencryptokiTest, GenerateRotateAndRetireAesCbcHmacVersionsThePluginServes) {
  // aes-gcm is refused before anything is created: the token has no CKM_AES_GCM.
  ToolResult gcm = Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-gcm"});
  EXPECT_EQ(gcm.code, 2) << gcm.all();
  EXPECT_TRUE(Contains(gcm.err, "cannot create aes-gcm key versions")) << gcm.err;
  EXPECT_TRUE(Contains(gcm.err, "CKM_AES_GCM (not offered)")) << gcm.err;
  EXPECT_EQ(ListJson()["keys"].size(), 0u);

  ToolResult made = Run({"key", "generate", "--pkcs11-uri", uri_});
  ASSERT_EQ(made.code, 0) << made.all();
  EXPECT_TRUE(Contains(made.out, "created version 1 of key family 'kek' on token 'trousseau-ock': aes-cbc-hmac"))
      << made.out;
  const std::string v1 = PrintedKeyId(made.out);
  ASSERT_FALSE(v1.empty()) << made.out;
  ASSERT_NO_FATAL_FAILURE(ExpectOnlyAesCbcHmacVersion1(v1));

  // The plugin on the same token reports the tool's key_id and seals with it.
  auto plugin = StartPlugin("1s");
  v2::EncryptResponse sealed;
  ASSERT_NO_FATAL_FAILURE(ExpectPluginServes(*plugin, v1, 10s, "a secret on opencryptoki", sealed));

  std::string v2;
  ASSERT_NO_FATAL_FAILURE(RotateToAesCbcHmacVersion2ThePluginConfirms(*plugin, {}, v2));
  std::string reopened;
  ASSERT_TRUE(Decrypt(sealed, &reopened).ok()) << "version 1 still decrypts";

  ToolResult retired = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  ASSERT_EQ(retired.code, 0) << retired.all();
  EXPECT_TRUE(Contains(retired.out, "its 2 keys are destroyed")) << retired.out;
  // `key list` shows every object of the family, an HMAC key without its AES key too: only version 2 is left.
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  ExpectAesCbcHmacVersion(listed["keys"][0], 2);
}

// ---- NSS softoken: CKA_ID unique among secret keys, so an aes-cbc-hmac version cannot live there ----

class InitToolSchemeNssTest : public InitToolTest {};

// NSS replaces the AES key by the HMAC key made with its CKA_ID (same handle): the tool says so, leaves nothing,
// and aes-gcm works on the same database; a second family never takes (and so never replaces) a CKA_ID in use.
TEST_F(InitToolSchemeNssTest, AesCbcHmacIsRefusedOnATokenThatKeepsCkaIdUniqueAndLeavesNothing) {
  if (std::string why = NssDatabase::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
  NssDatabase nss(token_->dir());
  testing::ProgramRun db = nss.Create();
  ASSERT_EQ(db.code, 0) << db.all();
  uri_ = nss.Uri();

  ToolResult refused = Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac"});
  EXPECT_EQ(refused.code, 1) << refused.all();
  EXPECT_TRUE(Contains(refused.err, "the token replaced the AES key of 'kek' version 1 by its HMAC key"))
      << refused.err;
  EXPECT_TRUE(Contains(refused.err, "nothing was left")) << refused.err;
  EXPECT_EQ(ListJson()["keys"].size(), 0u);

  ToolResult made = Run({"key", "generate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(made.code, 0) << made.all();
  EXPECT_EQ(json::parse(made.out)["scheme"], "aes-gcm");

  // The collision the issue found: a second family's first version would take CKA_ID 01 and NSS would silently
  // replace 'kek' version 1 with it. The tool gives the second family the lowest id nobody uses, and 'kek'
  // version 1 stays, with the same key_id.
  const std::string kek_v1 = json::parse(made.out)["key_id"].get<std::string>();
  const std::string kek_uri = uri_;
  uri_.replace(uri_.find(";object=kek"), 11, ";object=other");
  ToolResult other = Run({"key", "generate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(other.code, 0) << other.all();
  EXPECT_EQ(json::parse(other.out)["version"], 2) << other.out;
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
  uri_ = kek_uri;
  const json kek = ListJson();
  ASSERT_EQ(kek["keys"].size(), 1u) << kek.dump();
  EXPECT_EQ(kek["keys"][0]["version"], 1);
  EXPECT_EQ(kek["keys"][0]["key_id"], kek_v1);
  outputs_.insert(outputs_.end(), nss.outputs().begin(), nss.outputs().end());
  for (const std::string& output : outputs_) EXPECT_FALSE(Contains(output, NssDatabase::kPassword)) << output;
}

}  // namespace
}  // namespace trousseau::init_tool
