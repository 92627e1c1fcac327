#include "tests/tpm/tabrmd.h"

#include <stdlib.h>
#include <unistd.h>

#include <atomic>

#include "tpm/tpm_device.h"

namespace trousseau::testing {
namespace {

// One private session bus for the whole test process. GDBus (inside the tabrmd TCTI) keeps its session
// bus connection for the life of the process, so a bus per broker would leave every broker after the
// first unreachable from here. Each broker owns its own name on this bus instead.
class SessionBus {
 public:
  static SessionBus* Get() {
    static SessionBus* bus = Create();
    return bus != nullptr && bus->up_ ? bus : nullptr;
  }

 private:
  static SessionBus* Create() {
    static SessionBus* created = new SessionBus();
    // Stop the daemon and remove its directory when the test binary exits.
    std::atexit([] { delete created; });
    return created;
  }

  SessionBus() {
    const std::string address = "unix:path=" + dir_.path() + "/dbus.sock";
    daemon_ = std::make_unique<Subprocess>(std::vector<std::string>{"/usr/bin/dbus-daemon", "--session", "--nofork",
                                                                    "--nopidfile", "--address=" + address},
                                           dir_.path() + "/dbus.log");
    up_ = daemon_->started() &&
          Eventually([&] { return UnixSocketAccepts(dir_.path() + "/dbus.sock"); }, std::chrono::seconds(10));
    if (up_) ::setenv("DBUS_SESSION_BUS_ADDRESS", address.c_str(), /*overwrite=*/1);
  }

  TempDir dir_;
  std::unique_ptr<Subprocess> daemon_;  // after dir_: killed before the directory is removed
  bool up_ = false;
};

}  // namespace

std::unique_ptr<Tabrmd> Tabrmd::Start(const std::string& dir, const Swtpm& tpm) {
  if (SessionBus::Get() == nullptr) return nullptr;
  static std::atomic<int> brokers{0};
  std::unique_ptr<Tabrmd> broker(new Tabrmd());
  broker->bus_name_ = "com.intel.tss2.Tabrmd.test" + std::to_string(::getpid()) + "x" + std::to_string(++brokers);
  broker->broker_ = std::make_unique<Subprocess>(
      std::vector<std::string>{"/usr/sbin/tpm2-abrmd", "--session", "--allow-root", "--flush-all",
                               "--dbus-name=" + broker->bus_name_, "--tcti=" + tpm.Tcti()},
      dir + "/tabrmd.log");
  if (!broker->broker_->started()) return nullptr;
  // Ready once a client can open a TPM connection through it.
  const bool up = Eventually([&] { return tpm::TpmDevice::Open(broker->Tcti()).ok(); }, std::chrono::seconds(15));
  return up ? std::move(broker) : nullptr;
}

Tabrmd::~Tabrmd() {
  broker_.reset();  // SIGKILL + reap
}

std::string Tabrmd::Log() const { return broker_ ? broker_->Log() : std::string(); }

}  // namespace trousseau::testing
