// Where the token PIN comes from: a file only its owner can read, or TROUSSEAU_HSM_PIN.
// Never a flag value. The PIN is read when needed (each login) and wiped right after.
#pragma once

#include <optional>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::hsm {

inline constexpr char kPinEnvVar[] = "TROUSSEAU_HSM_PIN";

// Reads a PIN file: a regular file owned by this user or root, with no group/other permissions.
// Surrounding whitespace/newlines are not part of the PIN.
StatusOr<SecureBytes> ReadPinFile(const std::string& path);

// From `pin_file` if given, else from TROUSSEAU_HSM_PIN; nullopt when neither is set.
StatusOr<std::optional<SecureBytes>> LoadPin(const std::optional<std::string>& pin_file);

}  // namespace trousseau::hsm
