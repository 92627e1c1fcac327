// Both KMS APIs over a real unix socket, served in-process on a real SoftHSM token, called with the
// generated gRPC clients the way kube-apiserver calls them.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "core/kms_engine.h"
#include "hsm/pkcs11_backend.h"
#include "server/kms_server.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/softhsm_token.h"
#include "tests/testing/subprocess.h"

namespace trousseau {
namespace {

using testing::CallContext;
using testing::KmsClients;
using testing::SoftHsmToken;

class KmsServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
    ASSERT_TRUE(uri.ok());
    auto backend = hsm::Pkcs11Backend::Create(*std::move(uri), {.sessions = 4});
    ASSERT_TRUE(backend.ok());
    engine_ = std::make_unique<KmsEngine>(std::shared_ptr<KeyBackend>(*std::move(backend)), EngineOptions{"kek"});
    ASSERT_TRUE(engine_->LoadKeyRing().ok());
    socket_ = token_->dir() + "/kms.sock";
    server::ServerOptions options;
    options.listen = "unix://" + socket_;
    options.runtime_version = "test";
    options.after_response_wipe = [this](std::string_view method, std::string_view field) {
      std::lock_guard lock(wipes_mu_);
      wipes_.push_back({std::string(method), std::string(field)});
    };
    auto server = server::KmsServer::Start(*engine_, options);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = *std::move(server);
    clients_ = std::make_unique<KmsClients>(socket_);
  }

  void TearDown() override {
    clients_.reset();
    if (server_) server_->Shutdown(std::chrono::seconds(1));
  }

  v2::EncryptResponse EncryptV2(const std::string& plaintext) {
    v2::EncryptRequest request;
    request.set_plaintext(plaintext);
    request.set_uid("test-uid");
    v2::EncryptResponse response;
    grpc::Status status = clients_->v2->Encrypt(CallContext().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  grpc::Status DecryptV2(const std::string& ciphertext, const std::string& key_id, std::string* plaintext) {
    v2::DecryptRequest request;
    request.set_ciphertext(ciphertext);
    request.set_key_id(key_id);
    request.set_uid("test-uid");
    v2::DecryptResponse response;
    grpc::Status status = clients_->v2->Decrypt(CallContext().get(), request, &response);
    if (plaintext) *plaintext = response.plaintext();
    return status;
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::unique_ptr<KmsEngine> engine_;
  std::unique_ptr<server::KmsServer> server_;
  std::unique_ptr<KmsClients> clients_;
  std::string socket_;
  std::mutex wipes_mu_;
  std::vector<std::pair<std::string, std::string>> wipes_;  // (method, field bytes right after the wipe)
};

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

// The plaintext a Decrypt returns does not stay in the plugin's memory once it is sent: the response
// message's field is overwritten with zeros after gRPC has serialised and sent it, for both APIs; the
// caller still receives the plaintext.
TEST_F(KmsServiceTest, DecryptResponsesAreWipedOnceSent) {
  const std::string seed(32, '\x42');
  v2::EncryptResponse sealed = EncryptV2(seed);
  std::string plaintext;
  ASSERT_TRUE(DecryptV2(sealed.ciphertext(), sealed.key_id(), &plaintext).ok());
  EXPECT_EQ(plaintext, seed);

  v1beta1::EncryptRequest encrypt;
  encrypt.set_version("v1beta1");
  encrypt.set_plain(seed);
  v1beta1::EncryptResponse v1_sealed;
  ASSERT_TRUE(clients_->v1beta1->Encrypt(CallContext().get(), encrypt, &v1_sealed).ok());
  v1beta1::DecryptRequest decrypt;
  decrypt.set_version("v1beta1");
  decrypt.set_cipher(v1_sealed.cipher());
  v1beta1::DecryptResponse v1_opened;
  ASSERT_TRUE(clients_->v1beta1->Decrypt(CallContext().get(), decrypt, &v1_opened).ok());
  EXPECT_EQ(v1_opened.plain(), seed);

  // POST_SEND_MESSAGE runs before the status reaches the client, but allow for the ordering.
  ASSERT_TRUE(testing::Eventually([&] { std::lock_guard l(wipes_mu_); return wipes_.size() == 2; },
                                  std::chrono::seconds(2)));
  std::lock_guard lock(wipes_mu_);
  // The two wipes may land in either order: each runs on the server after its own response is sent.
  std::multiset<std::string> methods;
  for (const auto& wipe : wipes_) methods.insert(wipe.first);
  EXPECT_EQ(methods, (std::multiset<std::string>{"/v1beta1.KeyManagementService/Decrypt",
                                                 "/v2.KeyManagementService/Decrypt"}));
  for (const auto& [method, field] : wipes_) {
    EXPECT_EQ(field, std::string(32, '\0')) << method << ": every plaintext byte must be zero";
  }
}

// Only Decrypt responses carry plaintext: no other call is intercepted.
TEST_F(KmsServiceTest, OnlyDecryptResponsesAreIntercepted) {
  v2::StatusResponse status;
  ASSERT_TRUE(clients_->v2->Status(CallContext().get(), {}, &status).ok());
  EncryptV2("seed");
  std::string plaintext;
  EXPECT_FALSE(DecryptV2("garbage", status.key_id(), &plaintext).ok());  // no response message is sent
  std::lock_guard lock(wipes_mu_);
  EXPECT_TRUE(wipes_.empty());
}

}  // namespace
}  // namespace trousseau
