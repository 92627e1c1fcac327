// Random bytes from the device `secret generate` is told to use: the PKCS#11 token of a URI (the
// plugin's --pkcs11-uri, PIN from its pin-source) or a TPM 2.0 (--tpm-tcti). Exactly one.
#pragma once

#include <cstddef>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::secret {

struct DeviceChoice {
  std::string pkcs11_uri;
  std::string tpm_tcti;
};

struct DeviceBytes {
  SecureBytes bytes;
  std::string description;  // "pkcs11 token 'X'" or "tpm2 (TCTI)": the generated-from annotation
};

StatusOr<DeviceBytes> DeviceRandomBytes(const DeviceChoice& device, size_t size);

}  // namespace trousseau::secret
