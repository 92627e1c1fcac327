// `trousseau-hsm-init tpm init|rotate|list|selftest` as an operator runs it, as a child process
// against a real swtpm (no mocks): success and refusal paths, exit codes, JSON output, and key_ids
// that are byte for byte those of the plugin's engine on the same key directory.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "core/kms_engine.h"
#include "core/strings.h"
#include "tools/support/subprocess.h"
#include "tests/tpm/swtpm_test.h"
#include "tpm/provisioning.h"
#include "tpm/tpm_backend.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using support::Subprocess;
using testing::Swtpm;
using testing::TempDir;

// Exit codes of trousseau-hsm-init.
constexpr int kOk = 0;
constexpr int kFailed = 1;
constexpr int kUsage = 2;

const std::regex kKeyIdPattern("kek-v([0-9]+)-[0-9a-f]{32}");

struct ToolResult {
  int code = -1;
  std::string output;  // stdout and stderr, as one stream (Subprocess's log)
};

// The key_id a human-readable init/rotate printed ("key_id: kek-v2-...").
std::string PrintedKeyId(const std::string& out) {
  std::smatch m;
  static const std::regex kLine("key_id: (kek-v[0-9]+-[0-9a-f]{32})\n");
  return std::regex_search(out, m, kLine) ? m[1].str() : "";
}

bool IsKeyId(const std::string& key_id, uint64_t version) {
  std::smatch m;
  return std::regex_match(key_id, m, kKeyIdPattern) && m[1].str() == std::to_string(version);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

mode_t Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// Sets an environment variable for the tool's children for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) { ::setenv(name, value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name_); }

 private:
  const char* name_;
};

class InitToolTpmTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    if (HasFatalFailure()) return;
    // The test's own environment must not configure the tool behind its back.
    ::unsetenv("TROUSSEAU_HSM_TPM_TCTI");
    ::unsetenv("TROUSSEAU_HSM_TPM_KEY_DIR");
    ::unsetenv("TSS2_LOG");
  }

  // No output ever holds key material: no piece of any TPM blob in the key directory, raw or hex.
  void TearDown() override {
    std::error_code ec;
    if (!std::filesystem::is_directory(key_dir_, ec)) return;
    for (const auto& entry : std::filesystem::directory_iterator(key_dir_, ec)) {
      const std::string blob = ReadFile(entry.path());
      if (blob.size() < 34) continue;
      const std::string piece = blob.substr(blob.size() - 32, 16);  // encrypted sensitive area / key bits
      for (const std::string& output : outputs_) {
        EXPECT_EQ(output.find(piece), std::string::npos) << entry.path() << " leaked into:\n" << output;
        EXPECT_EQ(output.find(HexEncode(piece)), std::string::npos) << entry.path() << " leaked into:\n" << output;
      }
    }
  }

  // Runs trousseau-hsm-init with `args`.
  ToolResult Run(std::vector<std::string> args) {
    const std::string log = StrCat(dir_.path(), "/tool-", runs_++, ".log");
    args.insert(args.begin(), TOOL_PATH);
    Subprocess tool(args, log);
    ToolResult result;
    if (!tool.started()) {
      ADD_FAILURE() << "cannot start " << TOOL_PATH;
      return result;
    }
    std::optional<int> code = tool.Wait(60s);
    if (!code) {
      tool.Signal(SIGKILL);
      code = tool.Wait(5s);
      ADD_FAILURE() << "the tool hung: " << StrJoin(args, " ");
    }
    result.code = code.value_or(-1);
    result.output = tool.Log();
    outputs_.push_back(result.output);
    return result;
  }

  // tpm <command> --tpm-tcti <this swtpm> --tpm-key-dir <key_dir_> <extra...>
  ToolResult Tpm(const std::string& command, std::vector<std::string> extra = {}, const std::string& tcti = "",
                 const std::string& key_dir = "") {
    std::vector<std::string> args = {"tpm",           command,
                                     "--tpm-tcti",    tcti.empty() ? tpm_->Tcti() : tcti,
                                     "--tpm-key-dir", key_dir.empty() ? key_dir_ : key_dir};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  }

  // The whole output of a --json run must be one JSON document: nothing else on stdout or stderr.
  json Json(const ToolResult& result) {
    json parsed = json::parse(result.output, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << "not JSON:\n" << result.output;
    return parsed;
  }

  json ListJson(const std::string& tcti = "") {
    ToolResult list = Tpm("list", {"--json"}, tcti);
    EXPECT_EQ(list.code, kOk) << list.output;
    return Json(list);
  }

  // The key_ids the plugin's engine reports for the key directory (version -> key_id), and its
  // Status key_id: a TpmBackend + KmsEngine built exactly as the plugin builds them.
  std::map<uint64_t, std::string> EngineKeyIds(std::string* active_key_id) {
    StatusOr<std::unique_ptr<tpm::TpmBackend>> backend =
        tpm::TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = key_dir_});
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    if (!backend.ok()) return {};
    KmsEngine engine(std::shared_ptr<tpm::TpmBackend>(*std::move(backend)), {.family_label = tpm::kTpmFamilyLabel});
    Status loaded = engine.LoadKeyRing();
    EXPECT_TRUE(loaded.ok()) << loaded.ToString();
    if (!loaded.ok()) return {};
    HealthReport health = engine.Health();
    EXPECT_TRUE(health.ok) << health.detail;
    *active_key_id = health.active_key_id;
    StatusOr<EncryptResult> sealed = engine.Encrypt(std::string(32, 's'), 1024);
    EXPECT_TRUE(sealed.ok()) << sealed.status().ToString();
    if (sealed.ok()) {
      EXPECT_EQ(sealed->key_id, *active_key_id);
    }
    return engine.key_ring()->key_ids();
  }  // the backend flushes its TPM objects here: the tool may use all of swtpm's slots again

  std::vector<std::string> outputs_;
  int runs_ = 0;
};

TEST_F(InitToolTpmTest, InitCreatesVersionOneAndListShowsItActive) {
  ToolResult init = Tpm("init");
  ASSERT_EQ(init.code, kOk) << init.output;
  EXPECT_NE(init.output.find("created version 1 in TPM key directory " + key_dir_), std::string::npos) << init.output;
  EXPECT_NE(init.output.find("AES-256-CFB + HMAC-SHA256"), std::string::npos) << init.output;
  const std::string key_id = PrintedKeyId(init.output);
  EXPECT_TRUE(IsKeyId(key_id, 1)) << init.output;
  EXPECT_NE(init.output.find("--tpm-key-dir " + key_dir_), std::string::npos) << "how to start the plugin";
  EXPECT_EQ(Mode(key_dir_), 0700u);
  for (const auto& entry : std::filesystem::directory_iterator(key_dir_)) EXPECT_EQ(Mode(entry.path()), 0600u);

  ToolResult list = Tpm("list");
  ASSERT_EQ(list.code, kOk) << list.output;
  EXPECT_NE(list.output.find("1 version(s), active version 1"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("version 1  (active"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("key_id:  " + key_id + "\n"), std::string::npos) << list.output;

  json listed = ListJson();
  ASSERT_TRUE(listed["keys"].is_array()) << listed.dump();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  const json& v1 = listed["keys"][0];
  EXPECT_EQ(v1["version"], 1);
  EXPECT_EQ(v1["key_id"], key_id);
  EXPECT_EQ(v1["active"], true);
  EXPECT_EQ(v1["scheme"], "aes-cfb-hmac");
}

TEST_F(InitToolTpmTest, InitRefusesADirectoryThatAlreadyHoldsKeys) {
  ToolResult first = Tpm("init", {"--json"});
  ASSERT_EQ(first.code, kOk) << first.output;
  const std::string key_id = Json(first)["key_id"].get<std::string>();

  ToolResult again = Tpm("init");
  EXPECT_EQ(again.code, kFailed) << again.output;
  EXPECT_NE(again.output.find("refusing to create version 1 again"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("already holds TPM key versions"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("tpm rotate"), std::string::npos) << again.output;
  ToolResult again_json = Tpm("init", {"--json", "--scheme", "rsa-oaep"});
  EXPECT_EQ(again_json.code, kFailed) << again_json.output;

  // Nothing was touched: still exactly the first version 1.
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["key_id"], key_id);
}

TEST_F(InitToolTpmTest, RetireRefusesTheActiveVersionExplainsWithoutYesThenDeletesTheFiles) {
  ASSERT_EQ(Tpm("init").code, kOk);
  ASSERT_EQ(Tpm("rotate").code, kOk);

  ToolResult active = Tpm("retire", {"--version", "2", "--yes"});
  EXPECT_EQ(active.code, kFailed) << active.output;
  EXPECT_NE(active.output.find("active (highest) version"), std::string::npos) << active.output;
  ToolResult missing = Tpm("retire", {"--version", "7", "--yes"});
  EXPECT_EQ(missing.code, kFailed) << missing.output;
  EXPECT_NE(missing.output.find("has no version 7"), std::string::npos) << missing.output;

  ToolResult unsure = Tpm("retire", {"--version", "1"});
  EXPECT_EQ(unsure.code, kFailed) << unsure.output;
  EXPECT_NE(unsure.output.find("not retiring without --yes"), std::string::npos) << unsure.output;
  EXPECT_NE(unsure.output.find("kubectl get secrets -A -o json | kubectl replace -f -"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(key_dir_ + "/v000001.aes.pub")) << "nothing deleted without --yes";

  ToolResult retired = Tpm("retire", {"--version", "1", "--yes"});
  ASSERT_EQ(retired.code, kOk) << retired.output;
  EXPECT_NE(retired.output.find("SIGHUP"), std::string::npos) << retired.output;
  for (const char* part : {".aes.pub", ".aes.priv", ".hmac.pub", ".hmac.priv"}) {
    EXPECT_FALSE(std::filesystem::exists(key_dir_ + "/v000001" + part)) << part;
  }
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["version"], 2);
  EXPECT_EQ(listed["keys"][0]["active"], true);
  EXPECT_EQ(Tpm("selftest").code, kOk);
}

TEST_F(InitToolTpmTest, RotateMakesVersionTwoActiveAndKeepsVersionOne) {
  ToolResult init = Tpm("init", {"--json"});
  ASSERT_EQ(init.code, kOk) << init.output;
  const std::string v1 = Json(init)["key_id"].get<std::string>();

  ToolResult rotate = Tpm("rotate");
  ASSERT_EQ(rotate.code, kOk) << rotate.output;
  EXPECT_NE(rotate.output.find("created version 2"), std::string::npos) << rotate.output;
  const std::string v2 = PrintedKeyId(rotate.output);
  EXPECT_TRUE(IsKeyId(v2, 2)) << rotate.output;
  EXPECT_NE(rotate.output.find("SIGHUP"), std::string::npos) << rotate.output;
  EXPECT_NE(rotate.output.find("--key-refresh-interval"), std::string::npos) << rotate.output;

  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 2u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["version"], 1);
  EXPECT_EQ(listed["keys"][0]["key_id"], v1);
  EXPECT_EQ(listed["keys"][0]["active"], false);
  EXPECT_EQ(listed["keys"][1]["version"], 2);
  EXPECT_EQ(listed["keys"][1]["key_id"], v2);
  EXPECT_EQ(listed["keys"][1]["active"], true);

  ToolResult text = Tpm("list");
  ASSERT_EQ(text.code, kOk) << text.output;
  EXPECT_NE(text.output.find("2 version(s), active version 2"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("version 2  (active"), std::string::npos) << text.output;
  EXPECT_EQ(text.output.find("version 1  (active"), std::string::npos) << text.output;
}

TEST_F(InitToolTpmTest, TwoRotationsAtOnceGetTheNextTwoVersions) {
  ASSERT_EQ(Tpm("init").code, kOk);
  // Two operators (or automation runs) at the same moment: two processes, one lock file. Both wait
  // their turn; neither reuses the other's version number or temp files.
  std::vector<std::unique_ptr<Subprocess>> runs;
  for (int i = 0; i < 2; ++i) {
    runs.push_back(
        std::make_unique<Subprocess>(std::vector<std::string>{TOOL_PATH, "tpm", "rotate", "--json", "--tpm-tcti",
                                                              tpm_->Tcti(), "--tpm-key-dir", key_dir_},
                                     StrCat(dir_.path(), "/concurrent-", i, ".log")));
    ASSERT_TRUE(runs.back()->started());
  }
  std::set<int> versions;
  for (auto& run : runs) {
    const std::optional<int> code = run->Wait(60s);
    ToolResult result{code.value_or(-1), run->Log()};
    outputs_.push_back(result.output);
    ASSERT_EQ(result.code, kOk) << result.output;
    versions.insert(Json(result)["version"].get<int>());
  }
  EXPECT_EQ(versions, (std::set<int>{2, 3}));
  EXPECT_EQ(ListJson()["keys"].size(), 3u);
  EXPECT_EQ(Tpm("selftest").code, kOk);
}

TEST_F(InitToolTpmTest, AKeyDirectoryOthersCanWriteIsAUsageErrorNamingTheFix) {
  ASSERT_TRUE(std::filesystem::create_directory(key_dir_));
  ASSERT_EQ(::chmod(key_dir_.c_str(), 0777), 0);
  ToolResult init = Tpm("init");
  EXPECT_EQ(init.code, kUsage) << init.output;
  EXPECT_NE(init.output.find("chmod 700 " + key_dir_), std::string::npos) << init.output;
  ASSERT_EQ(::chmod(key_dir_.c_str(), 0700), 0);
  ASSERT_EQ(Tpm("init").code, kOk);
  ASSERT_EQ(::chmod(key_dir_.c_str(), 0770), 0);
  ToolResult rotate = Tpm("rotate");
  EXPECT_EQ(rotate.code, kUsage) << rotate.output;
  EXPECT_NE(rotate.output.find("writable by its group"), std::string::npos) << rotate.output;
  for (const char* command : {"list", "selftest"}) {  // the plugin's reader refuses it too
    ToolResult result = Tpm(command);
    EXPECT_EQ(result.code, kUsage) << command << ": " << result.output;
    EXPECT_NE(result.output.find("chmod 700 " + key_dir_), std::string::npos) << command << ": " << result.output;
  }
  ToolResult retire = Tpm("retire", {"--version", "1", "--yes"});
  EXPECT_EQ(retire.code, kUsage) << retire.output;
  ASSERT_EQ(::chmod(key_dir_.c_str(), 0700), 0);
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

TEST_F(InitToolTpmTest, KeyIdsAreStableAndEqualWhatInitAndRotatePrintedAndWhatThePluginReports) {
  ToolResult init = Tpm("init");
  ASSERT_EQ(init.code, kOk) << init.output;
  ToolResult rotate = Tpm("rotate", {"--json"});
  ASSERT_EQ(rotate.code, kOk) << rotate.output;
  const json rotated = Json(rotate);
  EXPECT_EQ(rotated["version"], 2);
  EXPECT_EQ(rotated["active"], true);
  const std::map<uint64_t, std::string> printed = {{1, PrintedKeyId(init.output)},
                                                   {2, rotated["key_id"].get<std::string>()}};

  const json first = ListJson();
  const json second = ListJson();
  EXPECT_EQ(first, second) << "two list calls differ";
  ASSERT_EQ(first["keys"].size(), 2u) << first.dump();
  std::map<uint64_t, std::string> listed;
  for (const json& key : first["keys"]) listed[key["version"].get<uint64_t>()] = key["key_id"].get<std::string>();
  EXPECT_EQ(listed, printed);

  // The same TPM after a restart (same state): the same key_ids.
  ASSERT_TRUE(tpm_->Restart());
  EXPECT_EQ(ListJson(), first);

  // The plugin's engine on this directory, with the plugin's family label: same key_ids, and its
  // Status key_id is the active (highest) version's.
  std::string status_key_id;
  EXPECT_EQ(EngineKeyIds(&status_key_id), printed);
  EXPECT_EQ(status_key_id, printed.at(2));
}

TEST_F(InitToolTpmTest, SelftestPasses) {
  ASSERT_EQ(Tpm("init").code, kOk);
  ASSERT_EQ(Tpm("rotate", {"--scheme", "aes-cfb-hmac"}).code, kOk);

  ToolResult selftest = Tpm("selftest");
  EXPECT_EQ(selftest.code, kOk) << selftest.output;
  EXPECT_NE(selftest.output.find("selftest passed: 2 version(s)"), std::string::npos) << selftest.output;
  EXPECT_EQ(selftest.output.find("FAIL"), std::string::npos) << selftest.output;

  ToolResult as_json = Tpm("selftest", {"--json"});
  EXPECT_EQ(as_json.code, kOk) << as_json.output;
  const json result = Json(as_json);
  EXPECT_EQ(result["ok"], true) << result.dump();
  EXPECT_TRUE(result["failures"].empty()) << result.dump();
  ASSERT_EQ(result["keys"].size(), 2u) << result.dump();
  EXPECT_EQ(result["keys"][1]["active"], true);
  EXPECT_EQ(result["keys"][1]["key_id"], ListJson()["keys"][1]["key_id"]);
}

TEST_F(InitToolTpmTest, TheRsaOaepFallbackIsListedAndSelfTested) {
  ToolResult init = Tpm("init", {"--scheme", "rsa-oaep"});
  ASSERT_EQ(init.code, kOk) << init.output;
  EXPECT_NE(init.output.find("RSA-2048-OAEP"), std::string::npos) << init.output;
  EXPECT_NE(init.output.find(".rsa.pub"), std::string::npos) << "the caveat about the public blob";
  ASSERT_EQ(Tpm("rotate").code, kOk);  // auto: AES-CFB + HMAC, which swtpm has
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 2u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["scheme"], "rsa-oaep");
  EXPECT_EQ(listed["keys"][1]["scheme"], "aes-cfb-hmac");
  ToolResult selftest = Tpm("selftest");
  EXPECT_EQ(selftest.code, kOk) << selftest.output;
}

TEST_F(InitToolTpmTest, SelftestListAndRotateFailOnAnotherTpm) {
  ToolResult init = Tpm("init", {"--json"});
  ASSERT_EQ(init.code, kOk) << init.output;
  const std::string key_id = Json(init)["key_id"].get<std::string>();
  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");  // fresh state: another TPM
  ASSERT_NE(other, nullptr);

  ToolResult selftest = Tpm("selftest", {}, other->Tcti());
  EXPECT_EQ(selftest.code, kFailed) << selftest.output;
  EXPECT_NE(selftest.output.find("selftest FAILED"), std::string::npos) << selftest.output;
  EXPECT_NE(selftest.output.find("another TPM"), std::string::npos) << selftest.output;

  ToolResult as_json = Tpm("selftest", {"--json"}, other->Tcti());
  EXPECT_EQ(as_json.code, kFailed) << as_json.output;
  const json result = Json(as_json);
  EXPECT_EQ(result["ok"], false) << result.dump();
  ASSERT_EQ(result["failures"].size(), 1u) << result.dump();
  EXPECT_NE(result["failures"][0].get<std::string>().find("another TPM"), std::string::npos) << result.dump();

  ToolResult list = Tpm("list", {}, other->Tcti());
  EXPECT_EQ(list.code, kFailed) << list.output;
  EXPECT_NE(list.output.find("another TPM"), std::string::npos) << list.output;
  EXPECT_EQ(Tpm("list", {"--json"}, other->Tcti()).code, kFailed);

  // A rotation there would leave a directory no TPM can load completely: refused, nothing written.
  ToolResult rotate = Tpm("rotate", {}, other->Tcti());
  EXPECT_EQ(rotate.code, kFailed) << rotate.output;
  EXPECT_NE(rotate.output.find("refusing to rotate"), std::string::npos) << rotate.output;
  json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["keys"][0]["key_id"], key_id);
  EXPECT_EQ(Tpm("selftest").code, kOk) << "still fine on its own TPM";
}

TEST_F(InitToolTpmTest, AMissingOrEmptyKeyDirectoryIsExplained) {
  const std::string missing = dir_.path() + "/no-such-dir";
  for (const char* command : {"list", "rotate", "selftest"}) {
    ToolResult r = Tpm(command, {}, "", missing);
    EXPECT_EQ(r.code, kUsage) << command << ": " << r.output;
    EXPECT_NE(r.output.find("the TPM key directory " + missing + " does not exist"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("tpm init"), std::string::npos) << r.output;
  }
  // init makes missing parents (/var/lib/trousseau-hsm on a fresh node), but cannot make one under a file.
  ToolResult no_parent = Tpm("init", {}, "", dir_.path() + "/no-such-parent/keys");
  EXPECT_EQ(no_parent.code, kOk) << no_parent.output;
  const std::string file = dir_.path() + "/a-file";
  std::ofstream(file) << "x";
  ToolResult under_file = Tpm("init", {}, "", file + "/keys");
  EXPECT_EQ(under_file.code, kUsage) << under_file.output;
  EXPECT_NE(under_file.output.find("Not a directory"), std::string::npos) << under_file.output;
  ToolResult not_dir = Tpm("list", {}, "", file);
  EXPECT_EQ(not_dir.code, kUsage) << not_dir.output;
  EXPECT_NE(not_dir.output.find("is not a directory"), std::string::npos) << not_dir.output;

  // An existing, empty directory: nothing to list (ok), nothing to rotate or test (refused).
  std::filesystem::create_directory(key_dir_);
  ToolResult list = Tpm("list");
  EXPECT_EQ(list.code, kOk) << list.output;
  EXPECT_NE(list.output.find("0 version(s); create version 1"), std::string::npos) << list.output;
  EXPECT_EQ(ListJson()["keys"], json::array());
  ToolResult rotate = Tpm("rotate");
  EXPECT_EQ(rotate.code, kFailed) << rotate.output;
  EXPECT_NE(rotate.output.find("holds no TPM keys yet; create version 1 with"), std::string::npos) << rotate.output;
  ToolResult selftest = Tpm("selftest");
  EXPECT_EQ(selftest.code, kFailed) << selftest.output;
  EXPECT_NE(selftest.output.find("holds no TPM keys"), std::string::npos) << selftest.output;
}

TEST_F(InitToolTpmTest, AnUnreachableTpmIsAClearFailure) {
  ASSERT_EQ(Tpm("init").code, kOk);
  const std::string tcti = tpm_->Tcti();
  tpm_->Kill();
  for (const char* command : {"list", "rotate", "selftest"}) {
    ToolResult r = Tpm(command, {}, tcti);
    EXPECT_EQ(r.code, kFailed) << command << ": " << r.output;
    EXPECT_NE(r.output.find("Is the TPM there and is --tpm-tcti right (" + tcti + ")?"), std::string::npos)
        << command << ": " << r.output;
    EXPECT_EQ(r.output.find("ERROR:tcti"), std::string::npos) << "tpm2-tss' own log lines: " << r.output;
  }
  ToolResult init = Tpm("init", {}, tcti, dir_.path() + "/other-keys");
  EXPECT_EQ(init.code, kFailed) << init.output;
  EXPECT_NE(init.output.find("--tpm-tcti"), std::string::npos) << init.output;

  ToolResult bogus = Tpm("list", {}, "no-such-tcti-module:x");
  EXPECT_EQ(bogus.code, kFailed) << bogus.output;
  EXPECT_NE(bogus.output.find("cannot open TCTI 'no-such-tcti-module:x'"), std::string::npos) << bogus.output;

  ToolResult device = Tpm("list", {}, "device:" + dir_.path() + "/no-such-tpm-device");
  EXPECT_EQ(device.code, kFailed) << device.output;
  EXPECT_NE(device.output.find("needs root or the tss group"), std::string::npos) << device.output;

  // Back up on the same state: everything works again, same key.
  ASSERT_TRUE(tpm_->Restart());
  EXPECT_EQ(Tpm("selftest").code, kOk);
  EXPECT_EQ(ListJson()["keys"].size(), 1u);
}

TEST_F(InitToolTpmTest, ProvisioningWhileTheBackendHoldsSwtpmsSlotsSaysWhy) {
  ASSERT_EQ(Tpm("init").code, kOk);
  // Like a running plugin on a TPM without resource manager: 2 of swtpm's 3 object slots taken.
  auto backend = *tpm::TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = key_dir_});
  ASSERT_TRUE(backend->LoadKeys().ok());
  ToolResult rotate = Tpm("rotate");
  EXPECT_EQ(rotate.code, kFailed) << rotate.output;
  EXPECT_NE(rotate.output.find("no free object slot"), std::string::npos) << rotate.output;
  EXPECT_NE(rotate.output.find("resource manager"), std::string::npos) << rotate.output;
  backend.reset();
  EXPECT_EQ(Tpm("rotate").code, kOk);
}

TEST_F(InitToolTpmTest, JsonOutputsParse) {
  ToolResult init = Tpm("init", {"--json"});
  ASSERT_EQ(init.code, kOk) << init.output;
  const json created = Json(init);
  EXPECT_EQ(created["version"], 1);
  EXPECT_TRUE(IsKeyId(created["key_id"].get<std::string>(), 1)) << created.dump();
  EXPECT_EQ(created["active"], true);
  EXPECT_EQ(created["scheme"], "aes-cfb-hmac");
  EXPECT_EQ(created["key_dir"], key_dir_);

  ToolResult rotate = Tpm("rotate", {"--json", "--scheme", "rsa-oaep"});
  ASSERT_EQ(rotate.code, kOk) << rotate.output;
  const json rotated = Json(rotate);
  EXPECT_EQ(rotated["version"], 2);
  EXPECT_TRUE(IsKeyId(rotated["key_id"].get<std::string>(), 2)) << rotated.dump();
  EXPECT_EQ(rotated["scheme"], "rsa-oaep");

  const json listed = ListJson();
  ASSERT_EQ(listed["keys"].size(), 2u);
  for (const json& key : listed["keys"]) {
    EXPECT_TRUE(key["version"].is_number_unsigned()) << key.dump();
    EXPECT_TRUE(key["key_id"].is_string()) << key.dump();
    EXPECT_TRUE(key["active"].is_boolean()) << key.dump();
    EXPECT_TRUE(key["scheme"].is_string()) << key.dump();
  }

  ToolResult selftest = Tpm("selftest", {"--json"});
  EXPECT_EQ(selftest.code, kOk) << selftest.output;
  EXPECT_EQ(Json(selftest)["ok"], true);
}

TEST_F(InitToolTpmTest, TctiAndKeyDirComeFromTheEnvironmentAndFlagsWin) {
  {
    ScopedEnv tcti("TROUSSEAU_HSM_TPM_TCTI", tpm_->Tcti());
    ScopedEnv key_dir("TROUSSEAU_HSM_TPM_KEY_DIR", key_dir_);
    ToolResult init = Run({"tpm", "init"});
    ASSERT_EQ(init.code, kOk) << init.output;
    ToolResult list = Run({"tpm", "list", "--json"});
    ASSERT_EQ(list.code, kOk) << list.output;
    EXPECT_EQ(Json(list)["keys"][0]["key_id"], PrintedKeyId(init.output));
  }
  {
    ScopedEnv tcti("TROUSSEAU_HSM_TPM_TCTI", "no-such-tcti-module:x");
    ScopedEnv key_dir("TROUSSEAU_HSM_TPM_KEY_DIR", dir_.path() + "/elsewhere");
    ToolResult list = Tpm("list");  // flags name the real TPM and directory
    EXPECT_EQ(list.code, kOk) << list.output;
  }
  // Neither flag nor environment: --tpm-key-dir is required; the TCTI defaults to the kernel's
  // resource manager.
  ToolResult none = Run({"tpm", "list"});
  EXPECT_EQ(none.code, kUsage) << none.output;
  EXPECT_NE(none.output.find("--tpm-key-dir"), std::string::npos) << none.output;
  ToolResult help = Run({"tpm", "list", "--help"});
  EXPECT_NE(help.output.find("device:/dev/tpmrm0"), std::string::npos) << help.output;
}

TEST_F(InitToolTpmTest, BadFlagsAreUsageErrors) {
  ToolResult scheme = Tpm("init", {"--scheme", "des"});
  EXPECT_EQ(scheme.code, kUsage) << scheme.output;
  EXPECT_FALSE(std::filesystem::exists(key_dir_)) << "nothing created on a usage error";
  ToolResult extra = Tpm("list", {"surplus-argument-value"});
  EXPECT_EQ(extra.code, kUsage) << extra.output;
  EXPECT_EQ(extra.output.find("surplus-argument-value"), std::string::npos) << "never echoed: it may be a secret";
  ToolResult no_command = Run({"tpm"});
  EXPECT_EQ(no_command.code, kUsage) << no_command.output;
  ToolResult blank = Run({"tpm", "list", "--tpm-tcti", "", "--tpm-key-dir", key_dir_});
  EXPECT_EQ(blank.code, kUsage) << blank.output;
  EXPECT_NE(blank.output.find("--tpm-tcti may not be empty"), std::string::npos) << blank.output;
}

TEST_F(InitToolTpmTest, HelpOfEverySubcommandExitsZero) {
  ToolResult tpm = Run({"tpm", "--help"});
  EXPECT_EQ(tpm.code, kOk) << tpm.output;
  for (const char* command : {"init", "rotate", "list", "selftest"}) {
    EXPECT_NE(tpm.output.find(command), std::string::npos) << tpm.output;
    ToolResult help = Run({"tpm", command, "--help"});
    EXPECT_EQ(help.code, kOk) << command << ": " << help.output;
    EXPECT_NE(help.output.find("--tpm-tcti"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("--tpm-key-dir"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("TROUSSEAU_HSM_TPM_KEY_DIR"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("--json"), std::string::npos) << help.output;
  }
  EXPECT_NE(Run({"tpm", "init", "--help"}).output.find("--scheme"), std::string::npos);
  EXPECT_NE(Run({"tpm", "rotate", "--help"}).output.find("SIGHUP"), std::string::npos);
  ToolResult top = Run({"--help"});
  EXPECT_EQ(top.code, kOk);
  EXPECT_NE(top.output.find("tpm"), std::string::npos) << top.output;
}

}  // namespace
}  // namespace trousseau
