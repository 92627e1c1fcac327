// Reading the admin DSN from a file (issue 15): only a regular file of this user's that nobody else can read,
// without its line end; errors never show the content (it holds the admin password).
#include "tools/postgres/dsn_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/testing/skip_or_fail_in_ci.h"

namespace trousseau::postgres {
namespace {

class AdminDsnFile : public ::testing::Test {
 protected:
  void SetUp() override {
    char dir_template[] = "/tmp/trousseau-dsn.XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string Write(const std::string& name, const std::string& content, mode_t mode) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    chmod(path.c_str(), mode);
    return path;
  }

  std::string dir_;
  const std::string dsn_ = "host=db.example port=5432 user=admin password=s3cret-Admin-pw sslmode=verify-full";
};

TEST_F(AdminDsnFile, OwnerOnlyFileIsReadWithoutItsLineEnd) {
  for (const mode_t mode : {0600, 0400}) {
    StatusOr<SecureBytes> dsn = ReadAdminDsnFile(Write("dsn" + std::to_string(mode), dsn_ + "\r\n\n", mode));
    ASSERT_TRUE(dsn.ok()) << dsn.status().ToString();
    EXPECT_EQ(dsn->view(), dsn_);
  }
}

TEST_F(AdminDsnFile, FileOthersCanReachIsRefusedWithItsModeAndNotItsContent) {
  for (const mode_t mode : {0644, 0640, 0604, 0660}) {
    StatusOr<SecureBytes> dsn = ReadAdminDsnFile(Write("dsn", dsn_, mode));
    ASSERT_FALSE(dsn.ok());
    EXPECT_EQ(dsn.status().code(), StatusCode::kPermissionDenied);
    char expected[16];
    std::snprintf(expected, sizeof(expected), "mode %04o", static_cast<unsigned>(mode));
    EXPECT_NE(dsn.status().message().find(expected), std::string::npos) << dsn.status().message();
    EXPECT_NE(dsn.status().message().find("chmod 600"), std::string::npos) << dsn.status().message();
    EXPECT_EQ(dsn.status().message().find("s3cret"), std::string::npos) << dsn.status().message();
  }
}

TEST_F(AdminDsnFile, SymlinkDirectoryMissingAndEmptyAreRefused) {
  const std::string target = Write("dsn", dsn_, 0600);
  const std::string link = dir_ + "/link";
  ASSERT_EQ(symlink(target.c_str(), link.c_str()), 0);
  StatusOr<SecureBytes> linked = ReadAdminDsnFile(link);
  ASSERT_FALSE(linked.ok());
  EXPECT_NE(linked.status().message().find("symbolic link"), std::string::npos) << linked.status().message();

  StatusOr<SecureBytes> directory = ReadAdminDsnFile(dir_);
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.status().message().find("not a regular file"), std::string::npos) << directory.status().message();

  EXPECT_EQ(ReadAdminDsnFile(dir_ + "/absent").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ReadAdminDsnFile(Write("empty", "", 0600)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAdminDsnFile(Write("newline", "\n", 0600)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadAdminDsnFile(Write("large", std::string(kMaxDsnFileSize + 1, 'x'), 0600)).status().code(),
            StatusCode::kInvalidArgument);
}

// Another user's file, even one only its owner can read, is refused (CI runs as root, which can make one).
TEST_F(AdminDsnFile, FileOfAnotherUserIsRefused) {
  if (geteuid() != 0) SKIP_OR_FAIL_IN_CI("needs root to give a file to another user");
  const std::string path = Write("dsn", dsn_, 0600);
  ASSERT_EQ(chown(path.c_str(), 65534, 65534), 0);
  StatusOr<SecureBytes> dsn = ReadAdminDsnFile(path);
  ASSERT_FALSE(dsn.ok());
  EXPECT_EQ(dsn.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(dsn.status().message().find("owned by uid 65534"), std::string::npos) << dsn.status().message();
}

}  // namespace
}  // namespace trousseau::postgres
