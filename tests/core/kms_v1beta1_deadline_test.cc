// The v1beta1 service hands the request's gRPC deadline to the engine, as the v2 service does: a
// device call still running when the caller's deadline passes is over for the plugin too (the
// software backend answers UNAVAILABLE to a call that reaches it after its deadline), instead of
// running on until --hsm-timeout. Real gRPC (in-process channel), real KmsEngine, real AES-GCM.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "core/kms_engine.h"
#include "core/request_observer.h"
#include "server/kms_v1beta1_service.h"
#include "tests/testing/software_backend.h"
#include "v1beta1/kms.grpc.pb.h"

namespace trousseau {
namespace {

// The outcome of each request, as the services report it to metrics.
class LastOutcome final : public RequestObserver {
 public:
  void OnRequest(const RequestRecord& record) override {
    std::lock_guard lock(mu_);
    if (waiting_) outcome_.set_value(record.code);
    waiting_ = false;
  }
  std::future<StatusCode> Next() {
    std::lock_guard lock(mu_);
    outcome_ = std::promise<StatusCode>();
    waiting_ = true;
    return outcome_.get_future();
  }

 private:
  std::mutex mu_;
  std::promise<StatusCode> outcome_;
  bool waiting_ = false;
};

class V1beta1DeadlineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend_->AddVersion(1);
    // A device timeout far beyond the test: only the request's own deadline can end the call.
    engine_ = std::make_unique<KmsEngine>(
        backend_, EngineOptions{.family_label = "kek", .device_timeout = std::chrono::hours(1)});
    ASSERT_TRUE(engine_->LoadKeyRing().ok());
    service_ = std::make_unique<server::KmsV1beta1Service>(*engine_, "test", &outcomes_);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1beta1::KeyManagementService::NewStub(server_->InProcessChannel(grpc::ChannelArguments()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  // Holds the next device call until the client has seen its deadline pass, then lets it reach
  // the device. Returns the code the handler reported.
  template <typename Call>
  StatusCode CodeWhenTheDeviceAnswersAfterTheDeadline(Call call) {
    std::promise<void> client_done;
    std::shared_future<void> client_finished = client_done.get_future().share();
    backend_->OnDeviceCall([client_finished] {
      // Bounded: a broken test must not hang; the client's 200 ms deadline ends long before.
      client_finished.wait_for(std::chrono::seconds(30));
    });
    std::future<StatusCode> outcome = outcomes_.Next();
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    const grpc::Status client_status = call(context);
    EXPECT_EQ(client_status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << client_status.error_message();
    client_done.set_value();
    if (outcome.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "the handler never finished";
      return StatusCode::kUnknown;
    }
    backend_->OnDeviceCall(nullptr);
    return outcome.get();
  }

  std::shared_ptr<testing::SoftwareBackend> backend_ = std::make_shared<testing::SoftwareBackend>();
  std::unique_ptr<KmsEngine> engine_;
  LastOutcome outcomes_;
  std::unique_ptr<server::KmsV1beta1Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1beta1::KeyManagementService::Stub> stub_;
};

TEST_F(V1beta1DeadlineTest, EncryptStopsAtTheRequestsDeadline) {
  const StatusCode code = CodeWhenTheDeviceAnswersAfterTheDeadline([&](grpc::ClientContext& context) {
    v1beta1::EncryptRequest request;
    request.set_version("v1beta1");
    request.set_plain(std::string(32, 's'));
    v1beta1::EncryptResponse response;
    return stub_->Encrypt(&context, request, &response);
  });
  EXPECT_EQ(code, StatusCode::kUnavailable) << "the device call ran on past the request's deadline";
}

TEST_F(V1beta1DeadlineTest, DecryptStopsAtTheRequestsDeadline) {
  StatusOr<EncryptResult> sealed = engine_->Encrypt(std::string(32, 's'), server::kV1MaxCiphertext);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  const StatusCode code = CodeWhenTheDeviceAnswersAfterTheDeadline([&](grpc::ClientContext& context) {
    v1beta1::DecryptRequest request;
    request.set_version("v1beta1");
    request.set_cipher(sealed->ciphertext);
    v1beta1::DecryptResponse response;
    return stub_->Decrypt(&context, request, &response);
  });
  EXPECT_EQ(code, StatusCode::kUnavailable) << "the device call ran on past the request's deadline";
}

}  // namespace
}  // namespace trousseau
