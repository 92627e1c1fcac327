// The key directory as the plugin reads it and provisioning writes it (tpm/key_store.h), on keys
// made by a real swtpm: what the reader ignores and refuses, and commits that never replace a file.
#include "tpm/key_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "tests/tpm/swtpm_test.h"
#include "tpm/provisioning.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using testing::Swtpm;
using testing::TempDir;

class KeyStoreTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    if (HasFatalFailure()) return;
    StatusOr<TpmKeyInfo> v1 = InitKeyDir({tpm_->Tcti(), key_dir_}, "kek");
    ASSERT_TRUE(v1.ok()) << v1.status().ToString();
  }

  std::string Path(const std::string& name) const { return key_dir_ + "/" + name; }
};

bool Contains(const Status& s, std::string_view text) { return s.message().find(text) != std::string::npos; }

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST_F(KeyStoreTest, TheReaderIgnoresTheLockFileAndTempFilesAndARotationRemovesDeadRunsTempFiles) {
  ASSERT_TRUE(std::filesystem::exists(Path(".lock")));
  // What a run that died while writing version 2 leaves: its temp files, even one with the commit
  // marker's contents. None is a version.
  for (const char* suffix : {".aes.pub", ".aes.priv", ".hmac.pub", ".hmac.priv"}) {
    std::filesystem::copy_file(Path(std::string("v000001") + suffix),
                               Path(std::string(".v000002") + suffix + ".tmp-Ab12Cd"));
  }
  std::filesystem::copy_file(Path("v000001.aes.pub"), Path(".v000003.aes.pub"));
  StatusOr<std::map<uint64_t, VersionBlobs>> versions = ReadKeyDir(key_dir_);
  ASSERT_TRUE(versions.ok()) << versions.status().ToString();
  ASSERT_EQ(versions->size(), 1u);
  EXPECT_EQ(versions->begin()->first, 1u);

  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = key_dir_});
  StatusOr<std::vector<BackendKey>> keys = backend->LoadKeys();
  ASSERT_TRUE(keys.ok()) << keys.status().ToString();
  EXPECT_EQ(keys->size(), 1u);
  backend.reset();  // frees swtpm's object slots for the rotation

  StatusOr<TpmKeyInfo> v2 = RotateKey({tpm_->Tcti(), key_dir_}, "kek");
  ASSERT_TRUE(v2.ok()) << v2.status().ToString();
  EXPECT_EQ(v2->version, 2u);
  for (const char* suffix : {".aes.pub", ".aes.priv", ".hmac.pub", ".hmac.priv"}) {
    EXPECT_FALSE(std::filesystem::exists(Path(std::string(".v000002") + suffix + ".tmp-Ab12Cd"))) << suffix;
  }
  EXPECT_TRUE(std::filesystem::exists(Path(".v000003.aes.pub"))) << "not a temp file of ours: left alone";
}

TEST_F(KeyStoreTest, TheReaderRefusesAWritableDirectoryOrKeyFileAndThePluginKeepsItsKeys) {
  auto backend = *TpmBackend::Create({.tcti = tpm_->Tcti(), .key_dir = key_dir_});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "seed", "aad");

  for (mode_t mode : {0770, 0707, 0777}) {
    ASSERT_EQ(::chmod(key_dir_.c_str(), mode), 0);
    Status refused = ReadKeyDir(key_dir_).status();
    EXPECT_TRUE(IsFailedPrecondition(refused)) << std::oct << mode << ": " << refused.ToString();
    EXPECT_TRUE(Contains(refused, "the TPM key directory " + key_dir_ + " is writable by")) << refused.message();
    EXPECT_TRUE(Contains(refused, "chmod 700 " + key_dir_)) << refused.message();
    Status reload = backend->LoadKeys().status();  // the plugin's refresh: refused, keys stay in service
    EXPECT_TRUE(IsFailedPrecondition(reload)) << reload.ToString();
  }
  ASSERT_EQ(::chmod(key_dir_.c_str(), 0755), 0);  // readable by all, writable by its owner only: fine
  EXPECT_TRUE(ReadKeyDir(key_dir_).ok());

  const std::string file = Path("v000001.hmac.priv");
  for (mode_t mode : {0620, 0602, 0666}) {
    ASSERT_EQ(::chmod(file.c_str(), mode), 0);
    Status refused = ReadKeyDir(key_dir_).status();
    EXPECT_TRUE(IsFailedPrecondition(refused)) << std::oct << mode << ": " << refused.ToString();
    EXPECT_TRUE(Contains(refused, "key version 1: the TPM key file " + file + " is writable by")) << refused.message();
    EXPECT_TRUE(Contains(refused, "chmod 600 " + file)) << refused.message();
    EXPECT_TRUE(IsFailedPrecondition(backend->LoadKeys().status()));
  }
  // Readable is refused too: on this node, whoever reads the blobs and opens the TPM uses the key.
  for (mode_t mode : {0640, 0604, 0644}) {
    ASSERT_EQ(::chmod(file.c_str(), mode), 0);
    Status refused = ReadKeyDir(key_dir_).status();
    EXPECT_TRUE(IsFailedPrecondition(refused)) << std::oct << mode << ": " << refused.ToString();
    EXPECT_TRUE(Contains(refused, "the TPM key file " + file + " is readable by")) << refused.message();
    EXPECT_TRUE(Contains(refused, "chmod 600 " + file)) << refused.message();
  }
  EXPECT_EQ(backend->Open(1, sealed, "aad")->view(), "seed") << "the loaded keys stayed in service";
  ASSERT_EQ(::chmod(file.c_str(), 0600), 0);
  EXPECT_TRUE(backend->LoadKeys().ok());
}

TEST_F(KeyStoreTest, TheCommitOfAVersionNeverReplacesAnExistingFile) {
  StatusOr<std::map<uint64_t, VersionBlobs>> versions = ReadKeyDir(key_dir_);
  ASSERT_TRUE(versions.ok()) << versions.status().ToString();
  VersionBlobs blobs = versions->at(1);
  const std::string marker = ReadAll(Path("v000001.aes.pub"));

  // Version 1 exists: refused up front, its files untouched.
  Status again = WriteVersion(key_dir_, blobs);
  EXPECT_EQ(again.code(), StatusCode::kAlreadyExists) << again.ToString();
  EXPECT_EQ(ReadAll(Path("v000001.aes.pub")), marker);

  // A commit marker that appears while the version is written (here a dangling symlink, which the
  // up-front check cannot see): the final rename refuses to replace it.
  blobs.version = 2;
  std::filesystem::create_symlink("nowhere", Path("v000002.aes.pub"));
  Status raced = WriteVersion(key_dir_, blobs);
  EXPECT_EQ(raced.code(), StatusCode::kAlreadyExists) << raced.ToString();
  EXPECT_TRUE(Contains(raced, "appeared")) << raced.message();
  EXPECT_TRUE(std::filesystem::is_symlink(Path("v000002.aes.pub"))) << "replaced";
  for (const auto& entry : std::filesystem::directory_iterator(key_dir_)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << "temp file left: " << entry.path();
  }

  std::filesystem::remove(Path("v000002.aes.pub"));
  ASSERT_TRUE(WriteVersion(key_dir_, blobs).ok());
  versions = ReadKeyDir(key_dir_);
  ASSERT_TRUE(versions.ok()) << versions.status().ToString();
  EXPECT_EQ(versions->size(), 2u);
}

}  // namespace
}  // namespace trousseau::tpm
