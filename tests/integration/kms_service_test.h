// The fixture of the KMS service tests, one file per job (kms_service_v2_test.cc, _v1beta1_test.cc,
// _bad_input_test.cc, _wipe_test.cc): both KMS APIs over a real unix socket, served in-process on a real
// SoftHSM token, called with the generated gRPC clients the way kube-apiserver calls them.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/kms_engine.h"
#include "hsm/pkcs11_backend.h"
#include "server/kms_server.h"
#include "tests/testing/kms_clients.h"
#include "tools/support/softhsm_token.h"

namespace trousseau::kms_service_test {

using support::SoftHsmToken;
using testing::CallContext;
using testing::KmsClients;

// A new SoftHSM token holding KEK version 1, and a KmsEngine on it (key ring loaded) through the PKCS#11
// backend with `sessions` sessions. Call it with ASSERT_NO_FATAL_FAILURE.
inline void StartEngineOnNewToken(size_t sessions, std::unique_ptr<SoftHsmToken>& token,
                                  std::unique_ptr<KmsEngine>& engine) {
  token = SoftHsmToken::Create();
  ASSERT_NE(token, nullptr);
  ASSERT_TRUE(token->GenerateKek(1).ok());
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token->Uri());
  ASSERT_TRUE(uri.ok());
  auto backend = hsm::Pkcs11Backend::Create(*std::move(uri), {.sessions = sessions});
  ASSERT_TRUE(backend.ok());
  engine = std::make_unique<KmsEngine>(std::shared_ptr<KeyBackend>(*std::move(backend)), EngineOptions{"kek"});
  ASSERT_TRUE(engine->LoadKeyRing().ok());
}

// The plugin's own server (KmsServer, both APIs, the response wiper) on the engine; it records every
// wipe the wiper reports.
class KmsServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(StartEngineOnNewToken(4, token_, engine_));
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

}  // namespace trousseau::kms_service_test
