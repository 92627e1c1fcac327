// trousseau-hsm-init as an operator runs it, on a real SoftHSM token: every subcommand's success and
// refusal paths, exit codes, JSON output, no PIN in any output, and a rotation under a running plugin
// (the tool's key_ids must be the plugin's, byte for byte).
#include <fcntl.h>
#include <dirent.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "tests/testing/kms_clients.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

extern char** environ;

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::CallContext;
using support::Eventually;
using testing::KmsClients;
using support::SoftHsmToken;
using support::Subprocess;

constexpr char kNewSoPin[] = "so-pin-5f1e2d3c";
constexpr char kNewUserPin[] = "user-pin-9a8b7c6d";

struct ToolResult {
  int code = -1;
  std::string out;
  std::string err;
  std::string all() const { return out + err; }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& content, mode_t mode) {
  std::ofstream(path) << content;
  chmod(path.c_str(), mode);
}

// The key_id a human-readable generate/rotate printed ("key_id: kek-v2-...").
std::string PrintedKeyId(const std::string& out) {
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
    pid_t pid = -1;
    std::string base;  // its stdout and stderr go to base.out and base.err
  };

  // Runs the tool with `args`; stdout and stderr apart.
  ToolResult Run(std::vector<std::string> args) { return Finish(Start(std::move(args))); }

  // Starts the tool with `args` without waiting for it, so several runs can overlap.
  Started Start(std::vector<std::string> args) {
    const std::string base = StrCatPath("tool-", runs_++);
    args.insert(args.begin(), TOOL_PATH);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (base + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, (base + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid = -1;
    const int spawned = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) {
      ADD_FAILURE() << "cannot start " << TOOL_PATH;
      return {};
    }
    return {pid, base};
  }

  // Waits for a run from Start() (killing it after 30 s) and collects its exit code and output.
  ToolResult Finish(const Started& started) {
    ToolResult result;
    if (started.pid < 0) return result;
    const pid_t pid = started.pid;
    const std::string& base = started.base;
    int status = 0;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        ADD_FAILURE() << "the tool hung";
        break;
      }
      usleep(2000);
    }
    result.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    result.out = ReadFile(base + ".out");
    result.err = ReadFile(base + ".err");
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
  v2::StatusResponse Status() {
    KmsClients clients(socket_);
    v2::StatusResponse status;
    if (!clients.v2->Status(CallContext(500ms).get(), {}, &status).ok()) return {};
    return status;
  }
  bool Serving() { return Status().healthz() == "ok"; }
  v2::EncryptResponse Encrypt(const std::string& plaintext) {
    KmsClients clients(socket_);
    v2::EncryptRequest request;
    request.set_plaintext(plaintext);
    v2::EncryptResponse response;
    grpc::Status s = clients.v2->Encrypt(CallContext().get(), request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }
  grpc::Status Decrypt(const v2::EncryptResponse& sealed, std::string* plaintext) {
    KmsClients clients(socket_);
    v2::DecryptRequest request;
    request.set_ciphertext(sealed.ciphertext());
    request.set_key_id(sealed.key_id());
    v2::DecryptResponse response;
    grpc::Status s = clients.v2->Decrypt(CallContext().get(), request, &response);
    *plaintext = response.plaintext();
    return s;
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::string uri_;
  std::string socket_;
  std::string plugin_log_;
  std::vector<std::string> outputs_;
  int runs_ = 0;
};

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
  ToolResult so = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", "fresh-token",
                       "--so-pin-file", so_pin, "--pin-file", user_pin});
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
}

TEST_F(InitToolTest, TokenInitRefusesALabelThatExists) {
  const std::string so_pin = token_->dir() + "/new-so.pin";
  WriteFile(so_pin, kNewSoPin, 0600);
  ToolResult init = Run({"token", "init", "--module", support::kSoftHsmModule, "--label", token_->label(),
                         "--so-pin-file", so_pin, "--pin-file", token_->pin_file()});
  EXPECT_EQ(init.code, 1) << init.all();
  EXPECT_NE(init.err.find("already exists"), std::string::npos) << init.err;
  ToolResult bad_label = Run({"token", "init", "--module", support::kSoftHsmModule, "--label",
                              std::string(33, 'x'), "--so-pin-file", so_pin, "--pin-file", token_->pin_file()});
  EXPECT_EQ(bad_label.code, 2) << bad_label.all();
}

// ---- key generate / rotate / list ----

TEST_F(InitToolTest, GenerateCreatesVersionOneThenRefusesASecondGenerate) {
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri_});
  ASSERT_EQ(generate.code, 0) << generate.all();
  const std::string key_id = PrintedKeyId(generate.out);
  EXPECT_EQ(key_id.rfind("kek-v1-", 0), 0u) << generate.out;

  ToolResult again = Run({"key", "generate", "--pkcs11-uri", uri_});
  EXPECT_EQ(again.code, 1) << again.all();
  EXPECT_NE(again.err.find("already has version(s) 1"), std::string::npos) << again.err;
  EXPECT_NE(again.err.find("key rotate"), std::string::npos) << again.err;

  // The policy the plugin needs, as the token reports it.
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
  const json& key = list["keys"][0];
  EXPECT_EQ(key["version"], 1);
  EXPECT_EQ(key["key_id"], key_id);
  EXPECT_EQ(key["id"], "01");
  EXPECT_EQ(key["active"], true);
  EXPECT_EQ(key["key_type"], "AES");
  EXPECT_EQ(key["bits"], 256);
  EXPECT_EQ(key["sensitive"], true);
  EXPECT_EQ(key["extractable"], false);
  EXPECT_EQ(key["always_sensitive"], true);
  EXPECT_EQ(key["never_extractable"], true);
  EXPECT_EQ(key["local"], true);
  EXPECT_EQ(key["modifiable"], false);
  EXPECT_EQ(key["usages"], json::array({"encrypt", "decrypt"}));
  EXPECT_EQ(key["policy_ok"], true);
}

TEST_F(InitToolTest, RotateCreatesTheNextVersionAndPrintsItsKeyId) {
  ToolResult early = Run({"key", "rotate", "--pkcs11-uri", uri_});
  EXPECT_EQ(early.code, 1) << early.all();
  EXPECT_NE(early.err.find("key generate"), std::string::npos) << early.err;

  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const std::string key_id = PrintedKeyId(rotate.out);
  EXPECT_EQ(key_id.rfind("kek-v2-", 0), 0u) << rotate.out;
  EXPECT_NE(rotate.out.find("SIGHUP"), std::string::npos) << rotate.out;

  ToolResult rotate_json = Run({"key", "rotate", "--pkcs11-uri", uri_, "--json"});
  ASSERT_EQ(rotate_json.code, 0) << rotate_json.all();
  json third = json::parse(rotate_json.out, nullptr, false);
  EXPECT_EQ(third["version"], 3) << rotate_json.out;
  EXPECT_EQ(third["id"], "03");

  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 3u) << list.dump();
  EXPECT_EQ(list["keys"][1]["key_id"], key_id);
  EXPECT_EQ(list["keys"][0]["active"], false);
  EXPECT_EQ(list["keys"][1]["active"], false);
  EXPECT_EQ(list["keys"][2]["active"], true);
  EXPECT_EQ(list["keys"][2]["key_id"], third["key_id"]);
}

// Two operators, or automation on two control-plane nodes sharing a network HSM, rotating at the same
// moment. A lock cannot span hosts, so the tool checks after C_GenerateKey whether another run created
// the same version and then backs off to the next one (hsm/key_admin.h). Every run must succeed with
// its own version, and the family must never hold a version twice (the plugin refuses such a family).
// Before the check, three rounds of two runs gave versions 1,2,2,3,3,4,4; a check on the module that
// created the key was not enough either, SoftHSM's per-process object cache hid the other run's key.
TEST_F(InitToolTest, ConcurrentRotationsGetDistinctVersionsAndNeverADuplicate) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  constexpr int kRounds = 4;
  constexpr int kAtOnce = 3;
  std::map<uint64_t, std::string> printed;  // version -> key_id, as the runs printed them
  int backed_off = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Started> runs;
    for (int i = 0; i < kAtOnce; ++i) runs.push_back(Start({"key", "rotate", "--pkcs11-uri", uri_, "--json"}));
    std::vector<ToolResult> results;
    for (const Started& run : runs) results.push_back(Finish(run));  // all of them, before any ASSERT
    for (const ToolResult& result : results) {
      if (result.code == 1 && result.err.find("this run created nothing") != std::string::npos) continue;  // ABORTED
      ASSERT_EQ(result.code, 0) << "round " << round << ":\n" << result.all();
      const json created = json::parse(result.out, nullptr, /*allow_exceptions=*/false);
      ASSERT_TRUE(created.is_object()) << result.out;
      const uint64_t version = created["version"].get<uint64_t>();
      EXPECT_TRUE(printed.emplace(version, created["key_id"].get<std::string>()).second)
          << "two runs printed version " << version;
      for (size_t at = 0; (at = result.err.find("at the same time", at)) != std::string::npos; ++at) ++backed_off;
    }
  }
  // Version 1 and exactly the versions the runs printed, each once and each the key its run printed.
  // A version number may be skipped (a run chose above a rival's key that was then withdrawn), and a
  // run may give up after five contests in a row; neither leaves anything behind.
  ASSERT_GE(printed.size(), static_cast<size_t>(kRounds)) << "at least one run per round must succeed";
  const json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u + printed.size()) << list.dump();
  EXPECT_EQ(list["keys"][0]["version"], 1) << list.dump();
  for (size_t i = 1; i < list["keys"].size(); ++i) {
    const json& key = list["keys"][i];
    const uint64_t version = key["version"].get<uint64_t>();
    ASSERT_TRUE(printed.contains(version)) << "version " << version << " was printed by no run\n" << list.dump();
    EXPECT_EQ(key["key_id"], printed[version]) << list.dump();
    EXPECT_EQ(key["active"], i + 1 == list["keys"].size()) << list.dump();
  }
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_}).code, 0);
  std::cout << "[ info     ] " << backed_off
            << " run(s) backed off from a version another run created at the same time\n";
}

// Two `key generate` at once on an empty family: one creates version 1, the other refuses as a
// second generate does, and leaves nothing behind.
TEST_F(InitToolTest, ConcurrentGeneratesCreateVersionOneOnce) {
  for (int round = 0; round < 3; ++round) {
    std::vector<Started> runs;
    for (int i = 0; i < 2; ++i) runs.push_back(Start({"key", "generate", "--pkcs11-uri", uri_, "--json"}));
    std::vector<ToolResult> results;
    for (const Started& run : runs) results.push_back(Finish(run));
    int created = 0;
    for (const ToolResult& result : results) {
      if (result.code == 0) {
        ++created;
        EXPECT_EQ(json::parse(result.out, nullptr, false)["version"], 1) << result.out;
      } else {
        EXPECT_EQ(result.code, 1) << result.all();
        EXPECT_NE(result.err.find("already has version(s) 1"), std::string::npos) << result.err;
      }
    }
    EXPECT_EQ(created, 1) << "round " << round;
    const json list = ListJson();
    ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
    EXPECT_EQ(list["keys"][0]["version"], 1);
    ASSERT_TRUE(token_->DestroyKey(1).ok());
  }
}

TEST_F(InitToolTest, ListShowsAnEmptyFamilyAndHumanReadableAttributes) {
  json empty = ListJson();
  EXPECT_EQ(empty, json::parse(R"({"keys":[]})"));
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
  ToolResult list = Run({"key", "list", "--pkcs11-uri", uri_});
  ASSERT_EQ(list.code, 0) << list.all();
  EXPECT_NE(list.out.find("version 1  (active"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("CKA_ID:     01"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("AES-256"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(", modifiable"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("usages:     encrypt, decrypt"), std::string::npos) << list.out;
}

// A flag wins over TROUSSEAU_HSM_PKCS11_URI, for every subcommand (CLI11 fills env values into every
// subcommand's options, so they must not share storage).
TEST_F(InitToolTest, TheUriFlagWinsOverTheEnvironmentInEverySubcommand) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  setenv("TROUSSEAU_HSM_PKCS11_URI", "pkcs11:token=no-such-token;object=kek?module-path=/nonexistent.so", 1);
  for (const std::vector<std::string>& command :
       {std::vector<std::string>{"key", "list", "--pkcs11-uri", uri_},
        std::vector<std::string>{"selftest", "--pkcs11-uri", uri_}}) {
    const ToolResult r = Run(command);
    EXPECT_EQ(r.code, 0) << command[0] << " " << command[1] << ": " << r.all();
  }
  // Without the flag the environment is used (and here names nothing that exists).
  EXPECT_NE(Run({"key", "list"}).code, 0);
  unsetenv("TROUSSEAU_HSM_PKCS11_URI");
}

// ---- key retire ----

TEST_F(InitToolTest, RetireRefusesTheActiveVersionAndWithoutYesThenDestroys) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);

  ToolResult active = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "2", "--yes"});
  EXPECT_EQ(active.code, 1) << active.all();
  EXPECT_NE(active.err.find("active"), std::string::npos) << active.err;

  ToolResult unknown = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "7", "--yes"});
  EXPECT_EQ(unknown.code, 1) << unknown.all();
  EXPECT_NE(unknown.err.find("no version 7"), std::string::npos) << unknown.err;

  ToolResult unconfirmed = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1"});
  EXPECT_EQ(unconfirmed.code, 1) << unconfirmed.all();
  EXPECT_NE(unconfirmed.err.find("kubectl get secrets -A -o json | kubectl replace -f -"), std::string::npos)
      << unconfirmed.err;
  EXPECT_NE(unconfirmed.err.find("unreadable"), std::string::npos) << unconfirmed.err;
  EXPECT_NE(unconfirmed.err.find("--yes"), std::string::npos) << unconfirmed.err;
  EXPECT_EQ(ListJson()["keys"].size(), 2u) << "nothing may be destroyed without --yes";

  ToolResult retired = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  EXPECT_EQ(retired.code, 0) << retired.all();
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 1u) << list.dump();
  EXPECT_EQ(list["keys"][0]["version"], 2);
  EXPECT_EQ(list["keys"][0]["active"], true);

  ToolResult zero = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "0", "--yes"});
  EXPECT_EQ(zero.code, 2) << zero.all();
}

// ---- selftest ----

TEST_F(InitToolTest, SelftestPassesOnAGoodFamily) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ASSERT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult human = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(human.code, 0) << human.all();
  EXPECT_NE(human.out.find("selftest passed"), std::string::npos) << human.out;
  EXPECT_EQ(human.out.find("FAIL"), std::string::npos) << human.out;
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_, "--strict"}).code, 0) << "key generate's policy is the strict one";

  ToolResult machine = Run({"selftest", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(machine.code, 0) << machine.all();
  json result = json::parse(machine.out, nullptr, false);
  EXPECT_EQ(result["ok"], true) << machine.out;
  ASSERT_EQ(result["keys"].size(), 2u) << machine.out;
  for (const json& key : result["keys"]) {
    EXPECT_EQ(key["ok"], true) << key.dump();
    EXPECT_EQ(key["round_trip"], true) << key.dump();
    EXPECT_EQ(key["tamper_rejected"], true) << key.dump();
    EXPECT_TRUE(key["warnings"].empty()) << key.dump();
  }
}

TEST_F(InitToolTest, SelftestFailsOnAnExtractableKeyAndWarnsOnAModifiableOne) {
  ASSERT_TRUE(token_->GenerateCopyableKek(1).ok());
  ToolResult modifiable = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(modifiable.code, 0) << "a warning is not a failure\n" << modifiable.all();
  EXPECT_NE(modifiable.out.find("WARN modifiable"), std::string::npos) << modifiable.out;
  // --strict holds keys to exactly the policy `key generate` gives: the warning fails.
  ToolResult strict = Run({"selftest", "--pkcs11-uri", uri_, "--strict"});
  EXPECT_EQ(strict.code, 1) << strict.all();
  EXPECT_NE(strict.out.find("FAIL (strict) modifiable"), std::string::npos) << strict.out;
  EXPECT_NE(strict.out.find("selftest FAILED"), std::string::npos) << strict.out;

  ASSERT_TRUE(token_->GenerateUnsafeKey(2).ok());
  ToolResult unsafe = Run({"selftest", "--pkcs11-uri", uri_, "--json"});
  EXPECT_EQ(unsafe.code, 1) << unsafe.all();
  json result = json::parse(unsafe.out, nullptr, false);
  EXPECT_EQ(result["ok"], false) << unsafe.out;
  ASSERT_EQ(result["keys"].size(), 2u) << unsafe.out;
  EXPECT_EQ(result["keys"][0]["ok"], true) << unsafe.out;
  EXPECT_EQ(result["keys"][1]["ok"], false) << unsafe.out;
  EXPECT_NE(result["keys"][1]["failures"].dump().find("extractable"), std::string::npos) << unsafe.out;

  ToolResult human = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(human.code, 1);
  EXPECT_NE(human.out.find("FAIL KEK policy: it is extractable"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("selftest FAILED"), std::string::npos) << human.out;
}

TEST_F(InitToolTest, SelftestFailsOnAnEmptyFamily) {
  ToolResult empty = Run({"selftest", "--pkcs11-uri", uri_});
  EXPECT_EQ(empty.code, 1) << empty.all();
  EXPECT_NE(empty.out.find("no key"), std::string::npos) << empty.out;
}

// ---- config ----

TEST_F(InitToolTest, ConfigPrintsAnEncryptionConfigurationWithoutTheToken) {
  // A token that does not exist: config is pure output.
  const std::string uri =
      "pkcs11:token=not-there;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/trousseau-hsm/pin";
  ToolResult config = Run({"config", "--pkcs11-uri", uri, "--listen", "unix:///run/trousseau-hsm/kms.sock", "--name",
                           "hsm-kms", "--timeout", "5s"});
  ASSERT_EQ(config.code, 0) << config.all();
  const std::string& y = config.out;
  for (const char* line :
       {"apiVersion: apiserver.config.k8s.io/v1\n", "kind: EncryptionConfiguration\n", "      - secrets\n",
        "      - kms:\n", "          apiVersion: v2\n", "          name: hsm-kms\n",
        "          endpoint: unix:///run/trousseau-hsm/kms.sock\n", "          timeout: 5s\n", "      - identity: {}\n"}) {
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

// ---- PINs, usage errors ----

TEST_F(InitToolTest, PinRulesAreThePluginsAndNoPinIsEverPrinted) {
  // TROUSSEAU_HSM_PIN instead of a pin-source.
  setenv("TROUSSEAU_HSM_PIN", support::kTestUserPin, 1);
  ToolResult from_env = Run({"key", "generate", "--pkcs11-uri",
                             "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule});
  unsetenv("TROUSSEAU_HSM_PIN");
  EXPECT_EQ(from_env.code, 0) << from_env.all();

  // No PIN at all.
  ToolResult none = Run({"key", "list", "--pkcs11-uri",
                         "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule});
  EXPECT_EQ(none.code, 2) << none.all();
  EXPECT_NE(none.err.find("TROUSSEAU_HSM_PIN"), std::string::npos) << none.err;

  // A pin-value in the URI, on a command that would open the token.
  ToolResult pin_value = Run({"key", "list", "--pkcs11-uri", uri_ + "&pin-value=" + support::kTestUserPin});
  EXPECT_EQ(pin_value.code, 2) << pin_value.all();

  // A PIN file others can read.
  chmod(token_->pin_file().c_str(), 0644);
  ToolResult open_file = Run({"key", "list", "--pkcs11-uri", uri_});
  chmod(token_->pin_file().c_str(), 0600);
  EXPECT_EQ(open_file.code, 2) << open_file.all();
  EXPECT_NE(open_file.err.find("chmod 600"), std::string::npos) << open_file.err;

  // A PIN the token rejects (a file holding the SO PIN).
  const std::string wrong = token_->dir() + "/wrong.pin";
  WriteFile(wrong, support::kTestSoPin, 0600);
  ToolResult rejected = Run({"key", "list", "--pkcs11-uri",
                             "pkcs11:token=" + token_->label() + ";object=kek?module-path=" + support::kSoftHsmModule +
                                 "&pin-source=file:" + wrong});
  EXPECT_EQ(rejected.code, 1) << rejected.all();

  // A PIN typed as an argument is not echoed.
  ToolResult stray = Run({"key", "list", "--pkcs11-uri", uri_, support::kTestUserPin});
  EXPECT_EQ(stray.code, 2) << stray.all();

  // Every other command, for the TearDown scan.
  EXPECT_EQ(Run({"key", "rotate", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_, "--json"}).code, 0);
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_}).code, 0);
  EXPECT_EQ(Run({"selftest", "--pkcs11-uri", uri_, "--json"}).code, 0);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1"}).code, 1);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"}).code, 0);
  EXPECT_EQ(Run({"config", "--pkcs11-uri", uri_}).code, 0);
}

TEST_F(InitToolTest, UsageErrorsExitTwoAndEveryCommandHasHelp) {
  EXPECT_EQ(Run({}).code, 2);
  EXPECT_EQ(Run({"key"}).code, 2);
  EXPECT_EQ(Run({"key", "list"}).code, 2);  // no --pkcs11-uri
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", uri_, "--pin", "x"}).code, 2);
  EXPECT_EQ(Run({"key", "list", "--pkcs11-uri", "not a uri"}).code, 2);
  EXPECT_EQ(Run({"key", "retire", "--pkcs11-uri", uri_}).code, 2);  // no --version
  for (std::vector<std::string> command :
       std::vector<std::vector<std::string>>{{},
                                             {"token", "init"},
                                             {"key", "generate"},
                                             {"key", "rotate"},
                                             {"key", "list"},
                                             {"key", "retire"},
                                             {"selftest"},
                                             {"config"}}) {
    command.push_back("--help");
    ToolResult help = Run(command);
    EXPECT_EQ(help.code, 0) << help.all();
    EXPECT_NE(help.out.find("Usage:"), std::string::npos) << help.out;
  }
}

// ---- rotation under a running plugin ----

TEST_F(InitToolTest, RotationIsPickedUpOnTheRefreshIntervalWithTheToolsKeyId) {
  ToolResult generate = Run({"key", "generate", "--pkcs11-uri", uri_});
  ASSERT_EQ(generate.code, 0) << generate.all();
  const std::string v1 = PrintedKeyId(generate.out);
  auto plugin = StartPlugin("1s");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  // The same key_id, byte for byte, from the tool and from the plugin.
  EXPECT_EQ(Status().key_id(), v1);
  const v2::EncryptResponse old_sealed = Encrypt("sealed-under-v1");
  EXPECT_EQ(old_sealed.key_id(), v1);

  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const std::string v2 = PrintedKeyId(rotate.out);
  ASSERT_EQ(v2.rfind("kek-v2-", 0), 0u) << rotate.out;
  // Within the 1 s interval (plus slack for a loaded machine).
  EXPECT_TRUE(Eventually([&] { return Status().key_id() == v2; }, 3s)) << Status().key_id() << "\n" << plugin->Log();
  EXPECT_EQ(Encrypt("sealed-under-v2").key_id(), v2);
  std::string plaintext;
  ASSERT_TRUE(Decrypt(old_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v1");
  // key list agrees with the plugin on both key_ids.
  json list = ListJson();
  ASSERT_EQ(list["keys"].size(), 2u);
  EXPECT_EQ(list["keys"][0]["key_id"], v1);
  EXPECT_EQ(list["keys"][1]["key_id"], v2);
}

TEST_F(InitToolTest, SighupActivatesARotationAndARetiredKeyGivesNotFound) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  auto plugin = StartPlugin("0");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  const v2::EncryptResponse old_sealed = Encrypt("sealed-under-v1");

  // No refresh interval: nothing changes until SIGHUP. The tool asks the plugin for a second and
  // reports that the new key_id did not show up.
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_, "--wait-timeout", "1s"});
  const std::string v2 = PrintedKeyId(rotate.out);
  ASSERT_EQ(v2.rfind("kek-v2-", 0), 0u) << rotate.all();
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("did not report its key_id within 1s: its Status still reports key_id " + old_sealed.key_id()),
            std::string::npos)
      << rotate.err;
  EXPECT_EQ(Status().key_id(), old_sealed.key_id());
  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return Status().key_id() == v2; }, 6s)) << plugin->Log();
  const v2::EncryptResponse new_sealed = Encrypt("sealed-under-v2");
  std::string plaintext;
  ASSERT_TRUE(Decrypt(old_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v1");

  // Retired too early: the old ciphertext is lost, cleanly.
  ToolResult retire = Run({"key", "retire", "--pkcs11-uri", uri_, "--version", "1", "--yes"});
  ASSERT_EQ(retire.code, 0) << retire.all();
  plugin->Signal(SIGHUP);
  grpc::Status last;
  EXPECT_TRUE(Eventually(
      [&] {
        last = Decrypt(old_sealed, &plaintext);
        // Until the reload lands, the plugin may still find the key, or find its token object gone
        // ("key version 1 is not loaded", also NOT_FOUND); never anything else, never other plaintext.
        if (last.ok()) {
          EXPECT_EQ(plaintext, "sealed-under-v1");
        } else {
          EXPECT_TRUE(last.error_code() == grpc::StatusCode::NOT_FOUND ||
                      last.error_code() == grpc::StatusCode::UNAVAILABLE)
              << last.error_code() << " " << last.error_message();
        }
        // Once the key ring is reloaded, the key_id itself is unknown.
        return last.error_code() == grpc::StatusCode::NOT_FOUND &&
               last.error_message().find("unknown key_id") != std::string::npos;
      },
      3s))
      << last.error_code() << " " << last.error_message() << "\n"
      << plugin->Log();

  // The plugin keeps serving with the active key.
  EXPECT_FALSE(plugin->Wait(0ms).has_value()) << "the plugin exited\n" << plugin->Log();
  EXPECT_TRUE(Serving()) << plugin->Log();
  EXPECT_EQ(Status().key_id(), v2);
  ASSERT_TRUE(Decrypt(new_sealed, &plaintext).ok()) << plugin->Log();
  EXPECT_EQ(plaintext, "sealed-under-v2");
  EXPECT_EQ(Encrypt("after-retire").key_id(), v2);
}

// ---- what the plugin will see of a rotation ----

TEST_F(InitToolTest, RotateWaitsUntilTheRunningPluginReportsTheNewKeyId) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  auto plugin = StartPlugin("1s");
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_, "--json"});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  const json printed = json::parse(rotate.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(printed.is_object()) << rotate.out;
  EXPECT_EQ(printed["active"], true);
  EXPECT_EQ(printed["plugin_confirmed"], true);
  // The tool's success is the plugin's state: no waiting here.
  EXPECT_EQ(Status().key_id(), printed["key_id"]) << plugin->Log();

  ToolResult text = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_});
  ASSERT_EQ(text.code, 0) << text.all();
  EXPECT_NE(text.out.find("now reports this key_id: version 3 is the active key"), std::string::npos) << text.out;
  EXPECT_EQ(Status().key_id(), PrintedKeyId(text.out));
}

TEST_F(InitToolTest, RotateWithoutAPluginToAskSaysItIsUnconfirmed) {
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  ASSERT_EQ(rotate.code, 0) << rotate.all();
  EXPECT_EQ(rotate.out.find("becomes the active key"), std::string::npos) << rotate.out;
  EXPECT_NE(rotate.out.find("Not confirmed with a running plugin (--no-wait)"), std::string::npos) << rotate.out;
  // A socket nobody serves on: the tool says so and fails, after creating the version.
  ToolResult unanswered = Run({"key", "rotate", "--pkcs11-uri", uri_, "--socket", "unix://" + socket_,
                               "--wait-timeout", "300ms"});
  EXPECT_EQ(unanswered.code, 1) << unanswered.all();
  EXPECT_NE(unanswered.err.find("version 3 was created, but the plugin on unix://" + socket_), std::string::npos)
      << unanswered.err;
  EXPECT_NE(unanswered.err.find("its Status call fails"), std::string::npos) << unanswered.err;
}

TEST_F(InitToolTest, RotateRefusesAFamilyThePluginRefusesAndCreatesNothing) {
  ASSERT_TRUE(token_->GenerateUnsafeKey(1).ok());  // extractable: the plugin loads nothing of this family
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("the plugin refuses key family 'kek'"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("version 1: it is extractable"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(rotate.out.find("active"), std::string::npos) << rotate.out;
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

TEST_F(InitToolTest, RotateRefusesAFamilyWithALastingDuplicateVersion) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  ASSERT_TRUE(token_->GenerateKek(2).ok());  // made by another tool: nobody withdraws it
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("(there are two keys with version 2)"), std::string::npos) << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(ListJson()["keys"].size(), 3u);
}

// Root rotating a SoftHSM token that belongs to the plugin's user would make a root-only object file
// the plugin never sees (issue 12, fault 4).
TEST_F(InitToolTest, RotateRefusesATokenWhoseStorageBelongsToAnotherUser) {
  ASSERT_EQ(geteuid(), 0u) << "this test makes the token belong to another user";
  ASSERT_EQ(Run({"key", "generate", "--pkcs11-uri", uri_}).code, 0);
  const std::string tokens = token_->dir() + "/tokens";
  std::string token_dir;
  if (DIR* d = opendir(tokens.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') token_dir = tokens + "/" + e->d_name;
    }
    closedir(d);
  }
  ASSERT_FALSE(token_dir.empty());
  ASSERT_EQ(std::system(("chown -R 10001:10001 '" + token_dir + "'").c_str()), 0);
  ToolResult rotate = Run({"key", "rotate", "--pkcs11-uri", uri_, "--no-wait"});
  EXPECT_EQ(rotate.code, 1) << rotate.all();
  EXPECT_NE(rotate.err.find("the token's storage " + token_dir + " belongs to uid 10001, but this runs as uid 0"),
            std::string::npos)
      << rotate.err;
  EXPECT_NE(rotate.err.find("Nothing was created"), std::string::npos) << rotate.err;
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

// ---- the tool's own process: no core, not ptrace-able, no PIN left in its environment ----

// Starts `argv` as user nobody (65534) with `env`, stdin from `stdin_fd`, output discarded. The files
// under /proc/PID of an unprivileged user's process (not the directory itself) belong to that user
// unless the process made itself non-dumpable: then they belong to root (proc(5), PR_SET_DUMPABLE).
pid_t SpawnAsNobody(const std::vector<std::string>& argv, const std::vector<std::string>& env, int stdin_fd) {
  std::vector<char*> args, envp;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(stdin_fd, 0);
    dup2(null, 1);
    dup2(null, 2);
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(126);
    execve(args[0], args.data(), envp.data());
    _exit(127);
  }
  return pid;
}

// True once `pid` runs `binary` and its main thread waits in kernel function `wchan` (e.g. an open of
// a FIFO nobody writes: "wait_for_partner"), which the dynamic loader's own opens never do.
bool BlockedIn(pid_t pid, const std::string& binary, const std::string& wchan) {
  char exe[PATH_MAX] = {};
  const std::string proc = "/proc/" + std::to_string(pid);
  char resolved[PATH_MAX] = {};
  if (readlink((proc + "/exe").c_str(), exe, sizeof exe - 1) <= 0 || realpath(binary.c_str(), resolved) == nullptr ||
      std::string(exe) != resolved) {
    return false;
  }
  return ReadFile(proc + "/wchan").find(wchan) != std::string::npos;
}

std::string CoreLimit(pid_t pid) {
  std::istringstream limits(ReadFile("/proc/" + std::to_string(pid) + "/limits"));
  for (std::string line; std::getline(limits, line);) {
    if (line.rfind("Max core file size", 0) == 0) {
      std::istringstream fields(line.substr(sizeof("Max core file size") - 1));
      std::string soft, hard;
      fields >> soft >> hard;
      return soft + " " + hard;
    }
  }
  return "";
}

TEST_F(InitToolTest, TheToolCannotBeTracedDumpsNoCoreAndDropsThePinVariable) {
  ASSERT_EQ(geteuid(), 0u) << "this test starts the tool as another user";
  char dir_template[] = "/tmp/thsm-fifo-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  ASSERT_EQ(chmod(dir.c_str(), 0755), 0);
  const std::string fifo = dir + "/so.pin";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0666), 0);
  ASSERT_EQ(chmod(fifo.c_str(), 0666), 0);
  // `token init` opens its SO PIN file first: a FIFO nobody writes holds it there, after main's setup.
  const pid_t pid = SpawnAsNobody({TOOL_PATH, "token", "init", "--module", support::kSoftHsmModule, "--label", "x",
                                   "--so-pin-file", fifo, "--pin-file", fifo},
                                  {std::string("TROUSSEAU_HSM_PIN=") + support::kTestUserPin, "PATH=/usr/bin:/bin"},
                                  0);
  ASSERT_GT(pid, 0);
  const bool blocked = Eventually([&] { return BlockedIn(pid, TOOL_PATH, "wait_for_partner"); }, 10s);
  struct stat proc {};
  const int stat_rc = stat(("/proc/" + std::to_string(pid) + "/environ").c_str(), &proc);
  const std::string environ_text = ReadFile("/proc/" + std::to_string(pid) + "/environ");
  const std::string core = CoreLimit(pid);
  // Let it go: a writer unblocks the open, and the FIFO is refused as a PIN file.
  const int writer = open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
  if (writer >= 0) close(writer);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  unlink(fifo.c_str());
  rmdir(dir.c_str());

  ASSERT_TRUE(blocked) << "the tool never blocked on its PIN file";
  ASSERT_EQ(stat_rc, 0);
  EXPECT_EQ(proc.st_uid, 0u) << "/proc/PID/environ of the tool belongs to its user: it is dumpable (ptrace-able)";
  EXPECT_EQ(core, "0 0");
  EXPECT_NE(environ_text.find("PATH=/usr/bin:/bin"), std::string::npos) << "not the tool's environment";
  EXPECT_EQ(environ_text.find("TROUSSEAU_HSM_PIN"), std::string::npos);
  EXPECT_EQ(environ_text.find(support::kTestUserPin), std::string::npos);
}

}  // namespace
}  // namespace trousseau
