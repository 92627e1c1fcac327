// The TPM access broker and resource manager (tpm2-abrmd) in front of a test swtpm, on a private
// D-Bus session bus, so that several processes share one TPM the way they share /dev/tpmrm0 on a
// node: the running plugin and `trousseau-hsm-init tpm rotate` at the same time.
#pragma once

#include <memory>
#include <string>

#include "tools/support/subprocess.h"
#include "tests/tpm/swtpm.h"

namespace trousseau::testing {

class Tabrmd {
 public:
  // Starts tpm2-abrmd for `tpm`, logging under `dir`, on this process's private D-Bus session bus
  // (started on first use; DBUS_SESSION_BUS_ADDRESS points at it, so children started afterwards
  // reach it too). Each broker owns its own bus name. Null on failure.
  static std::unique_ptr<Tabrmd> Start(const std::string& dir, const Swtpm& tpm);
  ~Tabrmd();

  // The TCTI clients use.
  std::string Tcti() const { return "tabrmd:bus_name=" + bus_name_ + ",bus_type=session"; }
  std::string Log() const;

 private:
  Tabrmd() = default;

  std::string bus_name_;
  std::unique_ptr<Subprocess> broker_;
};

}  // namespace trousseau::testing
