// trousseau-hsm-init on a token shared by several key families, and keys other tools made: a new
// version never takes a CKA_ID another secret key on the token has (NSS softoken keeps CKA_ID unique
// among secret keys and silently replaces the older key), a CKA_ID that is not a version as the tool
// writes it is refused with its bytes (never read as another number), and `key list` judges a key as
// `selftest` does. All on a real SoftHSM token; the raw CKA_IDs are made with the hsm/ test helper.
#include <gtest/gtest.h>

#include <set>

#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "hsm/pkcs11_uri.h"
#include "tests/integration/init_tool_test.h"

namespace trousseau::init_tool {
namespace {

class InitToolCollisionTest : public InitToolTest {
 protected:
  std::string OtherUri() const { return token_->Uri("other"); }

  // An AES-256 key labelled `label` with exactly the CKA_ID bytes `raw_id` (as another tool would make it).
  void MakeKeyWithRawId(const std::string& label, const std::string& raw_id) {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri(label));
    ASSERT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
    StatusOr<hsm::ObjectHandle> key = hsm::GenerateTestAesKeyWithId((*admin)->session(), label, raw_id);
    ASSERT_TRUE(key.ok()) << key.status().ToString();
  }

  // version -> CKA_ID (hex) of a family, as `key list --json` shows it.
  std::map<int, std::string> Ids(const std::string& uri) {
    ToolResult list = Run({"key", "list", "--pkcs11-uri", uri, "--json"});
    EXPECT_EQ(list.code, 0) << list.all();
    std::map<int, std::string> ids;
    json parsed = json::parse(list.out, nullptr, false);
    if (parsed.is_discarded()) return ids;
    for (const json& key : parsed["keys"]) ids[key["version"].get<int>()] = key["id"].get<std::string>();
    return ids;
  }

  // Starts the plugin on the family and waits for it to exit; its exit code (-1 if it kept running).
  int PluginExitCode() {
    std::unique_ptr<Subprocess> plugin = StartPlugin("0");
    std::optional<int> code = plugin->Wait(20s);
    return code.value_or(-1);
  }
};

TEST_F(InitToolCollisionTest, TwoFamiliesOnOneTokenGetDistinctCkaIds) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult other = Run({"key", "generate", "--pkcs11-uri", OtherUri()});
  ASSERT_EQ(other.code, 0) << other.all();
  // Version 1's CKA_ID 01 belongs to family kek: family other starts at 2, and says why.
  EXPECT_NE(other.out.find("created version 2 of key family 'other'"), std::string::npos) << other.out;
  EXPECT_NE(other.out.find("skipped version(s) 1"), std::string::npos) << other.out;
  EXPECT_NE(other.out.find("1: CKA_ID 01 is used by family 'kek' version 1"), std::string::npos) << other.out;
  EXPECT_NE(other.out.find("NSS"), std::string::npos) << other.out;
  EXPECT_EQ(Ids(uri_), (std::map<int, std::string>{{1, "01"}}));
  EXPECT_EQ(Ids(OtherUri()), (std::map<int, std::string>{{2, "02"}}));
  // And with --json, the skipped numbers as data.
  ToolResult rotated = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait", "--json"});
  ASSERT_EQ(rotated.code, 0) << rotated.all();
  json made = json::parse(rotated.out, nullptr, false);
  EXPECT_EQ(made["version"], 3) << rotated.out;
  ASSERT_EQ(made["skipped_versions"].size(), 1u) << rotated.out;
  EXPECT_EQ(made["skipped_versions"][0]["version"], 2) << rotated.out;
  EXPECT_NE(made["skipped_versions"][0]["why"].get<std::string>().find("family 'other' version 2"), std::string::npos)
      << rotated.out;
}

// An aes-cbc-hmac version is two keys with one CKA_ID on purpose: no collision with itself (its family rotates
// and lists without a warning), but both keys are taken for another family, and named once.
TEST_F(InitToolCollisionTest, BothKeysOfAnAesCbcHmacVersionHoldItsCkaIdAndNeverCollideWithEachOther) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac"}).code, 0);
  ToolResult rotated = Run({"key", "rotate", "--pkcs11-uri", uri_, "--scheme", "aes-cbc-hmac", "--no-wait"});
  ASSERT_EQ(rotated.code, 0) << rotated.all();
  EXPECT_EQ(rotated.out.find("skipped"), std::string::npos) << rotated.out;
  EXPECT_NE(rotated.out.find("created version 2 of key family 'kek'"), std::string::npos) << rotated.out;
  ToolResult listed = Run({"key", "list", "--pkcs11-uri", uri_});
  ASSERT_EQ(listed.code, 0) << listed.all();
  EXPECT_EQ(listed.out.find("WARN"), std::string::npos) << listed.out;
  ToolResult other = Run({"key", "generate", "--pkcs11-uri", OtherUri(), "--scheme", "aes-cbc-hmac"});
  ASSERT_EQ(other.code, 0) << other.all();
  EXPECT_NE(other.out.find("created version 3 of key family 'other'"), std::string::npos) << other.out;
  const std::string named = "1: CKA_ID 01 is used by family 'kek' version 1 (CKA_ID 01)\n";
  EXPECT_NE(other.out.find(named), std::string::npos) << other.out;
  EXPECT_EQ(Ids(uri_), (std::map<int, std::string>{{1, "01"}, {2, "02"}}));
  EXPECT_EQ(Ids(OtherUri()), (std::map<int, std::string>{{3, "03"}}));
}

TEST_F(InitToolCollisionTest, ARotationSkipsEveryNumberAnotherFamilyTook) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);                   // kek 1
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", OtherUri()}).code, 0);             // other 2
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", OtherUri(), "--no-wait"}).code, 0);  // other 3
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  EXPECT_NE(rotate.out.find("skipped version(s) 2, 3"), std::string::npos) << rotate.out;
  EXPECT_NE(rotate.out.find("created version 4 of key family 'kek'"), std::string::npos) << rotate.out;
  EXPECT_EQ(Ids(uri_), (std::map<int, std::string>{{1, "01"}, {4, "04"}}));
  // The next rotation of other goes above its own highest (3), past kek's 4.
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", OtherUri(), "--no-wait"}).code, 0);
  EXPECT_EQ(Ids(OtherUri()), (std::map<int, std::string>{{2, "02"}, {3, "03"}, {5, "05"}}));
}

TEST_F(InitToolCollisionTest, TwoFamiliesCreatedAtTheSameMomentNeverShareACkaId) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  // Both runs read the token before either creates: both would choose the same number without the
  // contest over the CKA_ID.
  Started other = Start({"key", "generate", "--pkcs11-uri", OtherUri()});
  Started kek = Start({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  ToolResult other_done = Finish(other), kek_done = Finish(kek);
  ASSERT_EQ(other_done.code, 0) << other_done.all();
  ASSERT_EQ(kek_done.code, 0) << kek_done.all();
  for (int round = 0; round < 2; ++round) {
    Started a = Start({"key", "rotate", "--pkcs11-uri", OtherUri(), "--no-wait"});
    Started b = Start({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
    ToolResult a_done = Finish(a), b_done = Finish(b);
    ASSERT_EQ(a_done.code, 0) << a_done.all();
    ASSERT_EQ(b_done.code, 0) << b_done.all();
  }
  std::set<std::string> seen;
  size_t keys = 0;
  for (const std::string& uri : {uri_, OtherUri()}) {
    for (const auto& [version, id] : Ids(uri)) {
      ++keys;
      EXPECT_TRUE(seen.insert(id).second) << "CKA_ID " << id << " is held twice";
    }
  }
  EXPECT_EQ(keys, 7u) << "every run kept one key";
}

TEST_F(InitToolCollisionTest, AnAsciiCkaIdIsRefusedByKeyListAndThePluginNeverReadAsAnotherNumber) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  MakeKeyWithRawId("kek", "01");  // the two bytes 0x30 0x31, as tpm2_ptool addkey --id=01 stores them
  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_});
  EXPECT_EQ(list.code, 1) << list.all();
  EXPECT_NE(list.err.find("CKA_ID 3031, which looks like ASCII text '01' (tpm2_ptool writes IDs that way)"),
            std::string::npos)
      << list.err;
  EXPECT_NE(list.err.find("writes the version as big-endian bytes, e.g. 01"), std::string::npos) << list.err;
  EXPECT_EQ(list.all().find("version 12337\n"), std::string::npos) << list.all();
  // No version is added on top of a family the tool cannot read.
  EXPECT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"}).code, 1);

  EXPECT_EQ(PluginExitCode(), 2) << "a key policy error at start is exit 2";
  const std::string log = ReadFile(plugin_log_);
  EXPECT_NE(log.find("CKA_ID 3031, which looks like ASCII text '01'"), std::string::npos) << log;
}

TEST_F(InitToolCollisionTest, ACkaIdWithALeadingZeroIsRefusedSinceTwoObjectsCouldNameOneVersion) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  MakeKeyWithRawId("kek", std::string("\x00\x01", 2));
  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(list.code, 1) << list.all();
  EXPECT_NE(list.err.find("CKA_ID 0001, which starts with a zero byte"), std::string::npos) << list.err;
  EXPECT_NE(list.err.find("two objects could then name one version"), std::string::npos) << list.err;
  EXPECT_EQ(PluginExitCode(), 2);
  EXPECT_NE(ReadFile(plugin_log_).find("CKA_ID 0001, which starts with a zero byte"), std::string::npos);
}

TEST_F(InitToolCollisionTest, AnEmptyOrOverlongCkaIdIsRefusedWithItsBytes) {
  MakeKeyWithRawId("kek", std::string(9, '\x01'));
  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_});
  EXPECT_EQ(list.code, 1) << list.all();
  EXPECT_NE(list.err.find("CKA_ID 010101010101010101, 9 bytes: a version is 1 to 8 bytes"), std::string::npos)
      << list.err;
}

TEST_F(InitToolCollisionTest, ALabelUsedBySecretKeysThatAreNoKekIsRefusedForANewFamily) {
  ASSERT_TRUE(token_->GenerateUnsafeKey(1, "other").ok());  // extractable, not sensitive: no KEK
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", OtherUri()});
  EXPECT_EQ(generate.code, 1) << generate.all();
  EXPECT_NE(generate.err.find("the label 'other' is already used by secret key(s)"), std::string::npos) << generate.err;
  EXPECT_NE(generate.err.find("extractable"), std::string::npos) << generate.err;
  EXPECT_NE(generate.err.find("Nothing was created"), std::string::npos) << generate.err;
}

TEST_F(InitToolCollisionTest, KeyListJudgesAKeyAsSelftestDoes) {
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());  // accepted by the plugin, but modifiable
  ToolResult selftest = Run({"selftest", "--pkcs11-uri", uri_});
  ASSERT_EQ(selftest.code, 0) << selftest.all();
  ASSERT_NE(selftest.out.find("WARN modifiable"), std::string::npos) << selftest.out;

  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_});
  ASSERT_EQ(list.code, 0) << list.all();
  EXPECT_EQ(list.out.find("policy:     ok"), std::string::npos) << "selftest warns about this key:\n" << list.out;
  EXPECT_NE(list.out.find("policy:     accepted by the plugin, with 1 warning(s)"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("WARN        modifiable (CKA_MODIFIABLE=true)"), std::string::npos) << list.out;
  json listed = ListJson();
  EXPECT_EQ(listed["keys"][0]["policy_ok"], true) << listed.dump();
  ASSERT_EQ(listed["keys"][0]["policy_warnings"].size(), 1u) << listed.dump();

  // A key generate made is clean in both.
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"}).code, 0);
  ToolResult both = Run({"key", "list", "--pkcs11-uri", uri_});
  EXPECT_NE(both.out.find("version 2  (active: new encryptions use it)"), std::string::npos) << both.out;
  EXPECT_NE(both.out.substr(both.out.find("version 2  (active")).find("policy:     ok"), std::string::npos) << both.out;
}

TEST_F(InitToolCollisionTest, TokenInitPrintsAnAbsolutePinSourceForARelativePinFile) {
  WriteFile(token_->dir() + "/new-so.pin", kNewSoPin, 0600);
  WriteFile(token_->dir() + "/new-user.pin", kNewUserPin, 0600);
  char previous[PATH_MAX];
  ASSERT_NE(getcwd(previous, sizeof previous), nullptr);
  ASSERT_EQ(chdir(token_->dir().c_str()), 0);
  ToolResult init = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", "relative-token",
                         "--so-pin-file", "new-so.pin", "--pin-file", "./new-user.pin"});
  ASSERT_EQ(chdir(previous), 0);
  ASSERT_EQ(init.code, 0) << init.all();
  const std::string absolute = "pin-source=file:" + token_->dir() + "/new-user.pin'";
  EXPECT_NE(init.out.find(absolute), std::string::npos) << init.out;
  // The printed command works as printed, from any directory.
  std::smatch uri;
  ASSERT_TRUE(std::regex_search(init.out, uri, std::regex("--pkcs11-uri '([^']+)'"))) << init.out;
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri[1].str()});
  EXPECT_EQ(generate.code, 0) << generate.all();
}

}  // namespace
}  // namespace trousseau::init_tool
