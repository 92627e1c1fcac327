// Both KMS APIs over a real unix socket, served in-process on a real SoftHSM token, called with the
// generated gRPC clients the way kube-apiserver calls them.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "core/kms_engine.h"
#include "hsm/pkcs11_backend.h"
#include "server/kms_server.h"
#include "server/response_wiper.h"
#include "tests/testing/kms_clients.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using support::SoftHsmToken;
using testing::CallContext;
using testing::KmsClients;

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

// The server KmsServer::Start builds runs the response wiper on both Decrypt methods (what the wiper
// reports about itself; WipeTest below watches the handlers' own buffers); the caller still receives
// the plaintext.
TEST_F(KmsServiceTest, TheServerRunsTheResponseWiperOnBothDecrypts) {
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
  ASSERT_TRUE(support::Eventually(
      [&] {
        std::lock_guard l(wipes_mu_);
        return wipes_.size() == 2;
      },
      std::chrono::seconds(2)));
  std::lock_guard lock(wipes_mu_);
  // The two wipes may land in either order: each runs on the server after its own response is sent.
  std::multiset<std::string> methods;
  for (const auto& wipe : wipes_) methods.insert(wipe.first);
  EXPECT_EQ(methods,
            (std::multiset<std::string>{"/v1beta1.KeyManagementService/Decrypt", "/v2.KeyManagementService/Decrypt"}));
  for (const auto& [method, field] : wipes_) {
    EXPECT_EQ(field, std::string(32, '\0')) << method << ": every plaintext byte must be zero";
  }
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

// ---------------------------------------------------------------------------------------------------
// Wiping, watched on the handlers' own buffers. The product's services and response wiper serve a real
// socket here, each service wrapped so the test sees the very request and response objects its
// handler used; a test interceptor looks at the response buffer after the wiper has run.

bool AllZero(std::string_view bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](char c) { return c == '\0'; });
}

// What the test saw of the handlers' buffers, per call (keyed by the call's ServerContext, which lives
// until the call is over). Thread-safe: handlers and interceptors run on gRPC's threads.
class BufferWatch {
 public:
  struct RequestSeen {
    std::string call;
    size_t size = 0;
    bool zero_after_handler = false;  // the request's plaintext, read once the handler returned
  };
  struct ResponseSeen {
    std::string call;
    bool held_plaintext = false;   // the field was non-zero when the handler returned
    bool same_message = false;     // gRPC sent the very object the handler filled
    bool zero_after_send = false;  // the field's bytes, after the send (and the wiper)
  };

  void RequestAfterHandler(const std::string& call, const std::string& plaintext) {
    std::lock_guard lock(mu_);
    requests_.push_back({call, plaintext.size(), AllZero(plaintext)});
  }
  void ResponseFilled(const std::string& call, const grpc::ServerContextBase* context, const void* message,
                      const std::string& plaintext) {
    std::lock_guard lock(mu_);
    pending_[context] = {call, message, plaintext};
  }
  // From the test interceptor, after the send (and after the wiper): the response object still exists,
  // gRPC destroys it only once the send has completed.
  void ResponseSent(const grpc::ServerContextBase* context, const void* message) {
    std::lock_guard lock(mu_);
    auto it = pending_.find(context);
    if (it == pending_.end()) return;  // not a Decrypt that succeeded
    const Filled& filled = it->second;
    responses_.push_back({filled.call, filled.held_plaintext, message == filled.message, AllZero(filled.buffer)});
    pending_.erase(it);
  }
  std::vector<RequestSeen> requests() {
    std::lock_guard lock(mu_);
    return requests_;
  }
  std::vector<ResponseSeen> responses() {
    std::lock_guard lock(mu_);
    return responses_;
  }

 private:
  struct Filled {
    Filled() = default;
    Filled(std::string call, const void* message, const std::string& field)
        : call(std::move(call)), message(message), buffer(field), held_plaintext(!AllZero(field)) {}
    std::string call;
    const void* message = nullptr;
    std::string_view buffer;  // the field's bytes where the handler left them (not a copy)
    bool held_plaintext = false;
  };
  std::mutex mu_;
  std::vector<RequestSeen> requests_;
  std::map<const grpc::ServerContextBase*, Filled> pending_;
  std::vector<ResponseSeen> responses_;
};

class WatchedV2Service final : public v2::KeyManagementService::Service {
 public:
  WatchedV2Service(KmsEngine& engine, BufferWatch& watch) : real_(engine, nullptr), watch_(watch) {}
  grpc::Status Status(grpc::ServerContext* context, const v2::StatusRequest* request,
                      v2::StatusResponse* response) override {
    return real_.Status(context, request, response);
  }
  grpc::Status Encrypt(grpc::ServerContext* context, const v2::EncryptRequest* request,
                       v2::EncryptResponse* response) override {
    grpc::Status status = real_.Encrypt(context, request, response);
    watch_.RequestAfterHandler("v2 Encrypt", request->plaintext());
    return status;
  }
  grpc::Status Decrypt(grpc::ServerContext* context, const v2::DecryptRequest* request,
                       v2::DecryptResponse* response) override {
    grpc::Status status = real_.Decrypt(context, request, response);
    if (status.ok()) watch_.ResponseFilled("v2 Decrypt", context, response, response->plaintext());
    return status;
  }

 private:
  server::KmsV2Service real_;
  BufferWatch& watch_;
};

class WatchedV1beta1Service final : public v1beta1::KeyManagementService::Service {
 public:
  WatchedV1beta1Service(KmsEngine& engine, BufferWatch& watch) : real_(engine, "test", nullptr), watch_(watch) {}
  grpc::Status Version(grpc::ServerContext* context, const v1beta1::VersionRequest* request,
                       v1beta1::VersionResponse* response) override {
    return real_.Version(context, request, response);
  }
  grpc::Status Encrypt(grpc::ServerContext* context, const v1beta1::EncryptRequest* request,
                       v1beta1::EncryptResponse* response) override {
    grpc::Status status = real_.Encrypt(context, request, response);
    watch_.RequestAfterHandler("v1beta1 Encrypt", request->plain());
    return status;
  }
  grpc::Status Decrypt(grpc::ServerContext* context, const v1beta1::DecryptRequest* request,
                       v1beta1::DecryptResponse* response) override {
    grpc::Status status = real_.Decrypt(context, request, response);
    if (status.ok()) watch_.ResponseFilled("v1beta1 Decrypt", context, response, response->plain());
    return status;
  }

 private:
  server::KmsV1beta1Service real_;
  BufferWatch& watch_;
};

// Registered before the wiper: gRPC runs the post-send hooks of server interceptors in reverse order,
// so this one looks after the wiper has run, while the response object still exists.
class AfterSendLook final : public grpc::experimental::Interceptor {
 public:
  AfterSendLook(BufferWatch& watch, const grpc::ServerContextBase* context) : watch_(watch), context_(context) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_MESSAGE)) {
      sent_ = methods->GetSendMessage();
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_SEND_MESSAGE) && sent_ != nullptr) {
      watch_.ResponseSent(context_, sent_);
      sent_ = nullptr;
    }
    methods->Proceed();
  }

 private:
  BufferWatch& watch_;
  const grpc::ServerContextBase* const context_;
  const void* sent_ = nullptr;
};

class AfterSendLookFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit AfterSendLookFactory(BufferWatch& watch) : watch_(watch) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new AfterSendLook(watch_, info->server_context());
  }

 private:
  BufferWatch& watch_;
};

class WipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri());
    ASSERT_TRUE(uri.ok());
    auto backend = hsm::Pkcs11Backend::Create(*std::move(uri), {.sessions = 2});
    ASSERT_TRUE(backend.ok());
    engine_ = std::make_unique<KmsEngine>(std::shared_ptr<KeyBackend>(*std::move(backend)), EngineOptions{"kek"});
    ASSERT_TRUE(engine_->LoadKeyRing().ok());
    v2_ = std::make_unique<WatchedV2Service>(*engine_, watch_);
    v1beta1_ = std::make_unique<WatchedV1beta1Service>(*engine_, watch_);
    const std::string socket = token_->dir() + "/watched.sock";
    grpc::ServerBuilder builder;
    builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
    builder.RegisterService(v2_.get());
    builder.RegisterService(v1beta1_.get());
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::make_unique<AfterSendLookFactory>(watch_));
    interceptors.push_back(std::make_unique<server::ResponseWiperFactory>());  // the product's wiper
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    clients_ = std::make_unique<KmsClients>(socket);
  }

  void TearDown() override {
    clients_.reset();
    if (server_) {
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
      server_->Wait();
    }
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::unique_ptr<KmsEngine> engine_;
  BufferWatch watch_;
  std::unique_ptr<WatchedV2Service> v2_;
  std::unique_ptr<WatchedV1beta1Service> v1beta1_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<KmsClients> clients_;
};

// The plaintext a Decrypt returns does not stay in the plugin's memory once sent: the handler's own
// response buffer holds zeros after the send, for both APIs, and the caller still gets the plaintext.
TEST_F(WipeTest, TheDecryptHandlersResponseBufferHoldsZerosOnceSent) {
  const std::string seed = "seed-for-the-wipe-test-32-bytes!";
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext(seed);
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients_->v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  v2::DecryptRequest decrypt;
  decrypt.set_ciphertext(sealed.ciphertext());
  decrypt.set_key_id(sealed.key_id());
  v2::DecryptResponse opened;
  ASSERT_TRUE(clients_->v2->Decrypt(CallContext().get(), decrypt, &opened).ok());
  EXPECT_EQ(opened.plaintext(), seed);

  v1beta1::EncryptRequest v1_encrypt;
  v1_encrypt.set_version("v1beta1");
  v1_encrypt.set_plain(seed);
  v1beta1::EncryptResponse v1_sealed;
  ASSERT_TRUE(clients_->v1beta1->Encrypt(CallContext().get(), v1_encrypt, &v1_sealed).ok());
  v1beta1::DecryptRequest v1_decrypt;
  v1_decrypt.set_version("v1beta1");
  v1_decrypt.set_cipher(v1_sealed.cipher());
  v1beta1::DecryptResponse v1_opened;
  ASSERT_TRUE(clients_->v1beta1->Decrypt(CallContext().get(), v1_decrypt, &v1_opened).ok());
  EXPECT_EQ(v1_opened.plain(), seed);

  // The post-send hook may run a moment after the client has its answer.
  ASSERT_TRUE(support::Eventually([&] { return watch_.responses().size() == 2; }, std::chrono::seconds(5)))
      << "the test interceptor did not see both Decrypt responses sent";
  std::multiset<std::string> calls;
  for (const BufferWatch::ResponseSeen& response : watch_.responses()) {
    calls.insert(response.call);
    EXPECT_TRUE(response.same_message) << response.call << ": gRPC sent another object than the handler's response";
    EXPECT_TRUE(response.held_plaintext) << response.call << ": the handler's buffer held the plaintext";
    EXPECT_TRUE(response.zero_after_send) << response.call << ": every plaintext byte must be zero once sent";
  }
  EXPECT_EQ(calls, (std::multiset<std::string>{"v1beta1 Decrypt", "v2 Decrypt"}));
}

// The seed in an Encrypt request is wiped by the handler, on every return path: sealed, refused for
// its size, and (v1beta1) refused for its API version before it is even looked at.
TEST_F(WipeTest, EncryptHandlersWipeTheRequestPlaintextOnEveryPath) {
  const std::string seed = "seed-for-the-wipe-test-32-bytes!";
  auto v2_encrypt = [&](const std::string& plaintext) {
    v2::EncryptRequest request;
    request.set_plaintext(plaintext);
    v2::EncryptResponse response;
    return clients_->v2->Encrypt(CallContext().get(), request, &response).error_code();
  };
  auto v1_encrypt = [&](const std::string& version, const std::string& plaintext) {
    v1beta1::EncryptRequest request;
    request.set_version(version);
    request.set_plain(plaintext);
    v1beta1::EncryptResponse response;
    return clients_->v1beta1->Encrypt(CallContext().get(), request, &response).error_code();
  };
  EXPECT_EQ(v2_encrypt(seed), grpc::StatusCode::OK);
  EXPECT_EQ(v2_encrypt(std::string(1024, 's')), grpc::StatusCode::INVALID_ARGUMENT);  // ciphertext over 1 KiB
  EXPECT_EQ(v1_encrypt("v1beta1", seed), grpc::StatusCode::OK);
  EXPECT_EQ(v1_encrypt("v2", seed), grpc::StatusCode::INVALID_ARGUMENT);  // refused before Encrypt runs
  EXPECT_EQ(v1_encrypt("v1beta1", std::string(server::kV1MaxCiphertext, 's')), grpc::StatusCode::INVALID_ARGUMENT);

  const std::vector<BufferWatch::RequestSeen> seen = watch_.requests();
  const std::vector<std::pair<std::string, size_t>> expected = {{"v2 Encrypt", seed.size()},
                                                                {"v2 Encrypt", 1024},
                                                                {"v1beta1 Encrypt", seed.size()},
                                                                {"v1beta1 Encrypt", seed.size()},
                                                                {"v1beta1 Encrypt", server::kV1MaxCiphertext}};
  ASSERT_EQ(seen.size(), expected.size());
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].call, expected[i].first) << i;
    EXPECT_EQ(seen[i].size, expected[i].second) << seen[i].call << " #" << i;
    EXPECT_TRUE(seen[i].zero_after_handler)
        << seen[i].call << " #" << i << ": the request's plaintext outlived the handler";
  }
}

}  // namespace
}  // namespace trousseau
