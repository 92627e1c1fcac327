// The TCTI-level deadline: through the device TCTI (the one /dev/tpmrm0 uses), a TPM that stops
// answering costs the command in flight and its ESYS context, not the worker thread.
#include <gtest/gtest.h>

#include <chrono>

#include "tests/tpm/pty_tpm.h"
#include "tests/tpm/swtpm_test.h"
#include "tpm/provisioning.h"
#include "tpm/tpm_backend.h"

namespace trousseau::tpm {
namespace {

using namespace std::chrono_literals;
using support::Eventually;
using testing::PtyTpm;

class TctiTimeoutTest : public testing::SwtpmTest {
 protected:
  void SetUp() override {
    SwtpmTest::SetUp();
    const std::string prefix = "swtpm:path=";
    pty_ = PtyTpm::Start(tpm_->Tcti().substr(prefix.size()));
    ASSERT_NE(pty_, nullptr) << "no pseudo-terminal";
    StatusOr<TpmKeyInfo> v1 = InitKeyDir({pty_->Tcti(), key_dir_}, "kek");
    ASSERT_TRUE(v1.ok()) << "provisioning through the device TCTI: " << v1.status().ToString();
  }

  std::unique_ptr<TpmBackend> LoadedBackend() {
    StatusOr<std::unique_ptr<TpmBackend>> backend =
        TpmBackend::Create({.tcti = pty_->Tcti(), .key_dir = key_dir_, .request_timeout = 500ms});
    EXPECT_TRUE(backend.ok()) << backend.status().ToString();
    StatusOr<std::vector<BackendKey>> keys = (*backend)->LoadKeys();
    EXPECT_TRUE(keys.ok()) << keys.status().ToString();
    return *std::move(backend);
  }

  std::unique_ptr<PtyTpm> pty_;
};

TEST_F(TctiTimeoutTest, ATpmThatStopsAnsweringCostsOneContextNotTheWorker) {
  auto backend = LoadedBackend();
  StatusOr<std::string> sealed = backend->Seal(1, "seed", "aad");
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();

  pty_->Hang();
  StatusOr<std::string> during = backend->Seal(1, "seed", "aad");
  EXPECT_TRUE(IsUnavailable(during.status())) << during.status().ToString();
  EXPECT_GE(pty_->commands_swallowed(), 1);
  // The worker came back from ESYS on its own, with the TPM still silent: nothing is stuck (with
  // the synchronous Esys_* calls it would sit in the TCTI until the TPM answered).
  EXPECT_TRUE(Eventually([&] { return backend->calls_stuck() == 0 && backend->stats().connection_losses == 1; }, 3s))
      << "stuck: " << backend->calls_stuck() << ", losses: " << backend->stats().connection_losses;
  // And it serves the next caller: a quick UNAVAILABLE (the new context cannot be opened), not a wait
  // behind a hung command.
  StatusOr<SecureBytes> refused = backend->Open(1, *sealed, "aad");
  EXPECT_TRUE(IsUnavailable(refused.status())) << refused.status().ToString();
  EXPECT_EQ(backend->stats().expired_in_queue, 0u);

  pty_->Release();
  // A TPM without a resource manager (swtpm here) still holds the objects of the abandoned context;
  // the new one flushes them, or reloading the key would find no free slot.
  StatusOr<SecureBytes> opened = UnavailableError("not tried");
  ASSERT_TRUE(Eventually(
      [&] {
        opened = backend->Open(1, *sealed, "aad");
        return opened.ok();
      },
      5s))
      << opened.status().ToString();
  EXPECT_EQ(opened->view(), "seed");
  EXPECT_GE(backend->stats().connects, 2u);
  for (int i = 0; i < 5; ++i) {
    StatusOr<std::string> again = backend->Seal(1, "seed", "aad");
    ASSERT_TRUE(again.ok()) << i << ": " << again.status().ToString();
  }
}

TEST_F(TctiTimeoutTest, TheDeadlineMessageSaysTheTpmDidNotAnswer) {
  auto backend = LoadedBackend();
  pty_->Hang();
  StatusOr<std::string> during = backend->Seal(1, "seed", "aad");
  ASSERT_TRUE(IsUnavailable(during.status()));
  EXPECT_NE(during.status().message().find("did not answer"), std::string::npos) << during.status().message();
}

}  // namespace
}  // namespace trousseau::tpm
