// Limits and bad input on both KMS APIs: each gets a clear gRPC error and the service goes on serving.
// Fixture: kms_service_test.h.
#include "tests/integration/kms_service_test.h"

#include <string>

namespace trousseau::kms_service_test {
namespace {

TEST_F(KmsServiceTest, V2RefusesAPlaintextWhoseCiphertextWouldExceed1KiB) {
  const size_t largest = 1024 - 11 - 28;
  EXPECT_TRUE(EncryptV2(std::string(largest, 'a')).ciphertext().size() == 1024);
  v2::EncryptRequest request;
  request.set_plaintext(std::string(largest + 1, 'a'));
  v2::EncryptResponse response;
  grpc::Status status = clients_->v2->Encrypt(CallContext().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  request.set_plaintext("");
  EXPECT_EQ(clients_->v2->Encrypt(CallContext().get(), request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(KmsServiceTest, V2BadInputGetsClearErrorsAndServiceGoesOn) {
  v2::EncryptResponse sealed = EncryptV2("seed-seed-seed-seed-seed-seed-32");
  EXPECT_EQ(DecryptV2(sealed.ciphertext(), "kek-v9-unknown", nullptr).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(DecryptV2(sealed.ciphertext(), "", nullptr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DecryptV2(sealed.ciphertext(), std::string(1025, 'k'), nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DecryptV2("garbage", sealed.key_id(), nullptr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DecryptV2(std::string(1025, 'x'), sealed.key_id(), nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  std::string tampered = sealed.ciphertext();
  tampered[tampered.size() / 2] ^= 0x80;
  grpc::Status forged = DecryptV2(tampered, sealed.key_id(), nullptr);
  EXPECT_EQ(forged.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(forged.error_message().find("authentication"), std::string::npos) << forged.error_message();
  std::string plaintext;
  ASSERT_TRUE(DecryptV2(sealed.ciphertext(), sealed.key_id(), &plaintext).ok());
  EXPECT_EQ(plaintext, "seed-seed-seed-seed-seed-seed-32");
}

TEST_F(KmsServiceTest, OversizeRequestIsRefusedByGrpcAndServiceGoesOn) {
  v2::DecryptRequest request;
  request.set_ciphertext(std::string(server::kMaxRequestBytes + 1, 'x'));
  request.set_key_id("k");
  v2::DecryptResponse response;
  EXPECT_EQ(clients_->v2->Decrypt(CallContext().get(), request, &response).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  v2::StatusResponse status;
  EXPECT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
}

TEST_F(KmsServiceTest, V1beta1BadInputGetsClearErrorsAndServiceGoesOn) {
  v1beta1::EncryptRequest encrypt;
  encrypt.set_version("v1beta1");
  encrypt.set_plain("seed-seed-seed-seed-seed-seed-32");
  v1beta1::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v1beta1->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  auto decrypt = [&](const std::string& cipher) {
    v1beta1::DecryptRequest request;
    request.set_version("v1beta1");
    request.set_cipher(cipher);
    v1beta1::DecryptResponse response;
    return clients_->v1beta1->Decrypt(CallContext().get(), request, &response);
  };
  std::string forged = sealed.cipher();
  forged[forged.size() / 2] ^= 0x80;
  const grpc::Status forged_status = decrypt(forged);
  EXPECT_EQ(forged_status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << forged_status.error_message();
  EXPECT_NE(forged_status.error_message().find("authentication"), std::string::npos) << forged_status.error_message();
  EXPECT_EQ(decrypt("garbage").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(decrypt(std::string(sealed.cipher().size(), '\x5a')).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(decrypt("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  const grpc::Status oversize = decrypt(std::string(server::kV1MaxCiphertext + 1, 'x'));
  EXPECT_EQ(oversize.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << oversize.error_message();
  std::string other_version = sealed.cipher();
  other_version[10] = 9;  // the envelope's key version (last header byte): a version not on the token
  EXPECT_EQ(decrypt(other_version).error_code(), grpc::StatusCode::NOT_FOUND);

  v1beta1::DecryptRequest good;
  good.set_version("v1beta1");
  good.set_cipher(sealed.cipher());
  v1beta1::DecryptResponse opened;
  ASSERT_TRUE(clients_->v1beta1->Decrypt(CallContext().get(), good, &opened).ok());
  EXPECT_EQ(opened.plain(), "seed-seed-seed-seed-seed-seed-32");
}

}  // namespace
}  // namespace trousseau::kms_service_test
