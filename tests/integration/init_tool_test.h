// The fixture of the trousseau-hsm-init tests (one file per command group): the tool run as an operator
// runs it, on a real SoftHSM token, with a plugin beside it when a test needs one. No output of the tool
// or the plugin may contain a PIN (checked after every test).
#pragma once

#include <fcntl.h>
#include <dirent.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>

#include "tests/testing/kms_clients.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau::init_tool {

using namespace std::chrono_literals;
using nlohmann::json;
using support::Eventually;
using support::SoftHsmToken;
using support::Subprocess;

inline constexpr char kNewSoPin[] = "so-pin-5f1e2d3c";
inline constexpr char kNewUserPin[] = "user-pin-9a8b7c6d";

struct ToolResult {
  int code = -1;
  std::string out;
  std::string err;
  std::string all() const { return out + err; }
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
  std::ofstream(path) << content;
  chmod(path.c_str(), mode);
}

// The key_id a human-readable generate/rotate printed ("key_id: kek-v2-...").
inline std::string PrintedKeyId(const std::string& out) {
  std::smatch m;
  static const std::regex kLine("key_id: (kek-v[0-9]+-[0-9a-f]{32})\n");
  return std::regex_search(out, m, kLine) ? m[1].str() : "";
}

class InitToolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr);
    uri_ = token_->Uri();
    socket_ = token_->dir() + "/run/kms.sock";
    mkdir((token_->dir() + "/run").c_str(), 0700);  // the plugin never creates its socket directory
    plugin_log_ = token_->dir() + "/plugin.log";
  }

  // No output of the tool (or the plugin) ever contains a PIN, whatever the test did.
  void TearDown() override {
    std::vector<std::string> outputs = outputs_;
    if (token_ != nullptr) outputs.push_back(ReadFile(plugin_log_));
    for (const std::string& output : outputs) {
      for (const char* pin : {support::kTestUserPin, support::kTestSoPin, kNewSoPin, kNewUserPin}) {
        EXPECT_EQ(output.find(pin), std::string::npos) << "a PIN was printed:\n" << output;
      }
    }
  }

  // A tool process started by Start(), collected by Finish().
  struct Started {
    std::shared_ptr<Subprocess> process;  // null if it could not start
    std::string base;                     // its stdout and stderr go to base.out and base.err
  };

  // Runs the tool with `args`; stdout and stderr apart.
  ToolResult Run(std::vector<std::string> args) { return Finish(Start(std::move(args))); }

  // Starts the tool with `args` without waiting for it, so several runs can overlap.
  Started Start(std::vector<std::string> args) {
    const std::string base = StrCatPath("tool-", runs_++);
    args.insert(args.begin(), TOOL_PATH);
    auto process =
        std::make_shared<Subprocess>(std::move(args), Subprocess::SeparateOutput{base + ".out", base + ".err"});
    if (!process->started()) {
      ADD_FAILURE() << "cannot start " << TOOL_PATH;
      return {};
    }
    return {std::move(process), base};
  }

  // Waits for a run from Start() (killing it after 30 s) and collects its exit code and output.
  ToolResult Finish(const Started& started) {
    ToolResult result;
    if (started.process == nullptr) return result;
    std::optional<int> code = started.process->Wait(30s);
    if (!code) {
      started.process->Signal(SIGKILL);
      code = started.process->Wait(30s);
      ADD_FAILURE() << "the tool hung";
    }
    result.code = code.value_or(-1);
    result.out = started.process->Log();
    result.err = started.process->ErrorLog();
    outputs_.push_back(result.all());
    return result;
  }

  std::string StrCatPath(const std::string& prefix, int n) const {
    return token_->dir() + "/" + prefix + std::to_string(n);
  }

  json ListJson() {
    ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_, "--json"});
    EXPECT_EQ(list.code, 0) << list.all();
    return json::parse(list.out, nullptr, /*allow_exceptions=*/false);
  }

  // --- the plugin ---
  std::unique_ptr<Subprocess> StartPlugin(const std::string& refresh) {
    return std::make_unique<Subprocess>(
        std::vector<std::string>{PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", uri_,
                                 "--key-refresh-interval", refresh},
        plugin_log_);
  }
  // The v2 Status (no key_id if the plugin does not answer within 500 ms).
  v2::StatusResponse Status() { return testing::PluginStatus(socket_, 500ms); }
  bool Serving() { return Status().healthz() == "ok"; }
  v2::EncryptResponse Encrypt(const std::string& plaintext) {
    v2::EncryptResponse response;
    grpc::Status s = testing::EncryptV2(socket_, plaintext, response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
  grpc::Status Decrypt(const v2::EncryptResponse& sealed, std::string* plaintext) {
    return testing::DecryptV2(socket_, sealed, plaintext);
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::string uri_;
  std::string socket_;
  std::string plugin_log_;
  std::vector<std::string> outputs_;
  int runs_ = 0;
};

}  // namespace trousseau::init_tool
