// The trousseau-hsm binary as an operator runs it: flags, socket, signals, refusals, key refresh.
#include <gtest/gtest.h>
#include <thread>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/testing/kms_clients.h"
#include "tests/testing/softhsm_plugin_test.h"
#include "tests/testing/local_http.h"
#include "tests/testing/prometheus_text.h"
#include "tools/support/softhsm_token.h"
#include "tools/support/subprocess.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using support::Subprocess;
using testing::CallContext;
using testing::KmsClients;

class PluginProcessTest : public testing::SoftHsmPluginTest {
 protected:
  void SetUp() override {
    SoftHsmPluginTest::SetUp();
    if (HasFatalFailure()) return;
    socket_ = token_->dir() + "/run/kms.sock";
    // The socket's directory is the operator's to make (RuntimeDirectory=, a hostPath): the plugin does not.
    ASSERT_EQ(mkdir((token_->dir() + "/run").c_str(), 0700), 0);
    log_ = token_->dir() + "/plugin.log";
  }

  // The v2 Status the apiserver would see (no key_id if the plugin does not answer).
  v2::StatusResponse Status() { return SoftHsmPluginTest::Status(500ms); }

  bool Serving() { return Status().healthz() == "ok"; }

  std::string log_;
};

TEST_F(PluginProcessTest, ServesThenDrainsAndRemovesItsSocketOnSigterm) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = StartPlugin();
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  struct stat st {};
  ASSERT_EQ(stat(socket_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  plugin->Signal(SIGTERM);
  EXPECT_EQ(plugin->Wait(10s), 0) << plugin->Log();
  EXPECT_NE(access(socket_.c_str(), F_OK), 0) << "socket left behind";
}

// A field of /proc/PID/status ("Uid", "Gid", ...): the rest of its line; empty if absent.
std::string ProcStatusField(pid_t pid, const std::string& field) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind(field + ":", 0) == 0) return line.substr(field.size() + 1);
  }
  return "";
}

// Seeds are in its memory: a crash must not write them to a core file (RLIMIT_CORE 0, which a piped
// core_pattern ignores), and the process is not dumpable (PR_SET_DUMPABLE 0: no core even through a
// pipe, no ptrace attach or /proc/PID/mem read by same-user processes).
TEST_F(PluginProcessTest, NeverDumpsCore) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  // The kernel shows "not dumpable" as /proc/PID files owned by root instead of by the process's user:
  // visible only for a process that is not root. Run as root (CI), the plugin runs as nobody here.
  std::vector<std::string> argv = {PLUGIN_PATH, "--listen", "unix://" + socket_, "--pkcs11-uri", token_->Uri()};
  if (::geteuid() == 0) {
    constexpr uid_t kNobody = 65534;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(token_->dir())) {
      ASSERT_EQ(::lchown(entry.path().c_str(), kNobody, kNobody), 0) << entry.path();
    }
    ASSERT_EQ(::chown(token_->dir().c_str(), kNobody, kNobody), 0);
    argv.insert(argv.begin(), {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"});
  }
  auto plugin = std::make_unique<Subprocess>(argv, log_);
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  const std::string uids = ProcStatusField(plugin->pid(), "Uid");
  ASSERT_FALSE(uids.empty());
  ASSERT_NE(std::stoul(uids), 0u) << "the plugin must run as another user than root for this check: " << uids;
  struct stat environ {};
  ASSERT_EQ(::stat(("/proc/" + std::to_string(plugin->pid()) + "/environ").c_str(), &environ), 0);
  EXPECT_EQ(environ.st_uid, 0u) << "/proc/PID/environ is owned by the plugin's own user (Uid:" << uids
                                << "): the process is dumpable (no PR_SET_DUMPABLE 0)";

  std::ifstream limits("/proc/" + std::to_string(plugin->pid()) + "/limits");
  std::string line, core;
  while (std::getline(limits, line)) {
    if (line.rfind("Max core file size", 0) == 0) core = line;
  }
  ASSERT_FALSE(core.empty());
  std::istringstream fields(core.substr(sizeof("Max core file size") - 1));
  std::string soft, hard;
  fields >> soft >> hard;
  EXPECT_EQ(soft, "0") << core;
  EXPECT_EQ(hard, "0") << core;
}

TEST_F(PluginProcessTest, ReplacesAStaleSocketButNotALiveOne) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  {  // a socket file nobody listens on, as after a crash
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, socket_.c_str(), sizeof addr.sun_path - 1);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    close(fd);
  }
  auto first = StartPlugin();
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << first->Log();
  auto second = StartPlugin();
  EXPECT_EQ(second->Wait(10s), 2);
  EXPECT_NE(second->Log().find("another process is serving"), std::string::npos) << second->Log();
  EXPECT_TRUE(Serving());
}

TEST_F(PluginProcessTest, RefusesToStartWithAnExtractableKey) {
  ASSERT_TRUE(token_->GenerateUnsafeKey(1).ok());
  auto plugin = StartPlugin();
  EXPECT_EQ(plugin->Wait(10s), 2);
  EXPECT_NE(plugin->Log().find("extractable"), std::string::npos) << plugin->Log();
  EXPECT_NE(access(socket_.c_str(), F_OK), 0);
}

TEST_F(PluginProcessTest, RefusesAPinInTheUriWithoutPrintingIt) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin =
      StartPlugin({}, "pkcs11:token=" + token_->label() +
                          ";object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=" + support::kTestUserPin);
  EXPECT_EQ(plugin->Wait(10s), 2);
  EXPECT_NE(plugin->Log().find("pin-source"), std::string::npos) << plugin->Log();
  EXPECT_EQ(plugin->Log().find(support::kTestUserPin), std::string::npos);
}

TEST_F(PluginProcessTest, RefusesAWorldReadablePinFile) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  chmod(token_->pin_file().c_str(), 0644);
  auto plugin = StartPlugin();
  EXPECT_EQ(plugin->Wait(10s), 2);
  EXPECT_NE(plugin->Log().find("chmod 600"), std::string::npos) << plugin->Log();
}

TEST_F(PluginProcessTest, TakesThePinFromTheEnvironment) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  setenv("TROUSSEAU_HSM_PIN", support::kTestUserPin, 1);
  auto plugin =
      StartPlugin({}, "pkcs11:token=" + token_->label() + ";object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so");
  unsetenv("TROUSSEAU_HSM_PIN");
  EXPECT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
}

TEST_F(PluginProcessTest, LogsNeitherPinNorPlaintextEvenAtTraceLevel) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = StartPlugin({"--log-level", "trace"});
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  KmsClients clients(socket_);
  const std::string secret = "PLAINTEXT-MARKER-7f3a9c";
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext(secret);
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok());
  v2::DecryptRequest decrypt;
  decrypt.set_ciphertext(sealed.ciphertext());
  decrypt.set_key_id(sealed.key_id());
  v2::DecryptResponse opened;
  ASSERT_TRUE(clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok());
  decrypt.set_ciphertext("garbage");
  EXPECT_FALSE(clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok());
  plugin->Signal(SIGTERM);
  plugin->Wait(10s);
  const std::string log = plugin->Log();
  EXPECT_NE(log.find(sealed.key_id()), std::string::npos) << "request logging expected at trace level";
  EXPECT_EQ(log.find(secret), std::string::npos);
  EXPECT_EQ(log.find(support::kTestUserPin), std::string::npos);
}

TEST_F(PluginProcessTest, SighupMakesANewKeyVersionActiveAndOldCiphertextsStillDecrypt) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = StartPlugin({"--key-refresh-interval", "0"});
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  KmsClients clients(socket_);
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed-before-rotation");
  v2::EncryptResponse old_sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &old_sealed).ok());

  ASSERT_TRUE(token_->GenerateKek(2).ok());
  plugin->Signal(SIGHUP);
  std::string new_key;  // one Status answer judged, not two calls (either may time out on a busy host)
  ASSERT_TRUE(Eventually(
      [&] {
        new_key = Status().key_id();
        return !new_key.empty() && new_key != old_sealed.key_id();
      },
      5s))
      << plugin->Log();
  EXPECT_EQ(new_key.rfind("kek-v2-", 0), 0u) << new_key;
  v2::DecryptRequest decrypt;
  decrypt.set_ciphertext(old_sealed.ciphertext());
  decrypt.set_key_id(old_sealed.key_id());
  v2::DecryptResponse opened;
  ASSERT_TRUE(clients.v2->Decrypt(CallContext().get(), decrypt, &opened).ok());
  EXPECT_EQ(opened.plaintext(), "seed-before-rotation");
}

// Two `key rotate` runs at once each create the version they chose, and the loser destroys its key a
// moment later. A plugin refreshing in between must not start encrypting under that key: a new active
// version counts only once a second read, two seconds later, still shows it.
TEST_F(PluginProcessTest, ANewVersionThatVanishesAMomentLaterNeverBecomesActive) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  const int port = testing::FreeLoopbackPort();
  auto plugin = StartPlugin({"--key-refresh-interval", "0", "--health-listen", "127.0.0.1:" + std::to_string(port)});
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  const std::string v1 = Status().key_id();
  // Key family reads done (a histogram count): the first read of the refresh sees version 2, then the
  // plugin waits to read again.
  auto key_reads = [&] {
    return testing::MetricValue(
        testing::HttpGet(port, "/metrics").body,
        "trousseau_hsm_backend_call_duration_seconds_count{backend=\"pkcs11\",call=\"load_keys\"}");
  };
  const double reads_before = key_reads();
  ASSERT_GE(reads_before, 1) << "no key-read count on /metrics";

  ASSERT_TRUE(token_->GenerateKek(2).ok());
  plugin->Signal(SIGHUP);
  ASSERT_TRUE(Eventually([&] { return key_reads() >= reads_before + 1; }, 5s)) << plugin->Log();
  ASSERT_TRUE(token_->DestroyKey(2).ok());
  // Until the second read has decided (its log line), and after, the key_id never moves to version 2.
  bool switched = false;
  const bool decided = Eventually(
      [&] {
        switched |= Status().key_id() != v1;
        return plugin->Log().find("did not stay") != std::string::npos;
      },
      6s);
  EXPECT_TRUE(decided) << plugin->Log();
  EXPECT_FALSE(switched) << plugin->Log();
  EXPECT_EQ(Status().key_id(), v1);
  KmsClients clients(socket_);
  v2::EncryptRequest encrypt;
  encrypt.set_plaintext("seed");
  v2::EncryptResponse sealed;
  ASSERT_TRUE(clients.v2->Encrypt(CallContext().get(), encrypt, &sealed).ok()) << plugin->Log();
  EXPECT_EQ(sealed.key_id(), v1);

  ASSERT_TRUE(token_->GenerateKek(2).ok());  // a version that stays becomes active after the second read
  plugin->Signal(SIGHUP);
  EXPECT_TRUE(Eventually([&] { return Status().key_id().rfind("kek-v2-", 0) == 0; }, 6s)) << plugin->Log();
}

TEST_F(PluginProcessTest, PicksUpANewKeyVersionByItselfOnTheRefreshInterval) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto plugin = StartPlugin({"--key-refresh-interval", "200ms"});
  ASSERT_TRUE(Eventually([&] { return Serving(); }, 5s)) << plugin->Log();
  const std::string before = Status().key_id();
  ASSERT_TRUE(token_->GenerateKek(2).ok());
  EXPECT_TRUE(Eventually([&] { return Status().key_id().rfind("kek-v2-", 0) == 0; }, 5s)) << plugin->Log();
  EXPECT_NE(Status().key_id(), before);
}

TEST_F(PluginProcessTest, RejectsAnAbstractOrRelativeSocket) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  auto abstract = std::make_unique<Subprocess>(
      std::vector<std::string>{PLUGIN_PATH, "--listen", "unix:///@kms", "--pkcs11-uri", token_->Uri()}, log_);
  EXPECT_EQ(abstract->Wait(10s), 2);
  EXPECT_NE(abstract->Log().find("abstract"), std::string::npos) << abstract->Log();

  // A relative path would land wherever the process happens to start (kube-apiserver could not find it).
  for (const std::string relative : {"unix:kms-relative.sock", "unix://run/kms-relative.sock", "kms-relative.sock"}) {
    const std::string log = token_->dir() + "/relative.log";
    auto plugin = std::make_unique<Subprocess>(
        std::vector<std::string>{PLUGIN_PATH, "--listen", relative, "--pkcs11-uri", token_->Uri()}, log);
    EXPECT_EQ(plugin->Wait(10s), 2) << relative << "\n" << plugin->Log();
    EXPECT_NE(plugin->Log().find("absolute"), std::string::npos) << relative << "\n" << plugin->Log();
    std::filesystem::remove(log);
  }
  EXPECT_FALSE(std::filesystem::exists("kms-relative.sock"));
  EXPECT_FALSE(std::filesystem::exists("run/kms-relative.sock"));
}

// Every usage error is exit 2, which the systemd unit (RestartPreventExitStatus=2) does not retry.
TEST_F(PluginProcessTest, EveryUsageErrorExitsTwoAndAStrayArgumentIsNeverEchoed) {
  ASSERT_TRUE(token_->GenerateKek(1).ok());
  const std::vector<std::vector<std::string>> usage_errors = {
      {"--pin", "s3cr3t-pin-value"},               // no such flag: a PIN never goes on the command line
      {"s3cr3t-pin-value"},                        // a stray positional
      {"--log-level", "chatty"},                   // not one of the levels
      {"--hsm-sessions", "0"},                     // out of range
      {"--health-cache", "soon"},                  // not a duration
      {"--tpm-key-dir", token_->dir() + "/keys"},  // two backends at once
  };
  for (const auto& extra : usage_errors) {
    auto plugin = StartPlugin(extra);
    EXPECT_EQ(plugin->Wait(10s), 2) << extra[0] << "\n" << plugin->Log();
    EXPECT_EQ(plugin->Log().find("s3cr3t-pin-value"), std::string::npos) << plugin->Log();
  }
  setenv("TROUSSEAU_HSM_HEALTH_CACHE", "soon", 1);
  auto from_env = StartPlugin();
  unsetenv("TROUSSEAU_HSM_HEALTH_CACHE");
  EXPECT_EQ(from_env->Wait(10s), 2) << from_env->Log();
  auto no_backend =
      std::make_unique<Subprocess>(std::vector<std::string>{PLUGIN_PATH, "--listen", "unix://" + socket_}, log_);
  EXPECT_EQ(no_backend->Wait(10s), 2);
  EXPECT_NE(no_backend->Log().find("exactly one backend"), std::string::npos) << no_backend->Log();
}

}  // namespace
}  // namespace trousseau
