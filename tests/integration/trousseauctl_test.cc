// trousseauctl as an operator uses it, against a running trousseau-hsm on a real SoftHSM token: status
// (text, --json, exit 3 when unhealthy), encrypt/decrypt round trips over KMS v2 and v1beta1 with the data on
// stdin (never argv), and clear errors for a missing socket or bad input.
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tools/support/fault_shim_control.h"
#include "tests/testing/kms_clients.h"
#include "tests/testing/local_http.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using support::Eventually;
using support::Subprocess;
using testing::CallContext;
using testing::KmsClients;

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Base64Decode(std::string in) {
  std::erase_if(in, [](char c) { return c == '\n' || c == '\r'; });
  std::string out(3 * in.size() / 4 + 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return "<not base64>";
  size_t padding = 0;
  if (!in.empty() && in.back() == '=') ++padding;
  if (in.size() > 1 && in[in.size() - 2] == '=') ++padding;
  out.resize(static_cast<size_t>(n) - padding);
  return out;
}

struct CtlResult {
  int code = -1;
  std::string out;
  std::string err;
};

// Bytes that a shell or a naive reader would mangle: NUL, newlines, quotes, high bytes.
constexpr char kAwkward[] = "seed\0with\nNUL 'and' \"quotes\" \xff\xfe end\n";
const std::string kAwkwardPlaintext(kAwkward, sizeof kAwkward - 1);

class TrousseauctlTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(token_->GenerateKek(1).ok());
  }

  void StartPlugin(const std::string& module = support::kSoftHsmModule) {
    plugin_ = SoftHsmPluginTest::StartPlugin({"--health-cache", "100ms"}, token_->Uri("kek", module));
    ASSERT_TRUE(Eventually([&] { return GrpcStatus().healthz() == "ok"; }, 10s)) << plugin_->Log();
  }

  v2::StatusResponse GrpcStatus() { return Status(); }

  // Runs trousseauctl with `args`; `input` is its stdin (through a file, so any bytes go through), stdout
  // and stderr are kept apart.
  CtlResult Ctl(const std::vector<std::string>& args, const std::string& input = "") {
    const std::string base = token_->dir() + "/ctl" + std::to_string(++calls_);
    std::ofstream(base + ".in", std::ios::binary) << input;
    std::string command = "exec " + ShellQuote(CTL_PATH);
    for (const std::string& a : args) command += " " + ShellQuote(a);
    command +=
        " < " + ShellQuote(base + ".in") + " > " + ShellQuote(base + ".out") + " 2> " + ShellQuote(base + ".err");
    Subprocess ctl({"/bin/sh", "-c", command}, base + ".log");
    CtlResult result;
    result.code = ctl.Wait(30s).value_or(-1);
    result.out = ReadFile(base + ".out");
    result.err = ReadFile(base + ".err");
    return result;
  }

  std::vector<std::string> WithSocket(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket", "unix://" + socket_});
    return args;
  }

  std::unique_ptr<Subprocess> plugin_;
  int calls_ = 0;
};

TEST_F(TrousseauctlTest, StatusPrintsHealthAndTheActiveKeyId) {
  StartPlugin();
  const std::string key_id = GrpcStatus().key_id();
  ASSERT_EQ(key_id.rfind("kek-v1-", 0), 0u);
  const CtlResult r = Ctl(WithSocket({"status"}));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("healthz: ok"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("version: v2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("key_id:  " + key_id + "\n"), std::string::npos) << r.out;
}

// A plugin with a metrics port of its own serves /metrics only there: status lists its key versions from
// that address, and says where to look when given the health port instead.
TEST_F(TrousseauctlTest, StatusReadsKeyVersionsFromThePluginsMetricsListen) {
  const int health = testing::FreeLoopbackPort(), metrics = testing::FreeLoopbackPort();
  plugin_ = SoftHsmPluginTest::StartPlugin({"--health-listen", "127.0.0.1:" + std::to_string(health),
                                            "--metrics-listen", "127.0.0.1:" + std::to_string(metrics)},
                                           token_->Uri("kek"));
  ASSERT_TRUE(Eventually([&] { return GrpcStatus().healthz() == "ok"; }, 10s)) << plugin_->Log();
  const std::string key_id = GrpcStatus().key_id();
  const CtlResult listed = Ctl(WithSocket({"status", "--metrics-listen", "127.0.0.1:" + std::to_string(metrics)}));
  EXPECT_EQ(listed.code, 0) << listed.out << listed.err;
  EXPECT_NE(listed.out.find("key active:       " + key_id + " (version 1)"), std::string::npos) << listed.out;
  const CtlResult health_port = Ctl(WithSocket({"status", "--health-listen", "127.0.0.1:" + std::to_string(health)}));
  EXPECT_EQ(health_port.code, 0) << "the KMS Status decides the exit code";
  EXPECT_NE(health_port.out.find("serves /metrics there only"), std::string::npos) << health_port.out;
}

TEST_F(TrousseauctlTest, StatusJsonParsesWithTheFieldsOfTheV2Status) {
  StartPlugin();
  const CtlResult r = Ctl(WithSocket({"--json", "status"}));
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  json status;
  ASSERT_NO_THROW(status = json::parse(r.out)) << r.out;
  EXPECT_EQ(status["healthy"], true);
  EXPECT_EQ(status["version"], "v2");
  EXPECT_EQ(status["healthz"], "ok");
  EXPECT_EQ(status["key_id"], GrpcStatus().key_id());

  const CtlResult v1 = Ctl(WithSocket({"--api", "v1beta1", "--json", "status"}));
  ASSERT_EQ(v1.code, 0) << v1.out << v1.err;
  json version;
  ASSERT_NO_THROW(version = json::parse(v1.out)) << v1.out;
  EXPECT_EQ(version["version"], "v1beta1");
  EXPECT_EQ(version["runtime_name"], "trousseau-hsm");
  EXPECT_FALSE(version["runtime_version"].get<std::string>().empty());
  EXPECT_EQ(version["healthy"], true) << "checked with an Encrypt and Decrypt, as kube-apiserver checks KMS v1";
  EXPECT_EQ(version["healthz"], "ok");
}

TEST_F(TrousseauctlTest, V2EncryptThenDecryptGivesTheSameBytesBack) {
  StartPlugin();
  const CtlResult sealed = Ctl(WithSocket({"encrypt"}), kAwkwardPlaintext);
  ASSERT_EQ(sealed.code, 0) << sealed.err;
  // stdout: base64 ciphertext only; stderr: the key_id.
  ASSERT_EQ(sealed.out.back(), '\n');
  const std::string ciphertext_b64 = sealed.out.substr(0, sealed.out.size() - 1);
  EXPECT_EQ(ciphertext_b64.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
            std::string::npos);
  EXPECT_EQ(sealed.out.find("seed"), std::string::npos) << "plaintext on stdout";
  const std::string key_id = GrpcStatus().key_id();
  ASSERT_EQ(sealed.err, "key_id: " + key_id + "\n");

  // What trousseauctl printed is the plugin's real envelope: it opens with a direct gRPC Decrypt too.
  KmsClients clients(socket_);
  v2::DecryptRequest request;
  request.set_ciphertext(Base64Decode(ciphertext_b64));
  request.set_key_id(key_id);
  v2::DecryptResponse response;
  ASSERT_TRUE(clients.v2->Decrypt(CallContext().get(), request, &response).ok());
  EXPECT_EQ(response.plaintext(), kAwkwardPlaintext);

  const CtlResult opened = Ctl(WithSocket({"decrypt", "--key-id", key_id}), sealed.out);
  ASSERT_EQ(opened.code, 0) << opened.err;
  EXPECT_EQ(opened.out, kAwkwardPlaintext);
}

TEST_F(TrousseauctlTest, V2JsonEncryptAndDecrypt) {
  StartPlugin();
  const CtlResult sealed = Ctl(WithSocket({"--json", "encrypt"}), kAwkwardPlaintext);
  ASSERT_EQ(sealed.code, 0) << sealed.err;
  json s;
  ASSERT_NO_THROW(s = json::parse(sealed.out)) << sealed.out;
  EXPECT_EQ(s["key_id"], GrpcStatus().key_id());
  const std::string ciphertext = s["ciphertext"];
  const CtlResult opened =
      Ctl(WithSocket({"--json", "decrypt", "--key-id", s["key_id"].get<std::string>()}), ciphertext);
  ASSERT_EQ(opened.code, 0) << opened.err;
  json o;
  ASSERT_NO_THROW(o = json::parse(opened.out)) << opened.out;
  EXPECT_EQ(Base64Decode(o["plaintext"]), kAwkwardPlaintext);
}

TEST_F(TrousseauctlTest, V1beta1EncryptThenDecryptGivesTheSameBytesBack) {
  StartPlugin();
  const CtlResult sealed = Ctl(WithSocket({"--api", "v1beta1", "encrypt"}), kAwkwardPlaintext);
  ASSERT_EQ(sealed.code, 0) << sealed.err;
  EXPECT_EQ(sealed.err, "") << "v1beta1 has no key_id";
  // A v1beta1 ciphertext opens through v1beta1 without a key_id...
  const CtlResult opened = Ctl(WithSocket({"--api", "v1beta1", "decrypt"}), sealed.out);
  ASSERT_EQ(opened.code, 0) << opened.err;
  EXPECT_EQ(opened.out, kAwkwardPlaintext);
  // ...and v2 needs one.
  const CtlResult no_key_id = Ctl(WithSocket({"decrypt"}), sealed.out);
  EXPECT_EQ(no_key_id.code, 2);
  EXPECT_NE(no_key_id.err.find("--key-id"), std::string::npos) << no_key_id.err;
}

TEST_F(TrousseauctlTest, DataIsNeverTakenFromArgv) {
  StartPlugin();
  const CtlResult r = Ctl(WithSocket({"encrypt", "secret-from-argv"}), "");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.out, "") << "nothing may be encrypted from an argument";
  EXPECT_EQ(r.err.find("secret-from-argv"), std::string::npos) << "a stray argument is never echoed: " << r.err;
  // The data flag of other tools does not exist here either.
  const CtlResult flag = Ctl(WithSocket({"encrypt", "--data", "secret-from-argv"}), "");
  EXPECT_EQ(flag.code, 2);
  EXPECT_EQ(flag.out, "");
  EXPECT_EQ(flag.err.find("secret-from-argv"), std::string::npos) << flag.err;
}

TEST_F(TrousseauctlTest, GlobalOptionsMayFollowTheSubcommand) {
  StartPlugin();
  const CtlResult status = Ctl({"status", "--socket", "unix://" + socket_, "--json", "--timeout", "2"}, "");
  ASSERT_EQ(status.code, 0) << status.err;
  EXPECT_TRUE(json::parse(status.out).at("healthy").get<bool>()) << status.out;
  const CtlResult bad_timeout = Ctl({"status", "--socket", "unix://" + socket_, "--timeout", "soon"}, "");
  EXPECT_EQ(bad_timeout.code, 2) << "a bad timeout is a usage error, not a crash";
}

TEST_F(TrousseauctlTest, BadInputFailsWithAClearError) {
  StartPlugin();
  const std::string key_id = GrpcStatus().key_id();
  const CtlResult not_base64 = Ctl(WithSocket({"decrypt", "--key-id", key_id}), "this is not base64!\n");
  EXPECT_EQ(not_base64.code, 2);
  EXPECT_NE(not_base64.err.find("not base64"), std::string::npos) << not_base64.err;

  // A valid encoding of a forged envelope: the plugin's INVALID_ARGUMENT (code 3) is reported, exit 1.
  const CtlResult sealed = Ctl(WithSocket({"encrypt"}), "seed");
  ASSERT_EQ(sealed.code, 0);
  std::string forged = Base64Decode(sealed.out);
  forged.back() ^= 1;
  std::string forged_b64(4 * ((forged.size() + 2) / 3) + 1, '\0');
  forged_b64.resize(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(forged_b64.data()),
                                    reinterpret_cast<const unsigned char*>(forged.data()),
                                    static_cast<int>(forged.size())));
  const CtlResult tampered = Ctl(WithSocket({"decrypt", "--key-id", key_id}), forged_b64);
  EXPECT_EQ(tampered.code, 1);
  EXPECT_EQ(tampered.out, "");
  EXPECT_EQ(tampered.err.rfind("error: the plugin answered INVALID_ARGUMENT (3): ", 0), 0u) << tampered.err;

  const CtlResult empty = Ctl(WithSocket({"encrypt"}), "");
  EXPECT_EQ(empty.code, 1) << "the plugin refuses empty plaintext";
  EXPECT_EQ(empty.err.rfind("error: the plugin answered INVALID_ARGUMENT (3): ", 0), 0u) << empty.err;
}

// As the plugin's --listen takes it, a bare path is a unix socket (gRPC alone would look it up in DNS), and
// --timeout takes the plugin's duration syntax.
TEST_F(TrousseauctlTest, ABareSocketPathAndADurationWork) {
  StartPlugin();
  const CtlResult r = Ctl({"--socket", socket_, "--timeout", "2s", "status"});
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("healthz: ok"), std::string::npos) << r.out;
  EXPECT_EQ(Ctl({"--socket", socket_, "--timeout", "1500ms", "status"}).code, 0);
  const CtlResult bad = Ctl({"--socket", socket_, "--timeout", "soon", "status"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("must be a duration such as 3s"), std::string::npos) << bad.err;
}

TEST_F(TrousseauctlTest, AMistypedCommandIsNamedWithTheNearestOneAndVersionWorks) {
  const CtlResult typo = Ctl({"statsu"});
  EXPECT_EQ(typo.code, 2);
  EXPECT_NE(typo.err.find("unknown command 'statsu' for 'trousseauctl'; did you mean 'status'?"), std::string::npos)
      << typo.err;
  const CtlResult unlike = Ctl({"hunter2-my-password"});
  EXPECT_EQ(unlike.code, 2);
  EXPECT_EQ(unlike.err.find("hunter2"), std::string::npos) << "a word unlike any command is never echoed";
  EXPECT_NE(unlike.err.find("the commands are: status, encrypt, decrypt"), std::string::npos) << unlike.err;
  const CtlResult version = Ctl({"--version"});
  EXPECT_EQ(version.code, 0) << version.err;
  EXPECT_EQ(version.out.rfind("trousseauctl ", 0), 0u) << version.out;
}

TEST_F(TrousseauctlTest, MissingSocketIsAClearErrorNotAHang) {
  const std::string missing = token_->dir() + "/no-such.sock";
  const auto start = std::chrono::steady_clock::now();
  const CtlResult r = Ctl({"--socket", "unix://" + missing, "status"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.code, 3) << "3 means a plugin answered unhealthy";
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(r.err.find(missing), std::string::npos) << "the error names the socket: " << r.err;
  EXPECT_NE(r.err.find("No such file or directory"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("Is trousseau-hsm running, and is this its --listen socket?"), std::string::npos) << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);

  const CtlResult encrypt = Ctl({"--socket", "unix://" + missing, "encrypt"}, "seed");
  EXPECT_NE(encrypt.code, 0);
  EXPECT_EQ(encrypt.out, "");
}

// An HSM outage (the fault shim drops the "link"): Status answers, unhealthy, and trousseauctl exits 3; once
// the link is back it exits 0 again.
TEST_F(TrousseauctlTest, StatusExitsThreeWhileTheHsmIsDown) {
  const std::string control = token_->dir() + "/shim.control";
  auto set_link = [&](const std::string& state) { support::WriteShimControl(control, state); };
  set_link("up");
  setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control.c_str(), 1);
  setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
  StartPlugin(FAULT_SHIM_PATH);
  ASSERT_EQ(Ctl(WithSocket({"status"})).code, 0);

  set_link("down");
  CtlResult down;
  EXPECT_TRUE(Eventually([&] { return (down = Ctl(WithSocket({"status"}))).code == 3; }, 10s))
      << down.code << "\n"
      << down.out << down.err << plugin_->Log();
  EXPECT_EQ(down.out.find("healthz: ok"), std::string::npos) << down.out;
  EXPECT_NE(down.out.find("key_id:  kek-v1-"), std::string::npos) << "the key_id is still reported: " << down.out;
  const CtlResult json_down = Ctl(WithSocket({"--json", "status"}));
  EXPECT_EQ(json_down.code, 3);
  json j;
  ASSERT_NO_THROW(j = json::parse(json_down.out)) << json_down.out;
  EXPECT_EQ(j["healthy"], false);
  EXPECT_NE(j["healthz"], "ok");
  // Encrypting fails while the device is away (UNAVAILABLE = 14), and says so.
  const CtlResult encrypt = Ctl(WithSocket({"encrypt"}), "seed");
  EXPECT_EQ(encrypt.code, 1);
  EXPECT_EQ(encrypt.err.rfind("error: the plugin answered UNAVAILABLE (14): ", 0), 0u) << encrypt.err;
  // The v1beta1 API has no health field: its status is an Encrypt and Decrypt, which fail now.
  const CtlResult v1_down = Ctl(WithSocket({"--api", "v1beta1", "status"}));
  EXPECT_EQ(v1_down.code, 3) << v1_down.out << v1_down.err;
  EXPECT_NE(v1_down.out.find("healthz: Encrypt failed: "), std::string::npos) << v1_down.out;

  set_link("up");
  EXPECT_TRUE(Eventually([&] { return Ctl(WithSocket({"status"})).code == 0; }, 15s)) << plugin_->Log();
  unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
  unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
}

// The plaintext trousseauctl reads and prints must not reach a core file or another process of the
// same user: started as user nobody and held in its read of stdin (a pipe nobody writes yet), its
// /proc/PID files belong to root (non-dumpable: no ptrace, no /proc/PID/mem) and RLIMIT_CORE is 0.
// Those files belong to the process's own user when it is dumpable (proc(5)).
TEST_F(TrousseauctlTest, CannotBeTracedAndDumpsNoCore) {
  ASSERT_EQ(geteuid(), 0u) << "this test starts trousseauctl as another user";
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC), 0);
  const std::string ctl = CTL_PATH, socket_arg = "unix://" + socket_;
  std::vector<char*> args{const_cast<char*>(ctl.c_str()), const_cast<char*>("--socket"),
                          const_cast<char*>(socket_arg.c_str()), const_cast<char*>("encrypt"), nullptr};
  char* envp[] = {const_cast<char*>("PATH=/usr/bin:/bin"), nullptr};
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    dup2(pipe_fds[0], 0);
    dup2(null, 1);
    dup2(null, 2);
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(126);
    execve(args[0], args.data(), envp);
    _exit(127);
  }
  ASSERT_GT(pid, 0);
  close(pipe_fds[0]);
  const std::string proc = "/proc/" + std::to_string(pid);
  char resolved[PATH_MAX] = {};
  ASSERT_NE(realpath(CTL_PATH, resolved), nullptr);
  const bool reading = Eventually(
      [&] {
        char exe[PATH_MAX] = {};
        return readlink((proc + "/exe").c_str(), exe, sizeof exe - 1) > 0 && std::string(exe) == resolved &&
               ReadFile(proc + "/wchan").find("pipe_read") != std::string::npos;
      },
      10s);
  struct stat environ_stat {};
  const int stat_rc = stat((proc + "/environ").c_str(), &environ_stat);
  std::string core;
  {
    std::istringstream limits(ReadFile(proc + "/limits"));
    for (std::string line; std::getline(limits, line);) {
      if (line.rfind("Max core file size", 0) == 0) {
        std::istringstream fields(line.substr(sizeof("Max core file size") - 1));
        std::string soft, hard;
        fields >> soft >> hard;
        core = soft + " " + hard;
      }
    }
  }
  close(pipe_fds[1]);  // end of its stdin: it goes on (and fails to connect: no plugin runs)
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);

  ASSERT_TRUE(reading) << "trousseauctl never blocked reading stdin";
  ASSERT_EQ(stat_rc, 0);
  EXPECT_EQ(environ_stat.st_uid, 0u) << "trousseauctl is dumpable: its /proc/PID files belong to its user";
  EXPECT_EQ(core, "0 0");
}

// The plugin's request log with a caller's uid of 100 KiB full of newlines and fake fields (issue 19):
// the record stays one capped line, and no forged record appears.
TEST_F(TrousseauctlTest, APluginLogRecordKeepsAHugeMultiLineUidOnOneCappedLine) {
  StartPlugin();
  std::string uid;
  while (uid.size() < 100 * 1024) uid += "x\n2026-01-01T00:00:00.000000Z info forged-record key_id=forged ";
  KmsClients clients(socket_);
  v2::EncryptRequest request;
  request.set_plaintext("seed");
  request.set_uid(uid);
  v2::EncryptResponse response;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), request, &response).ok()) << plugin_->Log();
  std::string record;
  ASSERT_TRUE(Eventually(
      [&] {
        std::istringstream log(plugin_->Log());
        for (std::string line; std::getline(log, line);) {
          if (line.find(" v2 Encrypt ") != std::string::npos || line.find(" v2 Encrypt\n") != std::string::npos ||
              line.find("operation=Encrypt") != std::string::npos) {
            record = line;
          }
        }
        return !record.empty();
      },
      5s))
      << plugin_->Log();
  EXPECT_LT(record.size(), 1024u) << record.substr(0, 2048);
  EXPECT_NE(record.find("...[truncated, " + std::to_string(uid.size()) + " bytes]"), std::string::npos) << record;
  EXPECT_EQ(plugin_->Log().find("\n2026-01-01T00:00:00.000000Z info forged-record"), std::string::npos)
      << "a forged record starts a line of the plugin's log";
}

}  // namespace
}  // namespace trousseau
