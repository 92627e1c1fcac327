// tools/secret: the mixed random stream and the value formats. Statistical checks run on a seeded
// (deterministic) stream, so they pass or fail the same way every time, and are loose enough that
// only a real bias (e.g. modulo instead of rejection) fails them.
#include "tools/secret/value_format.h"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <set>
#include <string>
#include <vector>

#include "tools/kube/base64.h"
#include "tools/secret/mixed_random.h"

namespace trousseau::secret {
namespace {

// Pearson's chi-square of `draws` uniform indices in [0, n).
double ChiSquare(MixedRandom& random, size_t n, size_t draws) {
  std::vector<size_t> counts(n);
  for (size_t i = 0; i < draws; ++i) ++counts[UniformIndex(random, n)];
  const double expected = static_cast<double>(draws) / static_cast<double>(n);
  double chi2 = 0;
  for (size_t c : counts) chi2 += (c - expected) * (c - expected) / expected;
  return chi2;
}

TEST(MixedRandomTest, SameSeedSameStreamOtherSeedOtherStream) {
  MixedRandom a = MixedRandom::ForTest("seed"), b = MixedRandom::ForTest("seed"), c = MixedRandom::ForTest("seeD");
  std::string x(100, '\0'), y(100, '\0'), z(100, '\0');
  a.Fill(reinterpret_cast<uint8_t*>(x.data()), x.size());
  b.Fill(reinterpret_cast<uint8_t*>(y.data()), y.size());
  c.Fill(reinterpret_cast<uint8_t*>(z.data()), z.size());
  EXPECT_EQ(x, y);
  EXPECT_NE(x, z);
}

TEST(MixedRandomTest, TheOsRngIsMixedIn) {
  // The same device bytes twice: the OS's bytes make the two streams differ.
  const SecureBytes device = SecureBytes::CopyOf(std::string(kSeedBytes, 'd'));
  StatusOr<MixedRandom> a = MixedRandom::FromDevice(device), b = MixedRandom::FromDevice(device);
  ASSERT_TRUE(a.ok() && b.ok());
  std::string x(32, '\0'), y(32, '\0');
  a->Fill(reinterpret_cast<uint8_t*>(x.data()), x.size());
  b->Fill(reinterpret_cast<uint8_t*>(y.data()), y.size());
  EXPECT_NE(x, y);
}

TEST(UniformIndexTest, NoModuloBias) {
  // n = 200: 256 % 200 = 56, so `byte % 200` would make 0..55 twice as likely as 56..199: chi-square
  // in the tens of thousands. Uniform: mean 199, standard deviation ~20; the bound is ~10 deviations out.
  MixedRandom random = MixedRandom::ForTest("no modulo bias");
  EXPECT_LT(ChiSquare(random, 200, 200000), 400.0);
  // The alphabet of alnum (62) and a small one (3).
  EXPECT_LT(ChiSquare(random, 62, 62000), 130.0);
  EXPECT_LT(ChiSquare(random, 3, 30000), 25.0);
}

TEST(UniformIndexTest, ModuloWouldFailTheSameCheck) {
  // The check above can fail: the biased way of drawing, on the same stream, is far outside its bound.
  MixedRandom random = MixedRandom::ForTest("no modulo bias");
  std::vector<size_t> counts(200);
  for (size_t i = 0; i < 200000; ++i) ++counts[random.NextByte() % 200];
  double chi2 = 0;
  for (size_t c : counts) chi2 += (c - 1000.0) * (c - 1000.0) / 1000.0;
  EXPECT_GT(chi2, 400.0);
}

std::string Generate(const ValueSpec& spec, const std::string& seed = "values") {
  MixedRandom random = MixedRandom::ForTest(seed);
  StatusOr<SecureBytes> value = GenerateValue(spec, random);
  EXPECT_TRUE(value.ok()) << value.status().message();
  return value.ok() ? std::string(value->view()) : "";
}

TEST(ValueFormatTest, HexBase64AlnumCharset) {
  StatusOr<ValueSpec> hex = ParseValueSpec("hex", 16, std::nullopt);
  ASSERT_TRUE(hex.ok());
  const std::string h = Generate(*hex);
  EXPECT_EQ(h.size(), 32u);
  EXPECT_EQ(h.find_first_not_of("0123456789abcdef"), std::string::npos);

  StatusOr<ValueSpec> b64 = ParseValueSpec("base64", std::nullopt, std::nullopt);
  ASSERT_TRUE(b64.ok());
  StatusOr<SecureBytes> decoded = kube::Base64Decode(Generate(*b64));
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->size(), 32u);  // the default: 32 random bytes

  StatusOr<ValueSpec> alnum = ParseValueSpec("", std::nullopt, std::nullopt);
  ASSERT_TRUE(alnum.ok());
  EXPECT_EQ(alnum->format, ValueFormat::kAlnum);
  const std::string a = Generate(*alnum);
  EXPECT_EQ(a.size(), 32u);
  EXPECT_EQ(a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"), std::string::npos);

  StatusOr<ValueSpec> charset = ParseValueSpec("", 1000, std::string("xyzzy!"));
  ASSERT_TRUE(charset.ok());
  EXPECT_EQ(charset->charset, "xyz!");  // duplicates dropped: each character equally likely
  const std::string c = Generate(*charset);
  EXPECT_EQ(c.size(), 1000u);
  EXPECT_EQ(std::set<char>(c.begin(), c.end()), (std::set<char>{'x', 'y', 'z', '!'}));
}

TEST(ValueFormatTest, RefusedSpecs) {
  EXPECT_FALSE(ParseValueSpec("rot13", std::nullopt, std::nullopt).ok());
  EXPECT_FALSE(ParseValueSpec("hex", 0, std::nullopt).ok());
  EXPECT_FALSE(ParseValueSpec("hex", 5000, std::nullopt).ok());
  EXPECT_FALSE(ParseValueSpec("pem-ec-p256", 32, std::nullopt).ok());
  EXPECT_FALSE(ParseValueSpec("hex", std::nullopt, std::string("ab")).ok());
  EXPECT_FALSE(ParseValueSpec("", std::nullopt, std::string("aaa")).ok());
  EXPECT_FALSE(ParseValueSpec("", std::nullopt, std::string("a\nb")).ok());
}

TEST(ValueFormatTest, PemEcP256IsAP256KeyDrawnFromTheStream) {
  StatusOr<ValueSpec> spec = ParseValueSpec("pem-ec-p256", std::nullopt, std::nullopt);
  ASSERT_TRUE(spec.ok());
  const std::string pem = Generate(*spec, "key seed");
  ASSERT_TRUE(pem.starts_with("-----BEGIN PRIVATE KEY-----")) << "not PKCS#8 PEM";
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  ASSERT_NE(key, nullptr);
  char group[64] = {0};
  size_t group_size = 0;
  EXPECT_EQ(EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &group_size), 1);
  EXPECT_STREQ(group, "prime256v1");
  EXPECT_EQ(EVP_PKEY_get_bits(key), 256);
  EVP_PKEY_free(key);
  // Drawn from the stream alone (not OpenSSL's RNG): the same seed gives the same key, another seed another.
  EXPECT_EQ(Generate(*spec, "key seed"), pem);
  EXPECT_NE(Generate(*spec, "other seed"), pem);
}

}  // namespace
}  // namespace trousseau::secret
