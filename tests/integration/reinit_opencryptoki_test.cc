// Re-initialisation that cannot crash (issue 18, item 5), on opencryptoki's soft token (pkcsslotd; one per host:
// ctest RESOURCE_LOCK opencryptoki). opencryptoki's PKCS11_API.so needs libitm.so.1; unloading the module
// (C_Finalize, dlclose, dlopen, C_Initialize: what every retry of the tools did) unloaded libitm too, and the next
// C_Initialize died of SIGSEGV in the re-loaded libitm. Pkcs11Module now loads with RTLD_NODELETE, so a module is
// never unloaded and a new load is only C_Finalize + C_Initialize, which opencryptoki survives. Here:
//   - the tool on a token label that is not there (the former SIGSEGV, exit 139) says so and exits 1;
//   - one process opening the token again and again, both ways (AdminSession destroyed and opened again, as the
//     tools' retries do; one module finalised and initialised again, as the plugin's recovery does);
//   - pkcsslotd not running: C_Initialize's CKR_HOST_MEMORY is UNAVAILABLE asking whether pkcsslotd runs;
//   - the plugin through the fault shim over PKCS11_API.so: an outage is UNAVAILABLE, and it recovers (the
//     backend re-initialises the real module while the link is down and when it is back).
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/capabilities.h"
#include "hsm/key_family.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/token_discovery.h"
#include "tests/testing/device_tokens.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/program_runner.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tests/tpm/swtpm.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/subprocess.h"

namespace trousseau::hsm {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;

using testing::OpencryptokiToken;
using Finished = testing::ProgramRun;

constexpr const char* kOpencryptokiModule = OpencryptokiToken::kModule;
// Rounds of re-initialisation in one process: the crash came at the second.
constexpr int kRounds = 5;

bool Contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

class ReinitOpencryptoki : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string why = OpencryptokiToken::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
    dir_ = std::make_unique<testing::TempDir>();
    runner_ = std::make_unique<testing::ProgramRunner>(dir_->path(), "run-");
    ock_ = std::make_unique<OpencryptokiToken>(dir_->path());
    Finished started = ock_->Start();
    ASSERT_EQ(started.code, 0) << started.all();
  }
  void TearDown() override {
    if (ock_ == nullptr) return;
    ock_->Stop();
    ock_->ExpectNoPinIn(runner_->outputs());
  }

  std::string Uri(std::string_view token = OpencryptokiToken::kLabel,
                  std::string_view module = kOpencryptokiModule) const {
    return ock_->Uri(token, module);
  }
  Pkcs11Uri ParsedUri() const {
    StatusOr<Pkcs11Uri> uri = Pkcs11Uri::Parse(Uri());
    EXPECT_TRUE(uri.ok()) << uri.status().message();
    return *uri;
  }

  Finished Tool(std::vector<std::string> args) {
    args.insert(args.begin(), TOOL_PATH);
    return runner_->Run(std::move(args));
  }

  std::unique_ptr<testing::TempDir> dir_;
  std::unique_ptr<testing::ProgramRunner> runner_;
  std::unique_ptr<OpencryptokiToken> ock_;
};

// What each round checks the module can still do on a logged-in session: list the mechanisms and the key
// family (ListKeyFamily: C_FindObjects and C_GetAttributeValue).
Status UseToken(const AdminSession& admin) {
  StatusOr<TokenCapabilities> capabilities = ReadTokenCapabilities(admin.api(), admin.token().slot);
  if (!capabilities.ok()) return capabilities.status();
  if (!capabilities->Of(CKM_AES_CBC_PAD).listed) return InternalError("CKM_AES_CBC_PAD is no longer listed");
  StatusOr<std::vector<KeyObject>> family = ListKeyFamily(admin.session(), "kek");
  return family.ok() ? OkStatus() : family.status();
}

// Whether the library at `path` is still mapped in this process (RTLD_NOLOAD loads nothing).
bool StillLoaded(const char* path) {
  void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
  if (handle == nullptr) return false;
  dlclose(handle);
  return true;
}

TEST_F(ReinitOpencryptoki, KeyGenerateOnALabelNotFoundExitsOneWithTheReason) {
  // `key generate` retries an absent token a few times, opening the module afresh each time: it died of
  // SIGSEGV (exit 139) at the second C_Initialize before RTLD_NODELETE.
  Finished missing = Tool({"key", "generate", "--pkcs11-uri", Uri("nosuch")});
  EXPECT_EQ(missing.code, 1) << missing.all();
  EXPECT_TRUE(Contains(missing.err, "no token 'nosuch' found")) << missing.all();
  EXPECT_TRUE(Contains(missing.err, kOpencryptokiModule)) << missing.all();
  // And the token that is there still works for the next run.
  Finished made = Tool({"key", "generate", "--pkcs11-uri", Uri()});
  EXPECT_EQ(made.code, 0) << made.all();
  EXPECT_TRUE(Contains(made.out, "created version 1 of key family 'kek'")) << made.all();
}

TEST_F(ReinitOpencryptoki, OneProcessOpensTheTokenAgainAndAgain) {
  const Pkcs11Uri uri = ParsedUri();
  // As the tools' retries and their fresh look after a key is made: AdminSession destroyed (session closed,
  // C_Finalize, dlclose) and opened again (dlopen, C_Initialize, token by label, login).
  for (int round = 1; round <= kRounds; ++round) {
    SCOPED_TRACE(StrCat("reopen round ", round));
    StatusOr<std::unique_ptr<AdminSession>> admin = AdminSession::Open(uri);
    ASSERT_TRUE(admin.ok()) << admin.status().message();
    Status used = UseToken(**admin);
    EXPECT_TRUE(used.ok()) << used.message();
    admin->reset();
    EXPECT_TRUE(StillLoaded(kOpencryptokiModule)) << "the module was unloaded (RTLD_NODELETE missing?)";
  }
  // As the plugin's recovery: one module, C_Finalize and C_Initialize again, then the token found anew.
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(kOpencryptokiModule);
  ASSERT_TRUE(module.ok()) << module.status().message();
  for (int round = 1; round <= kRounds; ++round) {
    SCOPED_TRACE(StrCat("re-initialise round ", round));
    Status initialized = (*module)->Initialize();
    ASSERT_TRUE(initialized.ok()) << initialized.message();
    StatusOr<TokenSlot> token = FindToken((*module)->api(), uri);
    ASSERT_TRUE(token.ok()) << token.status().message();
    StatusOr<Session> session = OpenSession((*module)->api(), token->slot, /*read_write=*/false);
    ASSERT_TRUE(session.ok()) << session.status().message();
    Status login = LoginUser(*session, *token, uri.pin_file());
    ASSERT_TRUE(login.ok()) << login.message();
    StatusOr<std::vector<KeyObject>> family = ListKeyFamily(*session, "kek");
    EXPECT_TRUE(family.ok()) << family.status().message();
    session->Release();  // ended by the C_Finalize below, as the plugin's retired connections are
    (*module)->Finalize();
  }
}

TEST_F(ReinitOpencryptoki, PkcsslotdNotRunningIsUnavailableAskingForIt) {
  Finished stopped = ock_->Stop();
  ASSERT_EQ(stopped.code, 0) << stopped.all();
  // opencryptoki answers CKR_HOST_MEMORY when its daemon's socket is not there: an outage, not memory.
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(kOpencryptokiModule);
  ASSERT_TRUE(module.ok()) << module.status().message();
  Status initialized = (*module)->Initialize();
  EXPECT_TRUE(IsUnavailable(initialized)) << initialized.message();
  EXPECT_TRUE(Contains(initialized.message(), "CKR_HOST_MEMORY")) << initialized.message();
  EXPECT_TRUE(Contains(initialized.message(), "is pkcsslotd running?")) << initialized.message();
  module->reset();

  Finished tool = Tool({"key", "list", "--pkcs11-uri", Uri()});
  EXPECT_EQ(tool.code, 1) << tool.all();
  EXPECT_TRUE(Contains(tool.err, "is pkcsslotd running?")) << tool.all();

  // Once the daemon is back, the same process initialises the module it failed with.
  Finished started = ock_->Start();
  ASSERT_EQ(started.code, 0) << started.all();
  StatusOr<std::unique_ptr<AdminSession>> admin = AdminSession::Open(ParsedUri());
  ASSERT_TRUE(admin.ok()) << admin.status().message();
  Status used = UseToken(**admin);
  EXPECT_TRUE(used.ok()) << used.message();
}

TEST_F(ReinitOpencryptoki, PluginThroughTheFaultShimRecoversFromAnOutage) {
  // An aes-cbc-hmac version (the token has no AES-GCM), made by the tool.
  Finished made = Tool({"key", "generate", "--pkcs11-uri", Uri()});
  ASSERT_EQ(made.code, 0) << made.all();
  // The shim in front of PKCS11_API.so: TROUSSEAU_FAULT_SHIM_MODULE names the real module.
  const std::string control = dir_->path() + "/shim.control";
  support::WriteShimControl(control, "up");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
  setenv("TROUSSEAU_FAULT_SHIM_MODULE", kOpencryptokiModule, 1);
  const std::string call_log = dir_->path() + "/shim.calls";
  setenv("TROUSSEAU_FAULT_SHIM_CALL_LOG", call_log.c_str(), 1);
  const std::string socket = dir_->path() + "/kms.sock";
  Subprocess plugin({PLUGIN_PATH, "--listen", "unix://" + socket, "--pkcs11-uri", Uri("trousseau-ock", FAULT_SHIM_PATH),
                     "--health-cache", "100ms"},
                    dir_->path() + "/plugin.log");
  ASSERT_TRUE(plugin.started());
  ASSERT_TRUE(Eventually([&] { return testing::PluginStatus(socket).healthz() == "ok"; }, 10s)) << plugin.Log();

  v2::EncryptResponse sealed;
  grpc::Status encrypted = testing::EncryptV2(socket, "written-before-the-outage", sealed);
  ASSERT_TRUE(encrypted.ok()) << encrypted.error_message() << "\n" << plugin.Log();

  support::WriteShimControl(control, "down");
  EXPECT_EQ(testing::DecryptV2(socket, sealed).error_code(), grpc::StatusCode::UNAVAILABLE) << plugin.Log();
  // While the link is down the backend keeps trying to reconnect, re-initialising the real module each time.
  EXPECT_TRUE(Eventually([&] { return testing::PluginStatus(socket).healthz() != "ok"; }, 10s)) << plugin.Log();
  EXPECT_EQ(testing::EncryptV2(socket, "during", sealed).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_FALSE(plugin.Wait(0ms).has_value()) << "the plugin died: " << plugin.Log();

  support::WriteShimControl(control, "up");
  std::string plaintext;
  EXPECT_TRUE(Eventually([&] { return testing::DecryptV2(socket, sealed, &plaintext).ok(); }, 15s)) << plugin.Log();
  EXPECT_EQ(plaintext, "written-before-the-outage");
  EXPECT_TRUE(Eventually([&] { return testing::PluginStatus(socket).healthz() == "ok"; }, 10s)) << plugin.Log();
  EXPECT_FALSE(plugin.Wait(0ms).has_value()) << "the plugin died: " << plugin.Log();

  plugin.Signal(SIGTERM);
  std::optional<int> code = plugin.Wait(10s);
  EXPECT_EQ(code, 0) << plugin.Log();
  const std::string log = plugin.Log();
  runner_->Keep(log);
  EXPECT_TRUE(Contains(log, "lost the HSM connection")) << log;
  EXPECT_TRUE(Contains(log, "reconnected to")) << log;
  // The real module logged in again after the outage (the shim closed its sessions when the link went down).
  std::ifstream calls(call_log);
  int logins = 0;
  for (std::string line; std::getline(calls, line);) logins += line == "C_Login 0x0";
  EXPECT_GE(logins, 2) << "C_Login calls that reached PKCS11_API.so and succeeded";
  unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
  unsetenv("TROUSSEAU_FAULT_SHIM_CALL_LOG");
}

}  // namespace
}  // namespace trousseau::hsm
