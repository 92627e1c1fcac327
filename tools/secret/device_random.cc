#include "tools/secret/device_random.h"

#include <chrono>
#include <memory>

#include "core/strings.h"
#include "hsm/token_random.h"
#include "tpm/tpm_device.h"

namespace trousseau::secret {

StatusOr<DeviceBytes> DeviceRandomBytes(const DeviceChoice& device, size_t size) {
  if (device.pkcs11_uri.empty() == device.tpm_tcti.empty()) {
    return InvalidArgumentError(
        "name the device whose RNG to use: --pkcs11-uri (the plugin's, with its pin-source) or --tpm-tcti, one of "
        "them");
  }
  if (!device.pkcs11_uri.empty()) {
    StatusOr<hsm::TokenRandom> random = hsm::RandomFromToken(device.pkcs11_uri, size);
    if (!random.ok()) return Status(random.status().code(), StrCat("the token's RNG: ", random.status().message()));
    return DeviceBytes{std::move(random->bytes), std::move(random->device)};
  }
  StatusOr<std::unique_ptr<tpm::TpmDevice>> tpm = tpm::TpmDevice::Open(device.tpm_tcti);
  if (!tpm.ok()) return Status(tpm.status().code(), StrCat("the TPM: ", tpm.status().message()));
  (*tpm)->set_deadline(tpm::Clock::now() + std::chrono::seconds(30));
  StatusOr<SecureBytes> bytes = (*tpm)->GetRandom(size);
  if (!bytes.ok()) return Status(bytes.status().code(), StrCat("the TPM's RNG: ", bytes.status().message()));
  return DeviceBytes{*std::move(bytes), StrCat("tpm2 (", device.tpm_tcti, ")")};
}

}  // namespace trousseau::secret
