// A test that cannot run here (a tool or a privilege is missing) is skipped on a developer's machine,
// but fails under CI (CI=true in the environment): CI installs every tool the suite needs and runs as
// root, so a skip there means a test silently stopped testing anything.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <string_view>

namespace trousseau::testing {

// Whether this run is CI's: CI=true, as ci/test exports it (and as CI services set it).
inline bool RunningInCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string_view(ci) == "true";
}

}  // namespace trousseau::testing

// Use in a TEST body or SetUp (it returns from the function, as GTEST_SKIP and FAIL do).
#define SKIP_OR_FAIL_IN_CI(reason)                       \
  do {                                                   \
    if (::trousseau::testing::RunningInCi()) {           \
      FAIL() << "CI=true, so no skipping: " << (reason); \
    } else {                                             \
      GTEST_SKIP() << (reason);                          \
    }                                                    \
  } while (0)
