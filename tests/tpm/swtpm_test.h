// Base fixture of the TPM tests: each test gets its own swtpm in a fresh temporary directory.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "tests/tpm/swtpm.h"

namespace trousseau::testing {

class SwtpmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty()) << "no temporary directory";
    tpm_ = Swtpm::Start(dir_.path() + "/tpm");
    ASSERT_NE(tpm_, nullptr) << "swtpm did not start";
    key_dir_ = dir_.path() + "/keys";
  }

  TempDir dir_;
  std::unique_ptr<Swtpm> tpm_;
  std::string key_dir_;  // the key directory's path; not created (`tpm init` makes it)
};

}  // namespace trousseau::testing
