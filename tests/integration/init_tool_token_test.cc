// trousseau-hsm-init `token init` and `config`: a usable token, the refusals, and the
// EncryptionConfiguration it prints.
#include <gtest/gtest.h>

#include "tests/integration/init_tool_test.h"
#include "tests/testing/device_tokens.h"
#include "tests/testing/skip_or_fail_in_ci.h"

namespace trousseau::init_tool {
namespace {

using testing::NssDatabase;

// ---- token init ----

TEST_F(InitToolTest, TokenInitCreatesAUsableToken) {
  const std::string so_pin = token_->dir() + "/new-so.pin", user_pin = token_->dir() + "/new-user.pin";
  WriteFile(so_pin, std::string(kNewSoPin) + "\n", 0600);
  WriteFile(user_pin, std::string(kNewUserPin) + "\n", 0600);
  ToolResult init = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", "fresh-token",
                         "--so-pin-file", so_pin, "--pin-file", user_pin});
  ASSERT_EQ(init.code, 0) << init.all();
  EXPECT_NE(init.out.find("initialised token 'fresh-token'"), std::string::npos) << init.out;

  // The new token takes the user PIN for key generation and the AES-GCM self-test.
  const std::string uri = "pkcs11:token=fresh-token;object=kek?module-path=" + std::string(support::kSoftHsmModule) +
                          "&pin-source=file:" + user_pin;
  EXPECT_NE(init.out.find(uri), std::string::npos) << "the suggested URI:\n" << init.out;
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri});
  EXPECT_EQ(generate.code, 0) << generate.all();
  ToolResult selftest = Run({"selftest", "--pkcs11-uri", uri});
  EXPECT_EQ(selftest.code, 0) << selftest.all();
  // ...and not the old token's PIN.
  ToolResult wrong = Run({"key", "list", "--pkcs11-uri",
                          "pkcs11:token=fresh-token;object=kek?module-path=" + std::string(support::kSoftHsmModule) +
                              "&pin-source=file:" + token_->pin_file()});
  EXPECT_EQ(wrong.code, 1) << wrong.all();
  EXPECT_NE(wrong.err.find("rejected the user PIN"), std::string::npos) << wrong.err;
  // The first token is untouched.
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_}).code, 0);
}

TEST_F(InitToolTest, TokenInitRefusesAWorldReadablePinFile) {
  const std::string so_pin = token_->dir() + "/new-so.pin", user_pin = token_->dir() + "/new-user.pin";
  WriteFile(so_pin, kNewSoPin, 0644);
  WriteFile(user_pin, kNewUserPin, 0600);
  ToolResult so = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", "fresh-token", "--so-pin-file",
                       so_pin, "--pin-file", user_pin});
  EXPECT_EQ(so.code, 2) << so.all();
  EXPECT_NE(so.err.find("--so-pin-file"), std::string::npos) << so.err;
  EXPECT_NE(so.err.find("chmod 600"), std::string::npos) << so.err;

  chmod(so_pin.c_str(), 0600);
  chmod(user_pin.c_str(), 0640);
  ToolResult user = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", "fresh-token",
                         "--so-pin-file", so_pin, "--pin-file", user_pin});
  EXPECT_EQ(user.code, 2) << user.all();
  EXPECT_NE(user.err.find("--pin-file"), std::string::npos) << user.err;

  // Nothing was initialised.
  chmod(user_pin.c_str(), 0600);
  ToolResult list = Run({"key", "list", "--pkcs11-uri",
                         "pkcs11:token=fresh-token;object=kek?module-path=" + std::string(support::kSoftHsmModule) +
                             "&pin-source=file:" + user_pin});
  EXPECT_EQ(list.code, 1) << list.all();
  EXPECT_NE(list.err.find("no token 'fresh-token' found"), std::string::npos) << list.err;
  EXPECT_NE(list.err.find("the tokens there: "), std::string::npos) << "the labels present are listed: " << list.err;
}

TEST_F(InitToolTest, TokenInitRefusesALabelThatExists) {
  const std::string so_pin = token_->dir() + "/new-so.pin";
  WriteFile(so_pin, kNewSoPin, 0600);
  ToolResult init = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", token_->label(),
                         "--so-pin-file", so_pin, "--pin-file", token_->pin_file()});
  EXPECT_EQ(init.code, 1) << init.all();
  EXPECT_NE(init.err.find("already exists"), std::string::npos) << init.err;
  ToolResult bad_label = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", std::string(33, 'x'),
                              "--so-pin-file", so_pin, "--pin-file", token_->pin_file()});
  EXPECT_EQ(bad_label.code, 2) << bad_label.all();
}

// ---- token init on a module that needs C_Initialize arguments (--module-init-reserved) ----

TEST_F(InitToolTest, TokenInitHandsModuleInitReservedToCInitialize) {
  const std::string so_pin = token_->dir() + "/new-so.pin", user_pin = token_->dir() + "/new-user.pin";
  WriteFile(so_pin, kNewSoPin, 0600);
  WriteFile(user_pin, kNewUserPin, 0600);
  // SoftHSM takes no initialisation string: one in pReserved is refused with CKR_ARGUMENTS_BAD, which shows
  // the flag's value reaches C_Initialize. A configuration error (2), and no token was initialised.
  ToolResult refused =
      Run({"token", "init", "--module", support::kSoftHsmModule, "--module-init-reserved", "configdir='sql:/nowhere'",
           "--label", "fresh-token", "--so-pin-file", so_pin, "--pin-file", user_pin});
  EXPECT_EQ(refused.code, 2) << refused.all();
  EXPECT_NE(refused.err.find("CKR_ARGUMENTS_BAD"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("the module refused its initialisation string (x-init-reserved in the URI, "
                             "--module-init-reserved for token init)"),
            std::string::npos)
      << refused.err;
  ToolResult empty = Run({"token", "init", "--module", support::kSoftHsmModule, "--module-init-reserved", "", "--label",
                          "fresh-token", "--so-pin-file", so_pin, "--pin-file", user_pin});
  EXPECT_EQ(empty.code, 2) << empty.all();
  EXPECT_NE(empty.err.find("--module-init-reserved is empty"), std::string::npos) << empty.err;
  ToolResult list = Run({"key", "list", "--pkcs11-uri",
                         "pkcs11:token=fresh-token;object=kek?module-path=" + std::string(support::kSoftHsmModule) +
                             "&pin-source=file:" + user_pin});
  EXPECT_NE(list.err.find("no token 'fresh-token' found"), std::string::npos) << list.all();
}

// NSS softoken loaded directly: C_Initialize needs the database's init string. NSS's key token ("NSS
// Certificate DB") is initialised once certutil has set the database password, and C_InitToken on it would
// erase the database's keys: token init refuses it, names the tokens there, and the key made on it survives.
TEST_F(InitToolTest, TokenInitOnNssSoftokenTakesItsInitStringAndRefusesToEraseItsInitialisedToken) {
  if (std::string why = NssDatabase::Unavailable(); !why.empty()) SKIP_OR_FAIL_IN_CI(why);
  NssDatabase nss(token_->dir(), kNewUserPin);  // the database password is NSS's user PIN
  const std::string so_pin = token_->dir() + "/new-so.pin";
  WriteFile(so_pin, kNewSoPin, 0600);
  testing::ProgramRun made = nss.Create();
  ASSERT_EQ(made.code, 0) << made.all();
  outputs_.insert(outputs_.end(), nss.outputs().begin(), nss.outputs().end());
  const std::string& init = nss.init_string();
  const std::string& password = nss.pin_file();
  const std::string uri = nss.Uri();
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri});
  ASSERT_EQ(generate.code, 0) << generate.all();
  const std::string key_id = PrintedKeyId(generate.out);
  ASSERT_FALSE(key_id.empty()) << generate.out;

  // Without the string: NSS refuses C_Initialize; a configuration error naming this command's flag.
  ToolResult bare = Run({"token", "init", "--module", NssDatabase::kModule, "--label", "fresh-token", "--so-pin-file",
                         so_pin, "--pin-file", password});
  EXPECT_EQ(bare.code, 2) << bare.all();
  EXPECT_NE(bare.err.find("C_Initialize of " + std::string(NssDatabase::kModule) + " failed: CKR_ARGUMENTS_BAD"),
            std::string::npos)
      << bare.err;
  EXPECT_NE(bare.err.find("--module-init-reserved for token init, as it is"), std::string::npos) << bare.err;

  // With it: the module initialises, and every token is already initialised, so nothing is erased.
  ToolResult refused = Run({"token", "init", "--module", NssDatabase::kModule, "--module-init-reserved", init,
                            "--label", "fresh-token", "--so-pin-file", so_pin, "--pin-file", password});
  EXPECT_EQ(refused.code, 1) << refused.all();
  EXPECT_NE(refused.err.find("has an uninitialised token (2 token(s), all initialised): "
                             "'NSS Generic Crypto Services', 'NSS Certificate DB'"),
            std::string::npos)
      << refused.err;
  EXPECT_NE(refused.err.find("token init never re-initialises a token (C_InitToken erases it)"), std::string::npos)
      << refused.err;
  EXPECT_EQ(refused.out, "");

  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri});
  EXPECT_EQ(list.code, 0) << list.all();
  EXPECT_NE(list.out.find(key_id), std::string::npos) << list.out;
}

// ---- config ----

TEST_F(InitToolTest, ConfigPrintsAnEncryptionConfigurationWithoutTheToken) {
  // A token that does not exist: config is pure output.
  const std::string uri =
      "pkcs11:token=not-there;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/"
      "trousseau-hsm/pin";
  ToolResult config = Run({"config", "--pkcs11-uri", uri, "--listen", "unix:///run/trousseau-hsm/kms.sock", "--name",
                           "hsm-kms", "--timeout", "5s"});
  ASSERT_EQ(config.code, 0) << config.all();
  const std::string& y = config.out;
  for (const char* line : {"apiVersion: apiserver.config.k8s.io/v1\n", "kind: EncryptionConfiguration\n",
                           "      - secrets\n", "      - kms:\n", "          apiVersion: v2\n",
                           "          name: hsm-kms\n", "          endpoint: unix:///run/trousseau-hsm/kms.sock\n",
                           "          timeout: 5s\n", "      - identity: {}\n"}) {
    EXPECT_NE(y.find(line), std::string::npos) << "missing " << line << " in\n" << y;
  }
  // identity is the last provider: nothing but the end of the document after it.
  const size_t identity = y.find("- identity: {}");
  EXPECT_GT(identity, y.find("- kms:"));
  EXPECT_EQ(y.substr(identity), "- identity: {}\n");
  // The matching plugin command line.
  EXPECT_NE(y.find("trousseau-hsm --listen unix:///run/trousseau-hsm/kms.sock --pkcs11-uri '" + uri + "'"),
            std::string::npos)
      << y;

  ToolResult defaults = Run({"config", "--pkcs11-uri", uri});
  EXPECT_EQ(defaults.code, 0) << defaults.all();
  EXPECT_NE(defaults.out.find("name: trousseau-hsm\n"), std::string::npos) << defaults.out;
  EXPECT_NE(defaults.out.find("timeout: 3s\n"), std::string::npos) << defaults.out;
}

TEST_F(InitToolTest, ConfigRefusesBadNamesEndpointsAndAPinInTheUri) {
  ToolResult colon = Run({"config", "--pkcs11-uri", uri_, "--name", "kms:hsm"});
  EXPECT_EQ(colon.code, 2) << colon.all();
  EXPECT_NE(colon.err.find("':'"), std::string::npos) << colon.err;
  EXPECT_EQ(colon.out, "");
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_, "--name", ""}).code, 2);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_, "--listen", "/run/kms.sock"}).code, 2);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_, "--listen", "unix://relative/kms.sock"}).code, 2);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_, "--listen", "unix:///@abstract"}).code, 2);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_, "--timeout", "soon"}).code, 2);

  ToolResult pin = Run({"config", "--pkcs11-uri",
                        "pkcs11:token=k;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=" +
                            std::string(support::kTestUserPin)});
  EXPECT_EQ(pin.code, 2) << pin.all();
  EXPECT_NE(pin.err.find("pin-source"), std::string::npos) << pin.err;
  // (TearDown checks that the PIN appears nowhere.)
}

}  // namespace
}  // namespace trousseau::init_tool
