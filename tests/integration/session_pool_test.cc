// The PKCS#11 session pool sizes itself (--hsm-sessions auto): against a real SoftHSM token behind the
// fault shim, made slow (delay_us, a network HSM) and, for the limit, made to report a small
// ulMaxSessionCount (max_sessions=N). Sizes and counts are asserted, never rates. The names match
// ci/sanitize's TSan selection (Concurren, UnderLoad).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "hsm/pkcs11_backend.h"
#include "tools/support/fault_shim_control.h"
#include "tools/support/softhsm_token.h"

namespace trousseau {
namespace {

using namespace std::chrono_literals;
using support::SoftHsmToken;

// Each Decrypt is C_DecryptInit + C_Decrypt, both delayed: ~4 ms a call, far above the 1 ms below
// which the pool does not grow.
constexpr char kSlowToken[] = "up delay_us=2000";
constexpr size_t kStreams = 16;

class SessionPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    token_ = SoftHsmToken::Create();
    ASSERT_NE(token_, nullptr) << "softhsm2-util could not create a token";
    ASSERT_TRUE(token_->GenerateKek(1).ok());
    control_ = token_->dir() + "/shim.control";
    support::WriteShimControl(control_, kSlowToken);
    setenv("TROUSSEAU_FAULT_SHIM_CONTROL", control_.c_str(), 1);
    setenv("TROUSSEAU_FAULT_SHIM_MODULE", support::kSoftHsmModule, 1);
  }
  void TearDown() override {
    unsetenv("TROUSSEAU_FAULT_SHIM_CONTROL");
    unsetenv("TROUSSEAU_FAULT_SHIM_MODULE");
  }

  std::shared_ptr<hsm::Pkcs11Backend> NewBackend(hsm::Pkcs11BackendOptions options) {
    StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token_->Uri("kek", FAULT_SHIM_PATH));
    EXPECT_TRUE(uri.ok()) << uri.status().ToString();
    StatusOr<std::unique_ptr<hsm::Pkcs11Backend>> backend = hsm::Pkcs11Backend::Create(*std::move(uri), options);
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    return *std::move(backend);
  }

  // kStreams threads decrypt `sealed` in a loop until `until` says stop (checked after every call);
  // returns the calls that failed.
  static int Load(hsm::Pkcs11Backend& backend, const std::string& sealed, const std::function<bool()>& until) {
    std::atomic<int> failed{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> streams;
    for (size_t i = 0; i < kStreams; ++i) {
      streams.emplace_back([&] {
        while (!stop.load()) {
          StatusOr<SecureBytes> opened = backend.Open(1, sealed, "aad", std::chrono::steady_clock::now() + 10s);
          if (!opened.ok() || opened->view() != "seed") ++failed;
          // The metric's pair stays consistent under load.
          if (backend.sessions_in_use() > backend.session_count()) ++failed;
          if (until()) stop.store(true);
        }
      });
    }
    for (std::thread& t : streams) t.join();
    return failed.load();
  }

  // True once `done` holds, false at the (generous) deadline; checked after every call of the load.
  static std::function<bool()> Within(std::chrono::seconds limit, std::function<bool()> done) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    return [deadline, done = std::move(done)] { return done() || std::chrono::steady_clock::now() > deadline; };
  }

  std::unique_ptr<SoftHsmToken> token_;
  std::string control_;
};

TEST(SessionPoolLimit, IsTheTokensLimitLessHeadroomOrTheHardCap) {
  EXPECT_EQ(hsm::SessionPoolLimit(std::nullopt, 16), defaults::kHsmSessionsMax) << "the token states no limit";
  EXPECT_EQ(hsm::SessionPoolLimit(100, 16), 96u);
  EXPECT_EQ(hsm::SessionPoolLimit(100000, 16), defaults::kHsmSessionsMax);
  EXPECT_EQ(hsm::SessionPoolLimit(10, 16), 16u) << "below the start size: the pool keeps it, grows no further";
  EXPECT_EQ(hsm::SessionPoolLimit(2, 1), 1u);
}

TEST_F(SessionPoolTest, GrowsToTheConcurrentCallersOfASlowToken) {
  auto backend = NewBackend({.sessions = 2});
  ASSERT_TRUE(backend->LoadKeys().ok());
  ASSERT_EQ(backend->session_count(), 2u);
  const std::string sealed = *backend->Seal(1, "seed", "aad");

  const int failed = Load(*backend, sealed, Within(60s, [&] { return backend->session_count() >= kStreams; }));
  EXPECT_EQ(failed, 0);
  // As many sessions as callers, and no more: a caller never finds all lanes busy once each has one.
  EXPECT_EQ(backend->session_count(), kStreams);
}

TEST_F(SessionPoolTest, StaysWithinTheTokensSessionLimitUnderLoad) {
  support::WriteShimControl(control_, std::string(kSlowToken) + " max_sessions=10");
  auto backend = NewBackend({.sessions = 2});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "seed", "aad");
  const size_t limit = 10 - 4;  // the token's 10, less the headroom for our admin session and tools

  int failed = Load(*backend, sealed, Within(60s, [&] { return backend->session_count() >= limit; }));
  EXPECT_EQ(failed, 0);
  ASSERT_EQ(backend->session_count(), limit);
  // Calls keep queueing (16 callers, 6 sessions): each would ask for more, were the limit not kept.
  std::atomic<int> calls{0};
  failed = Load(*backend, sealed, [&] { return ++calls >= 400; });
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(backend->session_count(), limit);
}

TEST_F(SessionPoolTest, APinnedPoolNeverGrowsUnderLoad) {
  auto backend = NewBackend({.sessions = 2, .grow_sessions = false});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "seed", "aad");
  // The same load grows an auto pool to 16 (above); a pinned one stays.
  std::atomic<int> calls{0};
  const int failed = Load(*backend, sealed, [&] { return ++calls >= 300; });
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(backend->session_count(), 2u);
}

TEST_F(SessionPoolTest, AGrownPoolIsReopenedWholeAfterAnOutageUnderLoad) {
  auto backend = NewBackend({.sessions = 2});
  ASSERT_TRUE(backend->LoadKeys().ok());
  const std::string sealed = *backend->Seal(1, "seed", "aad");
  ASSERT_EQ(Load(*backend, sealed, Within(60s, [&] { return backend->session_count() >= kStreams; })), 0);
  ASSERT_EQ(backend->session_count(), kStreams);

  // The link drops (the shim closes every session) and comes back.
  support::WriteShimControl(control_, "down");
  EXPECT_TRUE(IsUnavailable(backend->Open(1, sealed, "aad").status()));
  support::WriteShimControl(control_, kSlowToken);
  ASSERT_TRUE(backend->Probe(1, std::chrono::steady_clock::now() + 10s).ok());

  // Every lane has a session again: no call fails, on whichever lane it runs.
  std::atomic<int> calls{0};
  EXPECT_EQ(Load(*backend, sealed, [&] { return ++calls >= 200; }), 0);
  EXPECT_EQ(backend->session_count(), kStreams);
}

}  // namespace
}  // namespace trousseau
