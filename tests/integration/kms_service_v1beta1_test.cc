// The v1beta1 KMS service (older clusters): Version, round trips, and the envelope it shares with v2.
// Fixture: kms_service_test.h.
#include "tests/integration/kms_service_test.h"

#include <string>

namespace trousseau::kms_service_test {
namespace {

TEST_F(KmsServiceTest, V1beta1VersionAndRoundTrip) {
  v1beta1::VersionRequest version_request;
  version_request.set_version("v1beta1");
  v1beta1::VersionResponse version;
  ASSERT_TRUE(clients_->v1beta1->Version(CallContext().get(), version_request, &version).ok());
  EXPECT_EQ(version.version(), "v1beta1");
  EXPECT_EQ(version.runtime_name(), "trousseau-hsm");

  const std::string dek(32, '\x17');
  v1beta1::EncryptRequest encrypt;
  encrypt.set_version("v1beta1");
  encrypt.set_plain(dek);
  v1beta1::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v1beta1->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  EXPECT_EQ(sealed.cipher().find(dek), std::string::npos);
  v1beta1::DecryptRequest decrypt;
  decrypt.set_version("v1beta1");
  decrypt.set_cipher(sealed.cipher());
  v1beta1::DecryptResponse opened;
  ASSERT_TRUE(clients_->v1beta1->Decrypt(CallContext().get(), decrypt, &opened).ok());
  EXPECT_EQ(opened.plain(), dek);
}

TEST_F(KmsServiceTest, V1beta1RefusesAnotherApiVersion) {
  v1beta1::VersionRequest request;
  request.set_version("v2");
  v1beta1::VersionResponse response;
  EXPECT_EQ(clients_->v1beta1->Version(CallContext().get(), request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1beta1::DecryptRequest decrypt;
  decrypt.set_version("v1");
  decrypt.set_cipher("x");
  v1beta1::DecryptResponse opened;
  EXPECT_EQ(clients_->v1beta1->Decrypt(CallContext().get(), decrypt, &opened).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(KmsServiceTest, V1AndV2ShareTheEnvelopeButV2InsistsOnTheRightKeyId) {
  v1beta1::EncryptRequest encrypt;
  encrypt.set_plain("dek");
  v1beta1::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v1beta1->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  v2::StatusResponse status;
  ASSERT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
  std::string plaintext;
  ASSERT_TRUE(DecryptV2(sealed.cipher(), status.key_id(), &plaintext).ok());
  EXPECT_EQ(plaintext, "dek");
}

}  // namespace
}  // namespace trousseau::kms_service_test
