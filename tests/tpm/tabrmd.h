// The TPM access broker and resource manager (tpm2-abrmd) in front of a test swtpm, on a private
// D-Bus session bus, so that several processes share one TPM the way they share /dev/tpmrm0 on a
// node: the running plugin and `trousseau-hsm-init tpm rotate` at the same time.
#pragma once

#include <memory>
#include <string>

#include "tests/testing/subprocess.h"
#include "tests/tpm/swtpm.h"

namespace trousseau::testing {

class Tabrmd {
 public:
  // Starts dbus-daemon and tpm2-abrmd under `dir` for `tpm`, and points this process's
  // DBUS_SESSION_BUS_ADDRESS at that bus (children started afterwards inherit it). Null on failure.
  static std::unique_ptr<Tabrmd> Start(const std::string& dir, const Swtpm& tpm);
  ~Tabrmd();

  // The TCTI clients use.
  std::string Tcti() const { return "tabrmd:bus_type=session"; }
  std::string Log() const;

 private:
  Tabrmd() = default;

  std::unique_ptr<Subprocess> bus_;
  std::unique_ptr<Subprocess> broker_;
};

}  // namespace trousseau::testing
