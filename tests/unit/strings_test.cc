#include "core/strings.h"

#include <gtest/gtest.h>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau {
namespace {

TEST(Strings, StrCatJoinsTextAndNumbers) {
  EXPECT_EQ(StrCat("v", 2, "-", std::string_view("x"), std::string("y"), 'z'), "v2-xyz");
}

TEST(Strings, QuoteForMessageEscapesAndTruncates) {
  EXPECT_EQ(QuoteForMessage(std::string("a\x01\"b", 4)), "\"a\\x01\\x22b\"");
  EXPECT_EQ(QuoteForMessage("abcdef", 3), "\"abc\"...");
}

TEST(Strings, ParseDurationKnowsTheUsualUnits) {
  EXPECT_EQ(ParseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(ParseDuration("5s"), std::chrono::milliseconds(5000));
  EXPECT_EQ(ParseDuration("2m"), std::chrono::milliseconds(120000));
  EXPECT_EQ(ParseDuration("0"), std::chrono::milliseconds(0));
  EXPECT_FALSE(ParseDuration("5").has_value());
  EXPECT_FALSE(ParseDuration("-5s").has_value());
  EXPECT_FALSE(ParseDuration("5 s").has_value());
}

TEST(Strings, ParseUnsignedTakesOnlyWholeNumbers) {
  EXPECT_EQ(ParseUnsigned<uint32_t>("0600", 8), 0600u);
  EXPECT_FALSE(ParseUnsigned<uint32_t>("0680", 8).has_value());
  EXPECT_FALSE(ParseUnsigned<uint32_t>("12abc").has_value());
}

TEST(Status, StatusOrCarriesValueOrError) {
  StatusOr<int> good = 3;
  StatusOr<int> bad = UnavailableError("device gone");
  EXPECT_TRUE(good.ok());
  EXPECT_EQ(*good, 3);
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().ToString(), "UNAVAILABLE: device gone");
}

TEST(SecureBytes, TruncateKeepsThePrefix) {
  SecureBytes bytes = SecureBytes::CopyOf("secret-and-tail");
  bytes.Truncate(6);
  EXPECT_EQ(bytes.view(), "secret");
}

TEST(SecureBytes, MoveLeavesTheSourceEmpty) {
  SecureBytes a = SecureBytes::CopyOf("k");
  SecureBytes b = std::move(a);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): the contract under test
  EXPECT_EQ(b.view(), "k");
}

TEST(JsonQuote, EscapesQuotesBackslashesAndControlCharactersAndKeepsUtf8) {
  EXPECT_EQ(JsonQuote("plain"), "\"plain\"");
  EXPECT_EQ(JsonQuote("a\"b\\c"), "\"a\\\"b\\\\c\"");
  EXPECT_EQ(JsonQuote("line\nnext\ttab"), "\"line\\nnext\\ttab\"");
  EXPECT_EQ(JsonQuote(std::string("nul\0del\x7f", 8)), "\"nul\\u0000del\\u007f\"");
  EXPECT_EQ(JsonQuote("cl\xc3\xa9s"), "\"cl\xc3\xa9s\"");
}

TEST(Strings, PercentEncodeKeepsOnlyUnreservedCharactersAndOptionallySlashes) {
  EXPECT_EQ(PercentEncode("configdir='sql:/var/nss' flags="), "configdir%3D%27sql%3A%2Fvar%2Fnss%27%20flags%3D");
  EXPECT_EQ(PercentEncode("/usr/lib/a-b_c.so~", /*keep_slash=*/true), "/usr/lib/a-b_c.so~");
  EXPECT_EQ(PercentEncode(std::string_view("\xff\x00", 2)), "%FF%00");
}

TEST(Strings, NearestNameSuggestsTyposAndUniquePrefixesOnly) {
  const std::vector<std::string> commands = {"token", "key", "selftest", "config", "tpm", "recipients", "recipient"};
  EXPECT_EQ(NearestName("kee", commands), "key");
  EXPECT_EQ(NearestName("selftets", commands), "selftest");
  EXPECT_EQ(NearestName("recipent", commands), "recipient");
  EXPECT_EQ(NearestName("conf", commands), "config") << "a prefix of one name only";
  EXPECT_EQ(NearestName("rotate", commands), "") << "nothing close";
  EXPECT_EQ(NearestName("", commands), "");
  EXPECT_EQ(NearestName("pin", {"--pkcs11-uri", "--listen"}), "");
}

}  // namespace
}  // namespace trousseau
