// The v2 KMS service as kube-apiserver uses it: Status, the socket, seed round trips under the Status
// key_id, a rotation, 64 clients at once. Fixture: kms_service_test.h.
#include "tests/integration/kms_service_test.h"

#include <sys/stat.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace trousseau::kms_service_test {
namespace {

TEST_F(KmsServiceTest, StatusIsWhatKubeApiserverRequires) {
  v2::StatusResponse status;
  ASSERT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
  EXPECT_EQ(status.version(), "v2");
  EXPECT_EQ(status.healthz(), "ok");
  EXPECT_FALSE(status.key_id().empty());
  EXPECT_LE(status.key_id().size(), 1024u);
}

TEST_F(KmsServiceTest, SocketIsOwnerOnly) {
  struct stat st {};
  ASSERT_EQ(stat(socket_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(KmsServiceTest, V2SeedRoundTripWithTheStatusKeyId) {
  const std::string seed(32, '\x42');
  v2::EncryptResponse sealed = EncryptV2(seed);
  v2::StatusResponse status;
  ASSERT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
  EXPECT_EQ(sealed.key_id(), status.key_id());
  EXPECT_FALSE(sealed.ciphertext().empty());
  EXPECT_LE(sealed.ciphertext().size(), 1024u);
  EXPECT_EQ(sealed.ciphertext().find(seed), std::string::npos);
  EXPECT_TRUE(sealed.annotations().empty());
  std::string plaintext;
  ASSERT_TRUE(DecryptV2(sealed.ciphertext(), sealed.key_id(), &plaintext).ok());
  EXPECT_EQ(plaintext, seed);
}

TEST_F(KmsServiceTest, RotationKeepsOldCiphertextsReadableAndChangesTheKeyId) {
  v2::EncryptResponse old_sealed = EncryptV2("old-seed");
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  ASSERT_TRUE(engine_->LoadKeyRing().ok());
  v2::StatusResponse status;
  ASSERT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
  EXPECT_NE(status.key_id(), old_sealed.key_id());
  EXPECT_EQ(EncryptV2("new-seed").key_id(), status.key_id());
  std::string plaintext;
  ASSERT_TRUE(DecryptV2(old_sealed.ciphertext(), old_sealed.key_id(), &plaintext).ok());
  EXPECT_EQ(plaintext, "old-seed");
  // A ciphertext presented under the other version's key_id is refused, not mis-decrypted.
  EXPECT_EQ(DecryptV2(old_sealed.ciphertext(), status.key_id(), nullptr).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(KmsServiceTest, SixtyFourConcurrentClientsAllGetTheirOwnPlaintextBack) {
  constexpr int kThreads = 64;
  constexpr int kCallsPerThread = 20;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      KmsClients clients(socket_);
      for (int i = 0; i < kCallsPerThread; ++i) {
        const std::string seed = "seed-" + std::to_string(t) + "-" + std::to_string(i);
        v2::EncryptRequest encrypt;
        encrypt.set_plaintext(seed);
        v2::EncryptResponse sealed;
        if (!clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok()) {
          ++failures;
          continue;
        }
        v2::DecryptRequest decrypt;
        decrypt.set_ciphertext(sealed.ciphertext());
        decrypt.set_key_id(sealed.key_id());
        v2::DecryptResponse opened;
        if (!clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok() || opened.plaintext() != seed) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace trousseau::kms_service_test
