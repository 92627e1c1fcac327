// trousseau-hsm-init `selftest`: passes on a good key family, fails on a bad or empty one.
#include <gtest/gtest.h>

#include "tests/integration/init_tool_test.h"

namespace trousseau::init_tool {
namespace {

// ---- selftest ----

TEST_F(InitToolTest, SelftestPassesOnAGoodFamily) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult human = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(human.code, 0) << human.all();
  EXPECT_NE(human.out.find("selftest passed"), std::string::npos) << human.out;
  EXPECT_EQ(human.out.find("FAIL"), std::string::npos) << human.out;
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_, "--strict"}).code, 0) << "key generate's policy is the strict one";

  ToolResult machine = Run({"selftest", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(machine.code, 0) << machine.all();
  json result = json::parse(machine.out, nullptr, false);
  EXPECT_EQ(result["ok"], true) << machine.out;
  ASSERT_EQ(result["keys"].size(), 2u) << machine.out;
  for (const json& key : result["keys"]) {
    EXPECT_EQ(key["ok"], true) << key.dump();
    EXPECT_EQ(key["round_trip"], true) << key.dump();
    EXPECT_EQ(key["tamper_rejected"], true) << key.dump();
    EXPECT_TRUE(key["warnings"].empty()) << key.dump();
  }
}

TEST_F(InitToolTest, SelftestFailsOnAnExtractableKeyAndWarnsOnAModifiableOne) {
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
  ToolResult modifiable = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(modifiable.code, 0) << "a warning is not a failure\n" << modifiable.all();
  EXPECT_NE(modifiable.out.find("WARN modifiable"), std::string::npos) << modifiable.out;
  // --strict holds keys to exactly the policy `key generate` gives: the warning fails.
  ToolResult strict = Run({"selftest", "--pkcs11-uri", uri_, "--strict"});
  EXPECT_EQ(strict.code, 1) << strict.all();
  EXPECT_NE(strict.out.find("FAIL (strict) modifiable"), std::string::npos) << strict.out;
  EXPECT_NE(strict.out.find("selftest FAILED"), std::string::npos) << strict.out;

  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  ToolResult unsafe = Run({"selftest", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(unsafe.code, 1) << unsafe.all();
  json result = json::parse(unsafe.out, nullptr, false);
  EXPECT_EQ(result["ok"], false) << unsafe.out;
  ASSERT_EQ(result["keys"].size(), 2u) << unsafe.out;
  EXPECT_EQ(result["keys"][0]["ok"], true) << unsafe.out;
  EXPECT_EQ(result["keys"][1]["ok"], false) << unsafe.out;
  EXPECT_NE(result["keys"][1]["failures"].dump().find("extractable"), std::string::npos) << unsafe.out;

  ToolResult human = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(human.code, 1);
  EXPECT_NE(human.out.find("FAIL KEK policy: it is extractable"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("selftest FAILED"), std::string::npos) << human.out;
}

TEST_F(InitToolTest, SelftestFailsOnAnEmptyFamily) {
  ToolResult empty = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(empty.code, 1) << empty.all();
  EXPECT_NE(empty.out.find("no key"), std::string::npos) << empty.out;
}

}  // namespace
}  // namespace trousseau::init_tool
