// Plaintext wiping on both KMS APIs: the server KmsServer::Start builds runs the response wiper on
// the Decrypts only, and the handlers' own request and response buffers hold zeros once they are done.
// Fixture: kms_service_test.h.
#include "tests/integration/kms_service_test.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "server/response_wiper.h"
#include "tools/support/subprocess.h"

namespace trousseau::kms_service_test {
namespace {

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
    ASSERT_NO_FATAL_FAILURE(StartEngineOnNewToken(2, token_, engine_));
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
}  // namespace trousseau::kms_service_test
