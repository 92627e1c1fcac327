// Base fixture of the tests that run the plugin as a process on a real SoftHSM token (as swtpm_test.h is
// for the TPM): each test gets a fresh token, a socket path inside its folder, and helpers to start the
// plugin, switch the fault shim in front of SoftHSM, and call the plugin as kube-apiserver does.
// The including test target defines PLUGIN_PATH (and FAULT_SHIM_PATH to use the shim).
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/testing/kms_clients.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau::testing {

class SoftHsmPluginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = support::SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    socket_ = token_->dir() + "/kms.sock";
  }

  // `PLUGIN_PATH --listen unix://<socket_> --pkcs11-uri <uri, the token's by default> <extra...>`, its
  // output in <token dir>/plugin.log.
  std::unique_ptr<support::Subprocess> StartPlugin(std::vector<std::string> extra = {},
                                                   const std::string& uri = "") const {
    std::vector<std::string> argv = {PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri",
                                     uri.empty() ? token_->Uri() : uri};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return std::make_unique<support::Subprocess>(argv, token_->dir() + "/plugin.log");
  }

#ifdef FAULT_SHIM_PATH
  // Puts the fault shim between the plugin and SoftHSM (for child processes started after this), with
  // the link "up"; SetLink switches it.
  void UseFaultShim() {
    control_ = token_->dir() + "/shim.control";
    SetLink("up");
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control_.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
  }
  // The shim notices a control file replaced by rename on its next call.
  void SetLink(const std::string& state) const { support::WriteShimControl(control_, state); }
  // The token's URI with the shim as its module.
  std::string ShimUri() const { return token_->Uri("kek", FAULT_SHIM_PATH); }
#endif

  v2::StatusResponse Status(std::chrono::milliseconds deadline = std::chrono::seconds(1)) const {
    return PluginStatus(socket_, deadline);
  }
  grpc::Status Encrypt(const std::string& plaintext, v2::EncryptResponse& sealed) const {
    return EncryptV2(socket_, plaintext, sealed);
  }
  grpc::Status Decrypt(const v2::EncryptResponse& sealed, std::string* plaintext = nullptr,
                       std::chrono::milliseconds deadline = std::chrono::seconds(3)) const {
    return DecryptV2(socket_, sealed, plaintext, deadline);
  }

  std::unique_ptr<support::SoftHsmToken> token_;
  std::string socket_;
  std::string control_;  // the fault shim's control file, once UseFaultShim ran
};

}  // namespace trousseau::testing
