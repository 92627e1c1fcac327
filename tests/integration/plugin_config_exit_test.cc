// The plugin on a module that needs C_Initialize arguments: NSS softoken (libsoftokn3.so) loaded directly.
// Without the URI's x-init-reserved, C_Initialize answers CKR_ARGUMENTS_BAD: a configuration error that no
// restart fixes, so the plugin exits 2 (not 1, "device unavailable") and says which attribute to add. With
// it, the plugin serves a key `trousseau-hsm-init key generate` made on the same NSS database. Real plugin
// process, real NSS softoken database (made by tests/devices/nss-db.sh), real gRPC socket.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <regex>

#include "tests/testing/device_tokens.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::NssDatabase;

constexpr const char* kNssModule = NssDatabase::kModule;

class PluginConfigExitTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = NssDatabase::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
    std::string pattern = (std::filesystem::temp_directory_path() / "plugin-config-exit-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    mkdir((dir_ + "/run").c_str(), 0700);  // the plugin never creates its socket directory
    socket_ = dir_ + "/run/kms.sock";
    nss_ = std::make_unique<NssDatabase>(dir_);
    testing::ProgramRun made = nss_->Create();
    ASSERT_EQ(made.code, 0) << made.all();
  }

  void TearDown() override {
    if (nss_ != nullptr) outputs_.insert(outputs_.end(), nss_->outputs().begin(), nss_->outputs().end());
    for (const std::string& output : outputs_) {
      EXPECT_EQ(output.find(NssDatabase::kPassword), std::string::npos) << "the NSS password was printed:\n" << output;
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // The URI of NSS's key token ("NSS Certificate DB"), with or without the module's init string.
  std::string Uri(bool with_init_reserved) const { return nss_->Uri(with_init_reserved); }

  std::unique_ptr<Subprocess> StartPlugin(const std::string& uri) {
    return std::make_unique<Subprocess>(
        std::vector<std::string>{PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", uri},
        dir_ + "/plugin-" + std::to_string(runs_++) + ".log");
  }

  // trousseau-hsm-init with `args`: exit code and output.
  std::pair<int, std::string> Tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    Subprocess tool(std::move(args), dir_ + "/tool-" + std::to_string(runs_++) + ".log");
    std::optional<int> code = tool.Wait(60s);
    outputs_.push_back(tool.Log());
    return {code.value_or(-1), tool.Log()};
  }

  std::string dir_, socket_;
  std::unique_ptr<NssDatabase> nss_;
  std::vector<std::string> outputs_;
  int runs_ = 0;
};

TEST_F(PluginConfigExitTest, WithoutXInitReservedThePluginExitsWithTheConfigurationCodeAndSaysWhatToAdd) {
  std::unique_ptr<Subprocess> plugin = StartPlugin(Uri(/*with_init_reserved=*/false));
  std::optional<int> code = plugin->Wait(30s);
  const std::string log = plugin->Log();
  outputs_.push_back(log);
  ASSERT_TRUE(code.has_value()) << "the plugin kept running on a module it cannot initialise:\n" << log;
  EXPECT_EQ(*code, 2) << "a configuration error, not an outage (1):\n" << log;
  EXPECT_NE(log.find("C_Initialize of " + std::string(kNssModule) + " failed: CKR_ARGUMENTS_BAD"), std::string::npos)
      << log;
  EXPECT_NE(log.find("the module needs initialisation arguments"), std::string::npos) << log;
  EXPECT_NE(log.find("x-init-reserved query attribute"), std::string::npos) << log;
  EXPECT_FALSE(support::UnixSocketAccepts(socket_));
}

TEST_F(PluginConfigExitTest, WithXInitReservedThePluginServesAKeyMadeOnTheNssDatabase) {
  auto [generated, generate_out] = Tool({"key", "generate", "--pkcs11-uri", Uri(/*with_init_reserved=*/true)});
  ASSERT_EQ(generated, 0) << generate_out;
  std::smatch printed;
  ASSERT_TRUE(std::regex_search(generate_out, printed, std::regex("key_id: (kek-v1-[0-9a-f]{32})\n"))) << generate_out;
  const std::string key_id = printed[1].str();

  std::unique_ptr<Subprocess> plugin = StartPlugin(Uri(/*with_init_reserved=*/true));
  ASSERT_TRUE(Eventually([&] { return testing::PluginStatus(socket_).healthz() == "ok"; }, 20s)) << plugin->Log();
  v2::StatusResponse status = testing::PluginStatus(socket_);
  EXPECT_EQ(status.key_id(), key_id);

  v2::EncryptResponse sealed;
  ASSERT_TRUE(testing::EncryptV2(socket_, "a secret under NSS", sealed).ok()) << plugin->Log();
  EXPECT_EQ(sealed.key_id(), key_id);
  std::string opened;
  ASSERT_TRUE(testing::DecryptV2(socket_, sealed, &opened).ok()) << plugin->Log();
  EXPECT_EQ(opened, "a secret under NSS");

  plugin->Signal(SIGTERM);
  EXPECT_EQ(plugin->Wait(20s), 0) << plugin->Log();
  outputs_.push_back(plugin->Log());
}

}  // namespace
}  // namespace trousseau
