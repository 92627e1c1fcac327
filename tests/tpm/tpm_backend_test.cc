// The TPM 2.0 backend against a real swtpm: what it promises, as tests.
#include "tpm/tpm_backend.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <tss2/tss2_tpm2_types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>
#include <tuple>

#include "tests/tpm/swtpm_test.h"
#include "tpm/provisioning.h"

namespace trousseau::tpm {
namespace {

using support::Eventually;
using testing::Swtpm;
using testing::TempDir;

class TpmBackendTest : public testing::SwtpmTest {
 protected:
  TpmConfig Config() const { return {tpm_->Tcti(), key_dir_}; }

  void InitKeys() {
    StatusOr<TpmKeyInfo> v1 = InitKeyDir(Config(), "kek");
    ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  }

  std::unique_ptr<TpmBackend> NewBackend(TpmBackendOptions options = {}) {
    options.tcti = tpm_->Tcti();
    if (options.key_dir.empty()) options.key_dir = key_dir_;
    StatusOr<std::unique_ptr<TpmBackend>> backend = TpmBackend::Create(options);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return *std::move(backend);
  }

  std::unique_ptr<TpmBackend> LoadedBackend(TpmBackendOptions options = {}) {
    auto backend = NewBackend(options);
    StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
    EXPECT_TRUE(keys.ok()) << keys.status().ToString();
    return backend;
  }
};

TEST_F(TpmBackendTest, SealsAndOpensEveryPlaintextSizeTheApiserverCanSend) {
  InitKeys();
  auto backend = NewBackend();
  EXPECT_EQ(backend->Kind(), "tpm2");
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].version, 1u);
  EXPECT_EQ((*keys)[0].fingerprint.size(), 16u);
  EXPECT_EQ(backend->SealOverhead(), 48u);

  for (size_t size = 1; size <= 985; ++size) {
    std::string plaintext(size, '\0');
    for (size_t i = 0; i < size; ++i) plaintext[i] = static_cast<char>(i * 31 + size);
    StatusOr<std::string> sealed = backend->Seal(1, plaintext, "header");
    ASSERT_TRUE(sealed.ok()) << size << ": " << sealed.status().ToString();
    ASSERT_EQ(sealed->size(), size + backend->SealOverhead());
    StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "header");
    ASSERT_TRUE(opened.ok()) << size << ": " << opened.status().ToString();
    ASSERT_EQ(opened->view(), plaintext) << size;
  }
}

TEST_F(TpmBackendTest, LargePlaintextsAreChunkedThroughTheTpmBuffer) {
  InitKeys();
  auto backend = LoadedBackend();
  for (size_t size : {1023u, 1024u, 1025u, 4096u, 65535u}) {
    std::string plaintext(size, 'x');
    for (size_t i = 0; i < size; ++i) plaintext[i] = static_cast<char>(i * 7);
    StatusOr<std::string> sealed = backend->Seal(1, plaintext, "");
    ASSERT_TRUE(sealed.ok()) << size << ": " << sealed.status().ToString();
    StatusOr<SecureBytes> opened = backend->Open(1, *sealed, "");
    ASSERT_TRUE(opened.ok()) << size << ": " << opened.status().ToString();
    EXPECT_EQ(opened->view(), plaintext) << size;
  }
}

TEST_F(TpmBackendTest, SameInputSealsDifferentlyEachTimeAndNeverShowsThePlaintext) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string seed(32, '\x5a');
  const std::string a = *backend->Seal(1, seed, "");
  const std::string b = *backend->Seal(1, seed, "");
  EXPECT_NE(a, b);
  EXPECT_NE(a.substr(0, 16), b.substr(0, 16)) << "fresh random IV per seal";
  EXPECT_EQ(a.find(seed), std::string::npos);
}

TEST_F(TpmBackendTest, TamperingWithAnyPartFailsAuthenticationAsInvalidArgument) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string aad = "TH\x01\x00\x00\x00\x00\x00\x00\x00\x01";
  const std::string sealed = *backend->Seal(1, "0123456789abcdef0123456789abcdef", aad);
  ASSERT_EQ(sealed.size(), 16u + 32u + 32u);
  // Every byte: IV (0..15), ciphertext (16..47), MAC (48..79).
  for (size_t i = 0; i < sealed.size(); ++i) {
    std::string tampered = sealed;
    tampered[i] ^= 0x80;
    Status s = backend->Open(1, tampered, aad).status();
    ASSERT_TRUE(IsInvalidArgument(s)) << "byte " << i << ": " << s.ToString();
  }
  std::string other_aad = aad;
  other_aad.back() = '\x02';
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, other_aad).status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, "").status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed, aad + "x").status()));
  // Moving bytes between the aad and the ciphertext changes the encoded lengths.
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed.substr(0, sealed.size() - 1), aad).status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed + "x", aad).status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, sealed.substr(0, 47), aad).status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, "", aad).status()));
  // A MAC-only forgery of an empty message.
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, std::string(48, '\0'), aad).status()));
  // Forgeries leave the device healthy.
  EXPECT_TRUE(backend->Probe(1).ok());
  EXPECT_EQ(backend->Open(1, sealed, aad)->view(), "0123456789abcdef0123456789abcdef");
}

TEST_F(TpmBackendTest, UnknownVersionIsNotFound) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string sealed = *backend->Seal(1, "seed", "");
  EXPECT_TRUE(IsNotFound(backend->Seal(2, "seed", "").status()));
  EXPECT_TRUE(IsNotFound(backend->Open(2, sealed, "").status()));
  EXPECT_TRUE(IsNotFound(backend->Open(0, sealed, "").status()));
  EXPECT_TRUE(IsNotFound(backend->Probe(7)));
}

TEST_F(TpmBackendTest, BeforeLoadKeysNoVersionIsKnown) {
  InitKeys();
  auto backend = NewBackend();
  EXPECT_TRUE(IsNotFound(backend->Seal(1, "seed", "").status()));
}

TEST_F(TpmBackendTest, RotationAddsAVersionThatEncryptsWhileOldOnesStillDecrypt) {
  InitKeys();
  std::string by_v1;
  std::string v1_fingerprint;
  {
    auto backend = NewBackend();
    v1_fingerprint = (*backend->LoadKeys())[0].fingerprint;
    by_v1 = *backend->Seal(1, "seed one", "aad");
  }  // without a resource manager (swtpm) provisioning runs while the plugin holds no objects
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
  StatusOr<TpmKeyInfo> v3 = RotateKey(Config(), "kek");
  ASSERT_TRUE(v3.ok()) << v3.status().ToString();
  EXPECT_EQ(v3->version, 3u);

  auto backend = NewBackend();
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 3u);
  EXPECT_EQ((*keys)[0].fingerprint, v1_fingerprint);
  EXPECT_NE((*keys)[0].fingerprint, (*keys)[1].fingerprint);
  EXPECT_NE((*keys)[1].fingerprint, (*keys)[2].fingerprint);
  EXPECT_EQ((*keys)[1].fingerprint, v2->fingerprint);

  const std::string by_v3 = *backend->Seal(3, "seed three", "aad");
  const std::string by_v2 = *backend->Seal(2, "seed two", "aad");
  // Interleaved use of every version: only one version's objects fit the TPM at a time, so each
  // switch flushes and reloads; none of that shows.
  for (int round = 0; round < 3; ++round) {
    EXPECT_EQ(backend->Open(1, by_v1, "aad")->view(), "seed one");
    EXPECT_EQ(backend->Open(3, by_v3, "aad")->view(), "seed three");
    EXPECT_EQ(backend->Open(2, by_v2, "aad")->view(), "seed two");
  }
  // A ciphertext only opens under its own version.
  EXPECT_TRUE(IsInvalidArgument(backend->Open(3, by_v1, "aad").status()));
  EXPECT_TRUE(IsInvalidArgument(backend->Open(1, by_v3, "aad").status()));
}

TEST_F(TpmBackendTest, RestartedBackendOnTheSameKeyDirHasTheSameFingerprintsAndOpensOldCiphertexts) {
  InitKeys();
  std::vector<BackendKey> first;
  std::string sealed;
  {
    auto backend = NewBackend();
    first = *backend->LoadKeys();
    sealed = *backend->Seal(1, "seed", "aad");
  }
  auto backend = NewBackend();
  StatusOr<std::vector<BackendKey>> again = backend->LoadKeys();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  ASSERT_EQ(again->size(), 1u);
  EXPECT_EQ((*again)[0].fingerprint, first[0].fingerprint);
  EXPECT_EQ(backend->Open(1, sealed, "aad")->view(), "seed");
  // Reloading without changes keeps everything.
  EXPECT_EQ((*backend->LoadKeys())[0].fingerprint, first[0].fingerprint);
}

TEST_F(TpmBackendTest, ANewKeyDirOnTheSameTpmHasAnotherFingerprintAndCannotOpenTheOldCiphertexts) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string fingerprint = (*backend->LoadKeys())[0].fingerprint;
  const std::string sealed = *backend->Seal(1, "seed", "");
  backend.reset();
  TpmConfig other{tpm_->Tcti(), dir_.path() + "/other-keys"};
  ASSERT_TRUE(InitKeyDir(other, "kek").ok());
  auto other_backend = LoadedBackend({.key_dir = other.key_dir});
  EXPECT_NE((*other_backend->LoadKeys())[0].fingerprint, fingerprint);
  EXPECT_TRUE(IsInvalidArgument(other_backend->Open(1, sealed, "").status()));
}

TEST_F(TpmBackendTest, AnotherTpmCannotLoadTheKeysAndSaysWhy) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string sealed = *backend->Seal(1, "seed", "");
  backend.reset();

  std::unique_ptr<Swtpm> other_tpm = Swtpm::Start(dir_.path() + "/other-tpm");  // fresh state: new seeds
  ASSERT_NE(other_tpm, nullptr);
  TpmBackendOptions options;
  options.tcti = other_tpm->Tcti();
  options.key_dir = key_dir_;
  auto stranger = *TpmBackend::Create(options);
  Status s = stranger->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("another TPM"), std::string::npos) << s.message();
  EXPECT_TRUE(IsNotFound(stranger->Open(1, sealed, "").status()));

  // Its own keys of the same version number do not open our ciphertexts either.
  TpmConfig own{other_tpm->Tcti(), dir_.path() + "/other-keys"};
  ASSERT_TRUE(InitKeyDir(own, "kek").ok());
  options.key_dir = own.key_dir;
  auto other_backend = *TpmBackend::Create(options);
  ASSERT_TRUE(other_backend->LoadKeys().ok());
  EXPECT_TRUE(IsInvalidArgument(other_backend->Open(1, sealed, "").status()));
}

TEST_F(TpmBackendTest, AKilledTpmIsUnavailableAndTheBackendRecoversByItselfWhenItIsBack) {
  InitKeys();
  auto backend = LoadedBackend({.tcti = "", .key_dir = "", .request_timeout = std::chrono::milliseconds(2000)});
  const std::string sealed = *backend->Seal(1, "seed", "aad");

  tpm_->Kill();
  Status sealing = backend->Seal(1, "seed", "aad").status();
  EXPECT_TRUE(IsUnavailable(sealing)) << sealing.ToString();
  // The lost link is the device's state (TpmDevice::link_lost), not a tag in what operators read;
  // it still made the backend drop the context (and the one retry failed to reconnect).
  EXPECT_EQ(sealing.message().find("link lost"), std::string::npos) << sealing.message();
  EXPECT_EQ(backend->stats().connection_losses, 1u);
  EXPECT_TRUE(IsUnavailable(backend->Open(1, sealed, "aad").status()));
  EXPECT_TRUE(IsUnavailable(backend->Probe(1)));
  EXPECT_TRUE(IsUnavailable(backend->LoadKeys().status()));

  ASSERT_TRUE(tpm_->Restart());  // same state directory: the same TPM
  StatusOr<SecureBytes> opened = backend->Open(1, sealed, "aad");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed");
  EXPECT_TRUE(backend->Probe(1).ok());
  EXPECT_GE(backend->stats().connects, 2u);
}

TEST_F(TpmBackendTest, ATpmRestartedBetweenTwoRequestsIsInvisible) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string sealed = *backend->Seal(1, "seed", "aad");
  ASSERT_TRUE(tpm_->Restart());  // the loaded objects are gone; our handles are stale
  StatusOr<SecureBytes> opened = backend->Open(1, sealed, "aad");
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed");
  EXPECT_EQ(backend->stats().connection_losses, 1u);
}

TEST_F(TpmBackendTest, SixteenThreadsAreSerialisedThroughTheWorker) {
  InitKeys();
  auto backend = LoadedBackend();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const std::string plaintext = "thread " + std::to_string(t) + " request " + std::to_string(i);
        const std::string aad = "aad " + std::to_string(t);
        StatusOr<std::string> sealed = backend->Seal(1, plaintext, aad);
        if (!sealed.ok()) {
          ++failures;
          continue;
        }
        StatusOr<SecureBytes> opened = backend->Open(1, *sealed, aad);
        if (!opened.ok() || opened->view() != plaintext) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(backend->stats().expired_in_queue, 0u);
  EXPECT_EQ(backend->stats().connection_losses, 0u);
}

TEST_F(TpmBackendTest, RequestsWhoseDeadlinePassesInTheQueueFailWithoutTouchingTheTpm) {
  InitKeys();
  auto backend = LoadedBackend({.tcti = "", .key_dir = "", .request_timeout = std::chrono::milliseconds(300)});
  const std::string sealed = *backend->Seal(1, "seed", "");
  const uint64_t run_before = backend->stats().requests_run;

  tpm_->Pause();  // the TPM hangs in the middle of the next command
  std::vector<std::thread> callers;
  std::atomic<int> unavailable{0};
  for (int i = 0; i < 5; ++i) {
    callers.emplace_back([&] {
      if (IsUnavailable(backend->Open(1, sealed, "").status())) ++unavailable;
    });
    // The first one reaches the TPM (and sticks there), the others queue behind it, in that order.
    if (i == 0) {
      EXPECT_TRUE(Eventually([&] { return backend->stats().requests_run == run_before + 1; }, std::chrono::seconds(1)));
    } else {
      EXPECT_TRUE(
          Eventually([&] { return backend->stats().waiting == static_cast<uint64_t>(i); }, std::chrono::seconds(1)))
          << backend->stats().waiting;
    }
  }
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(unavailable.load(), 5) << "every caller gets its answer at its deadline";
  tpm_->Resume();

  // The stuck request finishes (its result is dropped); the four queued behind it are past their
  // deadline and are failed unrun.
  EXPECT_TRUE(Eventually([&] { return backend->stats().expired_in_queue == 4; }, std::chrono::seconds(5)))
      << backend->stats().expired_in_queue;
  EXPECT_EQ(backend->stats().requests_run, run_before + 1);
  EXPECT_EQ(backend->Open(1, sealed, "")->view(), "seed");
}

TEST_F(TpmBackendTest, AHungTpmCannotMakeTheQueueGrowWithoutBound) {
  InitKeys();
  TpmBackendOptions options;
  options.request_timeout = std::chrono::milliseconds(1500);  // room for the three callers to queue on a busy host
  options.max_queue = 2;
  auto backend = LoadedBackend(options);
  const std::string sealed = *backend->Seal(1, "seed", "");
  const uint64_t run_before = backend->stats().requests_run;
  tpm_->Pause();
  std::vector<std::thread> callers;
  auto call = [&] { callers.emplace_back([&] { EXPECT_TRUE(IsUnavailable(backend->Open(1, sealed, "").status())); }); };
  call();  // runs, and is stuck in the TPM
  ASSERT_TRUE(Eventually([&] { return backend->stats().requests_run == run_before + 1; }, std::chrono::seconds(1)));
  call();
  call();  // these two wait
  ASSERT_TRUE(Eventually([&] { return backend->stats().waiting == 2; }, std::chrono::seconds(1)));
  Status refused = backend->Open(1, sealed, "").status();
  EXPECT_TRUE(IsUnavailable(refused)) << refused.ToString();
  EXPECT_NE(refused.message().find("queue is full"), std::string::npos) << refused.message();
  for (auto& caller : callers) caller.join();
  tpm_->Resume();
  EXPECT_EQ(backend->stats().refused_queue_full, 1u);
  EXPECT_TRUE(Eventually([&] { return backend->Open(1, sealed, "").ok(); }, std::chrono::seconds(5)));
}

// The TPM command codes in a swtpm log written at level 20, in order: swtpm logs each command's bytes on
// the lines after "SWTPM_IO_Read:", and the code is bytes 6-9 of the header (tag, size, code).
std::vector<TPM2_CC> CommandCodesLogged(const std::string& log) {
  std::vector<TPM2_CC> codes;
  std::istringstream lines(log);
  bool command_follows = false;
  for (std::string line; std::getline(lines, line);) {
    if (line.find("SWTPM_IO_Read:") != std::string::npos) {
      command_follows = true;
      continue;
    }
    if (!command_follows) continue;
    command_follows = false;
    std::istringstream hex(line);
    std::vector<unsigned> bytes;
    for (unsigned byte; hex >> std::hex >> byte;) bytes.push_back(byte);
    if (bytes.size() >= 10) codes.push_back(bytes[6] << 24 | bytes[7] << 16 | bytes[8] << 8 | bytes[9]);
  }
  return codes;
}

size_t Count(const std::vector<TPM2_CC>& codes, TPM2_CC code) { return std::count(codes.begin(), codes.end(), code); }

TEST_F(TpmBackendTest, TpmEncryptDecryptAndEncryptDecrypt2MakeTheSameCiphertexts) {
  InitKeys();
  // The same TPM (state), served by a swtpm that logs every command it receives: that log shows which of
  // the two commands each backend really sent. (It holds the test's "seed" in the command bytes.)
  const std::string socket = tpm_->Tcti().substr(std::string("swtpm:path=").size());
  const std::string log_path = dir_.path() + "/swtpm-commands.log";
  tpm_->Kill();
  ::unlink(socket.c_str());
  ::unlink((socket + ".ctrl").c_str());
  support::Subprocess logged({"/usr/bin/swtpm", "socket", "--tpm2", "--server", "type=unixio,path=" + socket, "--ctrl",
                              "type=unixio,path=" + socket + ".ctrl", "--flags", "startup-clear,not-need-init",
                              "--tpmstate", "dir=" + tpm_->state_dir(), "--log", "file=" + log_path + ",level=20"},
                             dir_.path() + "/swtpm-logged.out");
  ASSERT_TRUE(
      Eventually([&] { return support::UnixSocketAccepts(socket + ".ctrl") && support::UnixSocketAccepts(socket); },
                 std::chrono::seconds(10)))
      << logged.Log();
  auto log_since = [&](size_t offset) {
    std::ifstream file(log_path);
    std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    return std::make_pair(CommandCodesLogged(text.substr(std::min(offset, text.size()))), text.size());
  };

  std::string by_v2_command;
  size_t offset = log_since(0).second;
  {
    auto backend = LoadedBackend();
    by_v2_command = *backend->Seal(1, "seed", "aad");
  }
  auto [sent, end] = log_since(offset);
  EXPECT_GE(Count(sent, TPM2_CC_EncryptDecrypt2), 1u) << "the default backend did not send TPM2_EncryptDecrypt2";
  EXPECT_EQ(Count(sent, TPM2_CC_EncryptDecrypt), 0u);

  offset = end;
  auto backend = LoadedBackend({.tcti = "",
                                .key_dir = "",
                                .load_timeout = std::chrono::seconds(30),
                                .loaded_versions = 1,
                                .prefer_encrypt_decrypt2 = false});
  EXPECT_EQ(backend->Open(1, by_v2_command, "aad")->view(), "seed");
  const std::string by_v1_command = *backend->Seal(1, "seed", "aad");
  backend.reset();
  std::tie(sent, end) = log_since(offset);
  EXPECT_GE(Count(sent, TPM2_CC_EncryptDecrypt), 2u) << "the backend told to use the older command did not send it";
  EXPECT_EQ(Count(sent, TPM2_CC_EncryptDecrypt2), 0u) << "the backend told to use the older command sent the newer one";

  EXPECT_EQ(LoadedBackend()->Open(1, by_v1_command, "aad")->view(), "seed");
}

TEST_F(TpmBackendTest, AnIncompleteVersionIsRefusedAndTheLoadedKeysStayInService) {
  InitKeys();
  auto backend = LoadedBackend();
  const std::string sealed = *backend->Seal(1, "seed", "");
  std::filesystem::copy_file(key_dir_ + "/v000001.aes.pub", key_dir_ + "/v000002.aes.pub");
  Status s = backend->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("incomplete"), std::string::npos) << s.message();
  EXPECT_EQ(backend->Open(1, sealed, "")->view(), "seed");
}

TEST_F(TpmBackendTest, ReloadDropsVersionsWhoseFilesWereRemoved) {
  InitKeys();
  std::string by_v1;
  {
    auto backend = LoadedBackend();
    by_v1 = *backend->Seal(1, "seed", "");
  }
  ASSERT_TRUE(RotateKey(Config(), "kek").ok());
  auto backend = LoadedBackend();
  ASSERT_EQ(backend->LoadKeys()->size(), 2u);
  EXPECT_EQ(backend->Open(1, by_v1, "")->view(), "seed");
  for (const char* suffix : {".aes.pub", ".aes.priv", ".hmac.pub", ".hmac.priv"}) {
    std::filesystem::remove(key_dir_ + "/v000001" + suffix);
  }
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_EQ((*keys)[0].version, 2u);
  EXPECT_TRUE(IsNotFound(backend->Open(1, by_v1, "").status()));
  EXPECT_TRUE(backend->Probe(2).ok());
}

TEST_F(TpmBackendTest, AnEmptyOrMissingKeyDirIsAConfigurationError) {
  auto backend = NewBackend();
  EXPECT_TRUE(IsFailedPrecondition(backend->LoadKeys().status()));
  std::filesystem::create_directory(key_dir_);
  Status s = backend->LoadKeys().status();
  EXPECT_TRUE(IsFailedPrecondition(s)) << s.ToString();
  EXPECT_NE(s.message().find("no TPM keys"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace trousseau::tpm
