// Provisioning the TPM key directory (the library behind `trousseau-hsm-init tpm ...`).
#include "tpm/provisioning.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <fstream>

#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <thread>

#include "core/key_id.h"
#include "tests/testing/skip_or_fail_in_ci.h"
#include "tests/tpm/swtpm_test.h"
#include "tpm/key_store.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using support::Eventually;
using testing::Swtpm;
using testing::TempDir;

class TpmProvisioningTest : public testing::SwtpmTest {
 protected:
  TpmConfig Config() const { return {tpm_->Tcti(), key_dir_}; }
};

mode_t Mode(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

// Whether thread `tid` of this process is in a sleep call now (nanosleep or clock_nanosleep, which
// std::this_thread::sleep_for uses), per /proc/self/task/TID/syscall (its first field, the syscall number).
bool Sleeping(pid_t tid) {
  std::ifstream file("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long number = -1;
  return (file >> number) && (number == SYS_nanosleep || number == SYS_clock_nanosleep);
}

// How many of this process's file descriptors are open on `path`.
int OpenCount(const std::string& path) {
  int count = 0;
  std::error_code ignored;
  for (const auto& fd : std::filesystem::directory_iterator("/proc/self/fd", ignored)) {
    count += std::filesystem::read_symlink(fd.path(), ignored) == path ? 1 : 0;
  }
  return count;
}

TEST_F(TpmProvisioningTest, InitCreatesVersionOneAsFourPrivateFilesAndRefusesToRunTwice) {
  StatusOr<TpmKeyInfo> v1 = InitKeyDir(Config(), "kek");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  EXPECT_EQ(v1->version, 1u);
  EXPECT_EQ(v1->key_id, DeriveKeyId("tpm2", "kek", 1, v1->fingerprint));
  EXPECT_EQ(Mode(Config().key_dir), 0700u);
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(Config().key_dir)) {
    names.push_back(entry.path().filename());
    EXPECT_EQ(Mode(entry.path()), 0600u) << entry.path();
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{".lock", "v000001.aes.priv", "v000001.aes.pub", "v000001.hmac.priv",
                                             "v000001.hmac.pub"}));

  StatusOr<TpmKeyInfo> again = InitKeyDir(Config(), "kek");
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status().ToString();
}

TEST_F(TpmProvisioningTest, ListAgreesWithTheBackendsKeyIdsAndRotateAddsTheNextVersion) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[1].key_id, v2->key_id);

  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = Config().key_dir});
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ((*keys)[i].fingerprint, (*listed)[i].fingerprint);
}

TEST_F(TpmProvisioningTest, RotateNeedsAnInitialisedDirectory) {
  EXPECT_TRUE(IsFailedPrecondition(RotateKey(Config(), "kek").status()));
  std::filesystem::create_directory(Config().key_dir);
  EXPECT_TRUE(IsFailedPrecondition(RotateKey(Config(), "kek").status()));
}

TEST_F(TpmProvisioningTest, LeftoversOfAnInterruptedRotationAreNotAVersion) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  const std::string dir = Config().key_dir;
  // A rotation that died before writing v000002.aes.pub, its commit marker.
  std::filesystem::copy_file(dir + "/v000001.hmac.pub", dir + "/v000002.hmac.pub");
  std::filesystem::copy_file(dir + "/v000001.hmac.priv", dir + "/v000002.hmac.priv");
  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  EXPECT_EQ(listed->size(), 1u);
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");  // overwrites the leftovers
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(ListKeys(Config(), "kek")->size(), 2u);
}

TEST_F(TpmProvisioningTest, SelfTestPassesHereAndFailsOnAnotherTpm) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  Status here = SelfTest(Config());
  EXPECT_TRUE(here.ok()) << here.ToString();

  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");
  ASSERT_NE(other, nullptr);
  Status there = SelfTest({other->Tcti(), Config().key_dir});
  EXPECT_TRUE(IsFailedPrecondition(there)) << there.ToString();
}

TEST_F(TpmProvisioningTest, AFullTpmIsRetriedWithBackoffThenUnavailable) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  // A running backend holds 2 of swtpm's 3 object slots; listing needs 3 (primary + two keys).
  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = Config().key_dir});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const auto start = std::chrono::steady_clock::now();
  Status full = ListKeys(Config(), "kek").status();
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(IsUnavailable(full)) << full.ToString();
  EXPECT_NE(full.message().find("object"), std::string::npos) << full.message();
  EXPECT_GE(waited, std::chrono::milliseconds(100)) << "bounded retries with backoff";
  EXPECT_LT(waited, std::chrono::seconds(2));

  // Slots freed while it backs off: the retry succeeds. The listing thread is seen sleeping (its backoff
  // after a full-TPM answer; nothing else in a listing sleeps) before the slots are freed.
  std::atomic<pid_t> lister{0};
  StatusOr<std::vector<TpmKeyInfo>> listed = InternalError("not run");
  std::thread listing([&] {
    lister = static_cast<pid_t>(::syscall(SYS_gettid));
    listed = ListKeys(Config(), "kek");
  });
  const bool backing_off = Eventually([&] { return lister != 0 && Sleeping(lister); }, std::chrono::seconds(2));
  backend.reset();  // the worker flushes its objects
  listing.join();
  EXPECT_TRUE(backing_off) << "the listing never backed off";
  EXPECT_TRUE(listed.ok()) << listed.status().ToString();
}

TEST_F(TpmProvisioningTest, AnUnreachableTpmIsUnavailable) {
  tpm_->Kill();
  Status s = InitKeyDir(Config(), "kek").status();
  EXPECT_TRUE(IsUnavailable(s)) << s.ToString();
}

// Every file name in `dir`, sorted.
std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

bool Contains(const Status& s, std::string_view text) { return s.message().find(text) != std::string::npos; }

TEST_F(TpmProvisioningTest, ConcurrentRotationsGetConsecutiveVersionsThatAllLoad) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  // Without the directory lock these would read the same N and write N+1 through the same temp
  // names. With it they queue: each sees the version the one before it committed.
  constexpr int kRuns = 4;
  std::vector<StatusOr<TpmKeyInfo>> results(kRuns, StatusOr<TpmKeyInfo>(InternalError("not run")));
  std::vector<std::thread> threads;
  for (int i = 0; i < kRuns; ++i) threads.emplace_back([&, i] { results[i] = RotateKey(Config(), "kek"); });
  for (std::thread& t : threads) t.join();
  std::set<uint64_t> versions;
  std::set<std::string> key_ids;
  for (const auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    versions.insert(r->version);
    key_ids.insert(r->key_id);
  }
  EXPECT_EQ(versions, (std::set<uint64_t>{2, 3, 4, 5}));
  EXPECT_EQ(key_ids.size(), 4u);

  StatusOr<std::vector<TpmKeyInfo>> listed = ListKeys(Config(), "kek");
  ASSERT_TRUE(listed.ok()) << listed.status().ToString();
  ASSERT_EQ(listed->size(), 5u);
  for (const TpmKeyInfo& key : *listed) {
    if (key.version > 1) {
      EXPECT_EQ(key_ids.count(key.key_id), 1u) << "version " << key.version << " holds another run's files";
    }
  }
  EXPECT_TRUE(SelfTest(Config()).ok());
  for (const std::string& name : Names(Config().key_dir)) {
    EXPECT_TRUE(name == ".lock" || name.starts_with("v")) << "left behind: " << name;
  }
}

TEST_F(TpmProvisioningTest, ARotationWaitsForTheLockAndRefusesClearlyIfItIsKept) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  TpmConfig impatient = Config();
  impatient.lock_wait = std::chrono::milliseconds(200);
  {
    StatusOr<KeyDirLock> acquired = KeyDirLock::Acquire(Config().key_dir, std::chrono::milliseconds(0));
    ASSERT_TRUE(acquired.ok()) << acquired.status().ToString();
    std::optional<KeyDirLock> held(*std::move(acquired));  // as another run would hold it
    Status refused = RotateKey(impatient, "kek").status();
    EXPECT_EQ(refused.code(), StatusCode::kAborted) << refused.ToString();
    EXPECT_TRUE(Contains(refused, Config().key_dir + "/.lock")) << refused.message();
    EXPECT_TRUE(Contains(refused, "nothing was changed")) << refused.message();
    EXPECT_EQ(ListKeys(Config(), "kek")->size(), 1u);

    // Released while a patient run waits: it proceeds. The run is waiting once it has the lock file open
    // too (it polls the lock from then on) and is seen sleeping between two tries.
    StatusOr<TpmKeyInfo> v2 = InternalError("not run");
    std::atomic<pid_t> rotator{0};
    std::thread rotation([&] {
      rotator = static_cast<pid_t>(::syscall(SYS_gettid));
      v2 = RotateKey(Config(), "kek");
    });
    const std::string lock_path = Config().key_dir + "/.lock";
    const bool waiting = Eventually([&] { return OpenCount(lock_path) >= 2 && rotator != 0 && Sleeping(rotator); },
                                    std::chrono::seconds(5));
    held.reset();
    rotation.join();
    EXPECT_TRUE(waiting) << "the rotation was never seen waiting for the lock";
    ASSERT_TRUE(v2.ok()) << v2.status().ToString();
    EXPECT_EQ(v2->version, 2u);
  }
  EXPECT_EQ(Mode(Config().key_dir + "/.lock"), 0600u);
}

TEST_F(TpmProvisioningTest, RotateRefusesWhenTheExistingVersionsDoNotLoadInThisTpm) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  const std::vector<std::string> before = Names(Config().key_dir);
  std::unique_ptr<Swtpm> other = Swtpm::Start(dir_.path() + "/other-tpm");  // a wrong TCTI, another TPM
  ASSERT_NE(other, nullptr);
  TpmConfig elsewhere = Config();
  elsewhere.tcti = other->Tcti();
  Status refused = RotateKey(elsewhere, "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_TRUE(Contains(refused, "refusing to rotate: key version 1 in " + Config().key_dir)) << refused.message();
  EXPECT_TRUE(Contains(refused, other->Tcti())) << refused.message();
  EXPECT_TRUE(Contains(refused, "another TPM")) << refused.message();
  EXPECT_EQ(Names(Config().key_dir), before) << "nothing written";

  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");  // its own TPM: fine
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
}

TEST_F(TpmProvisioningTest, RotateRefusesAfterTheHighestPossibleVersionBeforeTouchingTheTpm) {
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  const std::string dir = Config().key_dir;
  const std::string last = VersionStem(std::numeric_limits<uint64_t>::max());
  for (const char* suffix : {".hmac.pub", ".hmac.priv", ".aes.priv", ".aes.pub"}) {
    std::filesystem::copy_file(dir + "/v000001" + suffix, dir + "/" + last + suffix);
  }
  ASSERT_EQ(ListKeys(Config(), "kek")->size(), 2u);
  const std::vector<std::string> before = Names(dir);
  tpm_->Kill();  // any TPM command would now be UNAVAILABLE
  Status refused = RotateKey(Config(), "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_TRUE(Contains(refused, "18446744073709551615, the highest possible")) << refused.message();
  EXPECT_EQ(Names(dir), before);
}

TEST_F(TpmProvisioningTest, AnEmptyTctiIsRefusedNotTheTssDefault) {
  TpmConfig blank = Config();
  blank.tcti = "";
  Status init = InitKeyDir(blank, "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(init)) << init.ToString();
  EXPECT_TRUE(Contains(init, "no TCTI configured")) << init.message();
  EXPECT_FALSE(std::filesystem::exists(blank.key_dir)) << "refused before anything was created";

  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  EXPECT_TRUE(IsFailedPrecondition(RotateKey(blank, "kek").status()));
  EXPECT_TRUE(IsFailedPrecondition(ListKeys(blank, "kek").status()));
  EXPECT_TRUE(IsFailedPrecondition(SelfTest(blank)));
  EXPECT_TRUE(IsFailedPrecondition(TpmDevice::Open("").status()));
  EXPECT_TRUE(IsFailedPrecondition(TpmBackend::Create({.tcti = "", .key_dir = blank.key_dir}).status()));
  EXPECT_EQ(ListKeys(Config(), "kek")->size(), 1u);
}

TEST_F(TpmProvisioningTest, InitAndRotateRefuseAKeyDirectoryOthersCanWrite) {
  const std::string dir = Config().key_dir;
  ASSERT_TRUE(std::filesystem::create_directory(dir));
  for (mode_t mode : {0777, 0770, 0722, 01777}) {
    ASSERT_EQ(::chmod(dir.c_str(), mode), 0);
    Status refused = InitKeyDir(Config(), "kek").status();
    EXPECT_TRUE(IsFailedPrecondition(refused)) << std::oct << mode << ": " << refused.ToString();
    EXPECT_TRUE(Contains(refused, "the TPM key directory " + dir + " is writable by")) << refused.message();
    EXPECT_TRUE(Contains(refused, "chmod 700 " + dir)) << refused.message();
    EXPECT_TRUE(Names(dir).empty()) << "nothing written, not even the lock";
  }
  ASSERT_EQ(::chmod(dir.c_str(), 0750), 0);  // readable by the group is not writable
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());

  ASSERT_EQ(::chmod(dir.c_str(), 0770), 0);
  Status refused = RotateKey(Config(), "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_TRUE(Contains(refused, "writable by its group")) << refused.message();
  ASSERT_EQ(::chmod(dir.c_str(), 0700), 0);
  EXPECT_EQ(ListKeys(Config(), "kek")->size(), 1u);
  EXPECT_TRUE(RotateKey(Config(), "kek").ok());
}

TEST_F(TpmProvisioningTest, InitAndRotateRefuseAKeyDirectoryOwnedByAnotherUser) {
  if (::geteuid() != 0) SKIP_OR_FAIL_IN_CI("needs root to give a directory to another user (CI runs as root)");
  const std::string dir = Config().key_dir;
  ASSERT_TRUE(InitKeyDir(Config(), "kek").ok());
  ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
  Status refused = RotateKey(Config(), "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  EXPECT_TRUE(Contains(refused, dir + " is owned by uid 65534")) << refused.message();
  EXPECT_TRUE(Contains(refused, "chown 0 " + dir)) << refused.message();
  refused = InitKeyDir(Config(), "kek").status();
  EXPECT_TRUE(IsFailedPrecondition(refused)) << refused.ToString();
  ASSERT_EQ(::chown(dir.c_str(), 0, 0), 0);  // root's own directory is fine
  EXPECT_TRUE(RotateKey(Config(), "kek").ok());
}

// The documented command on a fresh node: /var/lib/trousseau-hsm does not exist yet.
TEST_F(TpmProvisioningTest, InitCreatesMissingParentDirectories) {
  const std::string parent = dir_.path() + "/var/lib/trousseau-hsm";
  TpmConfig config = Config();
  config.key_dir = parent + "/tpm";
  StatusOr<TpmKeyInfo> v1 = InitKeyDir(config, "kek");
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(parent.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(::stat(config.key_dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  EXPECT_TRUE(ReadKeyDir(config.key_dir).ok());
}

TEST_F(TpmProvisioningTest, InitMakesTheDirectoryExactly0700AndTheFiles0600WhateverTheUmask) {
  const mode_t saved = ::umask(0277);  // would leave mkdir(0700) at 0500, not even writable by us
  StatusOr<TpmKeyInfo> v1 = InitKeyDir(Config(), "kek");
  StatusOr<TpmKeyInfo> v2 = RotateKey(Config(), "kek");
  ::umask(saved);
  ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(Mode(Config().key_dir), 0700u);
  for (const std::string& name : Names(Config().key_dir)) EXPECT_EQ(Mode(Config().key_dir + "/" + name), 0600u) << name;
}

}  // namespace
}  // namespace trousseau::tpm
