#include "tests/tpm/tabrmd.h"

#include <stdlib.h>

#include "tpm/tpm_device.h"

namespace trousseau::testing {

std::unique_ptr<Tabrmd> Tabrmd::Start(const std::string& dir, const Swtpm& tpm) {
  std::unique_ptr<Tabrmd> broker(new Tabrmd());
  const std::string bus_address = "unix:path=" + dir + "/dbus.sock";
  broker->bus_ = std::make_unique<Subprocess>(
      std::vector<std::string>{"/usr/bin/dbus-daemon", "--session", "--nofork", "--nopidfile",
                               "--address=" + bus_address},
      dir + "/dbus.log");
  if (!broker->bus_->started()) return nullptr;
  if (!Eventually([&] { return UnixSocketAccepts(dir + "/dbus.sock"); }, std::chrono::seconds(10))) {
    return nullptr;
  }
  ::setenv("DBUS_SESSION_BUS_ADDRESS", bus_address.c_str(), /*overwrite=*/1);
  broker->broker_ = std::make_unique<Subprocess>(
      std::vector<std::string>{"/usr/sbin/tpm2-abrmd", "--session", "--allow-root", "--flush-all",
                               "--tcti=" + tpm.Tcti()},
      dir + "/tabrmd.log");
  if (!broker->broker_->started()) return nullptr;
  // Ready once a client can open a TPM connection through it.
  const bool up = Eventually([&] { return tpm::TpmDevice::Open(broker->Tcti()).ok(); }, std::chrono::seconds(15));
  return up ? std::move(broker) : nullptr;
}

Tabrmd::~Tabrmd() {
  broker_.reset();  // SIGKILL + reap
  bus_.reset();
}

std::string Tabrmd::Log() const { return broker_ ? broker_->Log() : std::string(); }

}  // namespace trousseau::testing
