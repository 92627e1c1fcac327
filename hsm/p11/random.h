// The device's random number generator (C_GenerateRandom), for `trousseauctl secret generate`
// (docs/secrets.md). Raw C_* calls stay here (the seam).
#pragma once

#include <cstddef>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm::p11 {

// `size` bytes from C_GenerateRandom on `session`'s token, asked for in pieces of at most 256 bytes
// (some tokens refuse more per call). Errors follow the seam (RvStatus).
StatusOr<SecureBytes> GenerateRandom(const Session& session, size_t size);

}  // namespace trousseau::hsm::p11
