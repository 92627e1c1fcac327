// trousseau-hsm-init `key generate`, `key rotate`, `key list` and `key retire` on a real token, alone and
// run concurrently.
#include <gtest/gtest.h>

#include "tests/integration/init_tool_test.h"

namespace trousseau::init_tool {
namespace {

// ---- key generate / rotate / list ----

TEST_F(InitToolTest, GenerateCreatesVersionOneThenRefusesASecondGenerate) {
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri_});
  ASSERT_EQ(generate.code, 0) << generate.all();
  const std::string key_id = PrintedKeyId(generate.out);
  EXPECT_EQ(key_id.rfind("kek-v1-", 0), 0u) << generate.out;

  ToolResult again = Run({"key", "generate", "--pkcs11-uri", uri_});
  EXPECT_EQ(again.code, 1) << again.all();
  EXPECT_NE(again.err.find("already has version(s) 1"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("key rotate"), std::string::npos) << again.err;

  // The policy the plugin needs, as the token reports it.
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
  const json& key = list["keys"][0];
  EXPECT_EQ(key["version"], 1);
  EXPECT_EQ(key["key_id"], key_id);
  EXPECT_EQ(key["id"], "01");
  EXPECT_EQ(key["active"], true);
  EXPECT_EQ(key["key_type"], "AES");
  EXPECT_EQ(key["bits"], 256);
  EXPECT_EQ(key["sensitive"], true);
  EXPECT_EQ(key["extractable"], false);
  EXPECT_EQ(key["always_sensitive"], true);
  EXPECT_EQ(key["never_extractable"], true);
  EXPECT_EQ(key["local"], true);
  EXPECT_EQ(key["modifiable"], false);
  EXPECT_EQ(key["usages"], json::array({"encrypt", "decrypt"}));
  EXPECT_EQ(key["policy_ok"], true);
}

TEST_F(InitToolTest, RotateCreatesTheNextVersionAndPrintsItsKeyId) {
  ToolResult early = Run({"key", "rotate", "--pkcs11-uri", uri_});
  EXPECT_EQ(early.code, 1) << early.all();
  EXPECT_NE(early.err.find("key generate"), std::string::npos) << early.err;

  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const std::string key_id = PrintedKeyId(rotate.out);
  EXPECT_EQ(key_id.rfind("kek-v2-", 0), 0u) << rotate.out;
  EXPECT_NE(rotate.out.find("SIGHUP"), std::string::npos) << rotate.out;

  ToolResult rotate_json = Run({"key", "rotate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(rotate_json.code, 0) << rotate_json.all();
  json third = json::parse(rotate_json.out, nullptr, false);
  EXPECT_EQ(third["version"], 3) << rotate_json.out;
  EXPECT_EQ(third["id"], "03");

  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 3u) << list.dump();
  EXPECT_EQ(list["keys"][1]["key_id"], key_id);
  EXPECT_EQ(list["keys"][0]["active"], false);
  EXPECT_EQ(list["keys"][1]["active"], false);
  EXPECT_EQ(list["keys"][2]["active"], true);
  EXPECT_EQ(list["keys"][2]["key_id"], third["key_id"]);
}

// Two operators, or automation on two control-plane nodes sharing a network HSM, rotating at the same
// moment. A lock cannot span hosts, so the tool checks after C_GenerateKey whether another run created
// the same version and then backs off to the next one (hsm/key_admin.h). Every run must succeed with
// its own version, and the family must never hold a version twice (the plugin refuses such a family).
// Before the check, three rounds of two runs gave versions 1,2,2,3,3,4,4; a check on the module that
// created the key was not enough either, SoftHSM's per-process object cache hid the other run's key.
TEST_F(InitToolTest, ConcurrentRotationsGetDistinctVersionsAndNeverADuplicate) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  constexpr int kRounds = 4;
  constexpr int kAtOnce = 3;
  std::map<uint64_t, std::string> printed;  // version -> key_id, as the runs printed them
  int backed_off = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Started> runs;
    for (int i = 0; i < kAtOnce; ++i) runs.push_back(Start({"key", "rotate", "--pkcs11-uri", uri_, "--json"}));
    std::vector<ToolResult> results;
    for (const Started& run : runs) results.push_back(Finish(run));  // all of them, before any ASSERT
    for (const ToolResult& result : results) {
      if (result.code == 1 && result.err.find("this run created nothing") != std::string::npos) continue;  // ABORTED
      ASSERT_EQ(result.code, 0) << "round " << round << ":\n" << result.all();
      const json created = json::parse(result.out, nullptr, /*allow_exceptions=*/false);
      ASSERT_TRUE(created.is_object()) << result.out;
      const uint64_t version = created["version"].get<uint64_t>();
      EXPECT_TRUE(printed.emplace(version, created["key_id"].get<std::string>()).second)
          << "two runs printed version " << version;
      for (size_t at = 0; (at = result.err.find("at the same time", at)) != std::string::npos; ++at) ++backed_off;
    }
  }
  // Version 1 and exactly the versions the runs printed, each once and each the key its run printed.
  // A version number may be skipped (a run chose above a rival's key that was then withdrawn), and a
  // run may give up after five contests in a row; neither leaves anything behind.
  ASSERT_GE(printed.size(), static_cast<size_t>(kRounds)) << "at least one run per round must succeed";
  const json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u + printed.size()) << list.dump();
  EXPECT_EQ(list["keys"][0]["version"], 1) << list.dump();
  for (size_t i = 1; i < list["keys"].size(); ++i) {
    const json& key = list["keys"][i];
    const uint64_t version = key["version"].get<uint64_t>();
    ASSERT_TRUE(printed.contains(version)) << "version " << version << " was printed by no run\n" << list.dump();
    EXPECT_EQ(key["key_id"], printed[version]) << list.dump();
    EXPECT_EQ(key["active"], i + 1 == list["keys"].size()) << list.dump();
  }
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_}).code, 0);
  std::cout << "[ info     ] " << backed_off
            << " run(s) backed off from a version another run created at the same time\n";
}

// Two `key generate` at once on an empty family: one creates version 1, the other refuses as a
// second generate does, and leaves nothing behind.
TEST_F(InitToolTest, ConcurrentGeneratesCreateVersionOneOnce) {
  for (int round = 0; round < 3; ++round) {
    std::vector<Started> runs;
    for (int i = 0; i < 2; ++i) runs.push_back(Start({"key", "generate", "--pkcs11-uri", uri_, "--json"}));
    std::vector<ToolResult> results;
    for (const Started& run : runs) results.push_back(Finish(run));
    int created = 0;
    for (const ToolResult& result : results) {
      if (result.code == 0) {
        ++created;
        EXPECT_EQ(json::parse(result.out, nullptr, false)["version"], 1) << result.out;
      } else {
        EXPECT_EQ(result.code, 1) << result.all();
        EXPECT_NE(result.err.find("already has version(s) 1"), std::string::npos) << result.err;
      }
    }
    EXPECT_EQ(created, 1) << "round " << round;
    const json list = ListJson();
    ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
    EXPECT_EQ(list["keys"][0]["version"], 1);
    ASSERT_TRUE(token_->DestroyKey(1).ok());
  }
}

TEST_F(InitToolTest, ListShowsAnEmptyFamilyAndHumanReadableAttributes) {
  json empty = ListJson();
  EXPECT_EQ(empty, json::parse(R"({"keys":[]})"));
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_});
  ASSERT_EQ(list.code, 0) << list.all();
  EXPECT_NE(list.out.find("version 1  (active"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("CKA_ID:     01"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("AES-256"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(", modifiable"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("usages:     encrypt, decrypt"), std::string::npos) << list.out;
}

// A flag wins over TROUSSEAU_HSM_PKCS11_URI, for every subcommand (CLI11 fills env values into every
// subcommand's options, so they must not share storage).
TEST_F(InitToolTest, TheUriFlagWinsOverTheEnvironmentInEverySubcommand) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  setenv("TROUSSEAU_HSM_PKCS11_URI", "pkcs11:token=no-such-token;object=kek?module-path=/nonexistent.so", 1);
  for (const std::vector<std::string>& command : {std::vector<std::string>{"key", "list", "--pkcs11-uri", uri_},
                                                  std::vector<std::string>{"selftest", "--pkcs11-uri", uri_}}) {
    const ToolResult r = Run(command);
    EXPECT_EQ(r.code, 0) << command[0] << " " << command[1] << ": " << r.all();
  }
  // Without the flag the environment is used (and here names nothing that exists).
  EXPECT_NE(Run({"key", "list"}).code, 0);
  unsetenv("TROUSSEAU_HSM_PKCS11_URI");
}

// ---- key retire ----

TEST_F(InitToolTest, RetireRefusesTheActiveVersionAndWithoutYesThenDestroys) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);

  ToolResult active = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "2", "--yes"});
  EXPECT_EQ(active.code, 1) << active.all();
  EXPECT_NE(active.err.find("active"), std::string::npos) << active.err;

  ToolResult unknown = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "7", "--yes"});
  EXPECT_EQ(unknown.code, 1) << unknown.all();
  EXPECT_NE(unknown.err.find("no version 7"), std::string::npos) << unknown.err;

  ToolResult unconfirmed = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1"});
  EXPECT_EQ(unconfirmed.code, 1) << unconfirmed.all();
  EXPECT_NE(unconfirmed.err.find("kubectl get secrets -A -o json | kubectl replace -f -"), std::string::npos)
      << unconfirmed.err;
  EXPECT_NE(unconfirmed.err.find("unreadable"), std::string::npos) << unconfirmed.err;
  EXPECT_NE(unconfirmed.err.find("--yes"), std::string::npos) << unconfirmed.err;
  EXPECT_EQ(ListJson()["keys"].size(), 2u) << "nothing may be destroyed without --yes";

  ToolResult retired = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  EXPECT_EQ(retired.code, 0) << retired.all();
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
  EXPECT_EQ(list["keys"][0]["version"], 2);
  EXPECT_EQ(list["keys"][0]["active"], true);

  ToolResult zero = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "0", "--yes"});
  EXPECT_EQ(zero.code, 2) << zero.all();
}

}  // namespace
}  // namespace trousseau::init_tool
