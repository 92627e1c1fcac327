// trousseau-hsm-init rotating keys under a running plugin: the plugin picks rotations up (refresh interval,
// SIGHUP) with the tool's key_ids, and `key rotate` waits for the plugin or refuses what it would refuse.
#include <gtest/gtest.h>

#include "tests/integration/init_tool_test.h"

namespace trousseau::init_tool {
namespace {

// ---- rotation under a running plugin ----

TEST_F(InitToolTest, RotationIsPickedUpOnTheRefreshIntervalWithTheToolsKeyId) {
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri_});
  ASSERT_EQ(generate.code, 0) << generate.all();
  const std::string v1 = PrintedKeyId(generate.out);
  auto plugin = StartPlugin("1s");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  // The same key_id, byte for byte, from the tool and from the plugin.
  EXPECT_EQ(Status().key_id(), v1);
  const v2::EncryptResponse old_sealed = Encrypt("sealed-under-v1");
  EXPECT_EQ(old_sealed.key_id(), v1);

  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const std::string v2 = PrintedKeyId(rotate.out);
  ASSERT_EQ(v2.rfind("kek-v2-", 0), 0u) << rotate.out;
  // Within the 1 s interval (plus slack for a loaded machine).
  EXPECT_TRUE(Eventually([&] { return Status().key_id() == v2; }, 3s)) << Status().key_id() << "\n" << plugin->Log();
  EXPECT_EQ(Encrypt("sealed-under-v2").key_id(), v2);
  std::string plaintext;
  ASSERT_TRUE(Decrypt(old_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v1");
  // key list agrees with the plugin on both key_ids.
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 2u);
  EXPECT_EQ(list["keys"][0]["key_id"], v1);
  EXPECT_EQ(list["keys"][1]["key_id"], v2);
}

TEST_F(InitToolTest, SighupActivatesARotationAndARetiredKeyGivesNotFound) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  auto plugin = StartPlugin("0");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  const v2::EncryptResponse old_sealed = Encrypt("sealed-under-v1");

  // No refresh interval: nothing changes until SIGHUP. The tool asks the plugin for a second and
  // reports that the new key_id did not show up.
  ToolResult rotate =
      Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_, "--wait-timeout", "1s"});
  const std::string v2 = PrintedKeyId(rotate.out);
  ASSERT_EQ(v2.rfind("kek-v2-", 0), 0u) << rotate.all();
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(
      rotate.err.find("did not report its key_id within 1s: its Status still reports key_id " + old_sealed.key_id()),
      std::string::npos)
      << rotate.err;
  EXPECT_EQ(Status().key_id(), old_sealed.key_id());
  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Status().key_id() == v2; }, 6s)) << plugin->Log();
  const v2::EncryptResponse new_sealed = Encrypt("sealed-under-v2");
  std::string plaintext;
  ASSERT_TRUE(Decrypt(old_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v1");

  // Retired too early: the old ciphertext is lost, cleanly.
  ToolResult retire = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  ASSERT_EQ(retire.code, 0) << retire.all();
  plugin->Signal(SIGHUP);
  grpc::Status last;
  EXPECT_TRUE(Eventually(
      [&] {
        last = Decrypt(old_sealed, &plaintext);
        // Until the reload lands, the plugin may still find the key, or find its token object gone
        // ("key version 1 is not loaded", also NOT_FOUND); never anything else, never other plaintext.
        if (last.ok()) {
          EXPECT_EQ(plaintext, "sealed-under-v1");
        } else {
          EXPECT_TRUE(last.error_code() == grpc::StatusCode::NOT_FOUND ||
                      last.error_code() == grpc::StatusCode::UNAVAILABLE)
              << last.error_code() << " " << last.error_message();
        }
        // Once the key ring is reloaded, the key_id itself is unknown.
        return last.error_code() == grpc::StatusCode::NOT_FOUND &&
               last.error_message().find("unknown key_id") != std::string::npos;
      },
      3s))
      << last.error_code() << " " << last.error_message() << "\n"
      << plugin->Log();

  // The plugin keeps serving with the active key.
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << "the plugin exited\n" << plugin->Log();
  EXPECT_TRUE(Serving()) << plugin->Log();
  EXPECT_EQ(Status().key_id(), v2);
  ASSERT_TRUE(Decrypt(new_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v2");
  EXPECT_EQ(Encrypt("after-retire").key_id(), v2);
}

// ---- what the plugin will see of a rotation ----

TEST_F(InitToolTest, RotateWaitsUntilTheRunningPluginReportsTheNewKeyId) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  auto plugin = StartPlugin("1s");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_, "--json"});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const json printed = json::parse(rotate.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(printed.is_object()) << rotate.out;
  EXPECT_EQ(printed["active"], true);
  EXPECT_EQ(printed["plugin_confirmed"], true);
  // The tool's success is the plugin's state: no waiting here.
  EXPECT_EQ(Status().key_id(), printed["key_id"]) << plugin->Log();

  ToolResult text = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_});
  ASSERT_EQ(text.code, 0) << text.all();
  EXPECT_NE(text.out.find("now reports this key_id: version 3 is the active key"), std::string::npos) << text.out;
  EXPECT_EQ(Status().key_id(), PrintedKeyId(text.out));
}

TEST_F(InitToolTest, RotateWithoutAPluginToAskSaysItIsUnconfirmed) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  EXPECT_EQ(rotate.out.find("becomes the active key"), std::string::npos) << rotate.out;
  EXPECT_NE(rotate.out.find("Not confirmed with a running plugin (--no-wait)"), std::string::npos) << rotate.out;
  // A socket nobody serves on: the tool says so and fails, after creating the version.
  ToolResult unanswered =
      Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_, "--wait-timeout", "300ms"});
  EXPECT_EQ(unanswered.code, 1) << unanswered.all();
  EXPECT_NE(unanswered.err.find("version 3 was created, but the plugin on unix://" + socket_), std::string::npos)
      << unanswered.err;
  EXPECT_NE(unanswered.err.find("its Status call fails"), std::string::npos) << unanswered.err;
}

TEST_F(InitToolTest, RotateRefusesAFamilyThePluginRefusesAndCreatesNothing) {
  ASSERT_TRUE(token_->GenerateUnsafeKey(1).ok());  // extractable: the plugin loads nothing of this family
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("the plugin refuses key family 'kek'"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("version 1: it is extractable"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(rotate.out.find("active"), std::string::npos) << rotate.out;
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

TEST_F(InitToolTest, RotateRefusesAFamilyWithALastingDuplicateVersion) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());  // made by another tool: nobody withdraws it
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("(there are two AES keys with version 2)"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(ListJson()["keys"].size(), 3u);
}

// Root rotating a SoftHSM token that belongs to the plugin's user would make a root-only object file
// the plugin never sees (issue 12, fault 4).
TEST_F(InitToolTest, RotateRefusesATokenWhoseStorageBelongsToAnotherUser) {
  ASSERT_EQ(geteuid(), 0u) << "this test makes the token belong to another user";
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  const std::string tokens = token_->dir() + "/tokens";
  std::string token_dir;
  if (DIR* d = opendir(tokens.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') token_dir = tokens + "/" + e->d_name;
    }
    closedir(d);
  }
  ASSERT_FALSE(token_dir.empty());
  ASSERT_EQ(std::system(("chown -R 10001:10001 '" + token_dir + "'").c_str()), 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("the token's storage " + token_dir + " belongs to uid 10001, but this runs as uid 0"),
            std::string::npos)
      << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

}  // namespace
}  // namespace trousseau::init_tool
