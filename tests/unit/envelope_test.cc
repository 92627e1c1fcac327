#include "core/envelope.h"

#include <gtest/gtest.h>

namespace trousseau {
namespace {

TEST(Envelope, HeaderCarriesMagicFormatAndBigEndianVersion) {
  const std::string header = EncodeEnvelopeHeader(0x0102030405060708ULL);
  ASSERT_EQ(header.size(), kEnvelopeHeaderSize);
  EXPECT_EQ(header.substr(0, 3), std::string("TH\x01", 3));
  EXPECT_EQ(header.substr(3), std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
}

TEST(Envelope, ParsesWhatItEncodes) {
  const std::string ciphertext = EncodeEnvelopeHeader(7) + "sealed-bytes";
  StatusOr<ParsedEnvelope> parsed = ParseEnvelope(ciphertext);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->key_version, 7u);
  EXPECT_EQ(parsed->header, EncodeEnvelopeHeader(7));
  EXPECT_EQ(parsed->sealed, "sealed-bytes");
}

TEST(Envelope, RejectsEmptyAndHeaderOnlyInput) {
  EXPECT_TRUE(IsInvalidArgument(ParseEnvelope("").status()));
  EXPECT_TRUE(IsInvalidArgument(ParseEnvelope(EncodeEnvelopeHeader(1)).status()));
}

TEST(Envelope, RejectsForeignMagic) {
  std::string ciphertext = EncodeEnvelopeHeader(1) + "x";
  ciphertext[0] = 'k';  // e.g. "k8s:enc:..." handed to the wrong plugin
  StatusOr<ParsedEnvelope> parsed = ParseEnvelope(ciphertext);
  EXPECT_TRUE(IsInvalidArgument(parsed.status()));
  EXPECT_NE(parsed.status().message().find("magic"), std::string::npos);
}

TEST(Envelope, RejectsUnknownFormatVersion) {
  std::string ciphertext = EncodeEnvelopeHeader(1) + "x";
  for (char format : {0, 4, 0x7f}) {
    ciphertext[2] = format;
    EXPECT_TRUE(IsInvalidArgument(ParseEnvelope(ciphertext).status())) << int{format};
  }
}

TEST(Envelope, CarriesTheFormatOfTheKeyVersionsScheme) {
  const std::string ciphertext = EncodeEnvelopeHeader(7, kEnvelopeFormatV2) + "sealed";
  EXPECT_EQ(ciphertext[2], 2);
  StatusOr<ParsedEnvelope> parsed = ParseEnvelope(ciphertext);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->format, kEnvelopeFormatV2);
  EXPECT_EQ(parsed->key_version, 7u);
  EXPECT_EQ(ParseEnvelope(EncodeEnvelopeHeader(7) + "sealed")->format, kEnvelopeFormatV1);
}

TEST(Envelope, RejectsKeyVersionZero) {
  EXPECT_TRUE(IsInvalidArgument(ParseEnvelope(EncodeEnvelopeHeader(0) + "x").status()));
}

}  // namespace
}  // namespace trousseau
