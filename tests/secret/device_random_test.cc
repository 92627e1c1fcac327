// The device RNGs `secret generate` draws from, on real devices: a SoftHSM token (C_GenerateRandom,
// logged in with the URI's pin-source, as the plugin) and a swtpm (TPM2_GetRandom, several commands
// for more than one digest's worth).
#include "tools/secret/device_random.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <memory>
#include <string>

#include "tests/testing/skip_or_fail_in_ci.h"
#include "tests/tpm/swtpm.h"
#include "tools/support/softhsm_token.h"

namespace trousseau::secret {
namespace {

bool AllZero(const SecureBytes& b) {
  for (size_t i = 0; i < b.size(); ++i) {
    if (b.data()[i] != 0) return false;
  }
  return true;
}

TEST(DeviceRandomTest, SoftHsmToken) {
  std::unique_ptr<support::SoftHsmToken> token = support::SoftHsmToken::Create("rng-test");
  if (token == nullptr) SKIP_OR_FAIL_IN_CI("no SoftHSM2 token (softhsm2 installed?)");
  StatusOr<DeviceBytes> a = DeviceRandomBytes({token->Uri(), ""}, 600);  // more than one 256-byte call
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->bytes.size(), 600u);
  EXPECT_FALSE(AllZero(a->bytes));
  EXPECT_TRUE(a->description.starts_with("pkcs11 token 'rng-test' serial ")) << a->description;
  StatusOr<DeviceBytes> b = DeviceRandomBytes({token->Uri(), ""}, 600);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(a->bytes.view(), b->bytes.view());
}

TEST(DeviceRandomTest, SoftHsmWrongPinIsPermissionDenied) {
  std::unique_ptr<support::SoftHsmToken> token = support::SoftHsmToken::Create("rng-pin");
  if (token == nullptr) SKIP_OR_FAIL_IN_CI("no SoftHSM2 token (softhsm2 installed?)");
  testing::TempDir dir;
  const std::string wrong = dir.path() + "/wrong-pin";
  FILE* f = std::fopen(wrong.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("11112222", f);
  std::fclose(f);
  ASSERT_EQ(chmod(wrong.c_str(), 0600), 0);
  std::string uri = token->Uri();
  uri.replace(uri.find("pin-source=file:") + 16, std::string::npos, wrong);
  StatusOr<DeviceBytes> bytes = DeviceRandomBytes({uri, ""}, 32);
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.status().code(), StatusCode::kPermissionDenied) << bytes.status().message();
  EXPECT_EQ(bytes.status().message().find("11112222"), std::string::npos);
}

TEST(DeviceRandomTest, Swtpm) {
  testing::TempDir dir;
  std::unique_ptr<testing::Swtpm> tpm = testing::Swtpm::Start(dir.path() + "/tpm");
  if (tpm == nullptr) SKIP_OR_FAIL_IN_CI("swtpm did not start (swtpm installed?)");
  StatusOr<DeviceBytes> a = DeviceRandomBytes({"", tpm->Tcti()}, 200);  // a TPM gives <= 64 per command
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->bytes.size(), 200u);
  EXPECT_FALSE(AllZero(a->bytes));
  EXPECT_EQ(a->description, "tpm2 (" + tpm->Tcti() + ")");
  StatusOr<DeviceBytes> b = DeviceRandomBytes({"", tpm->Tcti()}, 200);
  ASSERT_TRUE(b.ok());
  EXPECT_NE(a->bytes.view(), b->bytes.view());
}

TEST(DeviceRandomTest, ExactlyOneDevice) {
  EXPECT_EQ(DeviceRandomBytes({"", ""}, 32).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DeviceRandomBytes({"pkcs11:token=x", "swtpm:path=/x"}, 32).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace trousseau::secret
