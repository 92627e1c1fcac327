// Where the token PIN comes from: a file only its owner can read, or TROUSSEAU_HSM_PIN.
// Never a flag value.
//
// A PIN file is read at each login and the copy wiped right after. TROUSSEAU_HSM_PIN is read once:
// the first LoadPin that finds it moves the value into a process-lifetime buffer (mlock'ed where the
// system allows; it lives as long as the process), overwrites the variable's bytes in place (so /proc/PID/environ no
// longer shows it) and removes it from the environment (so child processes do not inherit it). Later
// logins (a re-login after an outage, a key refresh) take the PIN from that buffer.
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
// The same checks for another secret kept in a file (an administrator's private key): `what` names it
// in the messages ("administrator key file").
StatusOr<SecureBytes> ReadSecretFile(const std::string& path, std::string_view what);

// From `pin_file` if given, else the PIN TROUSSEAU_HSM_PIN held (see above); nullopt when neither is
// set. A TROUSSEAU_HSM_PIN set again later (tests, a re-exec'ing wrapper) replaces the kept value.
StatusOr<std::optional<SecureBytes>> LoadPin(const std::optional<std::string>& pin_file);

// Moves TROUSSEAU_HSM_PIN, if set, into the kept buffer now, without loading anything else. Tools
// call it first thing in main(), so the variable is gone before any thread or child exists.
void CaptureEnvironmentPin();

}  // namespace trousseau::hsm
