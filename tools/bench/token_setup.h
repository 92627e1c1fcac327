// The SoftHSM token `run` and `soak` measure against, and the switch that routes a plugin through the
// fault-injecting shim (tests/fault_shim) to it.
#pragma once

#include <memory>
#include <string>

#include "tools/support/softhsm_token.h"

namespace trousseau::bench {

// A scratch token `name` holding key family "kek" version 1; nullptr (reason on stderr) on failure.
// Create it before any PKCS#11 use in this process: SoftHSM reads SOFTHSM2_CONF once, at its first
// C_Initialize.
std::unique_ptr<support::SoftHsmToken> CreateTokenWithKek(const std::string& name);

// Writes `words` to the shim's control file and points the shim (in the children started from now
// on) at `module` and that file.
void RouteThroughShim(const std::string& module, const std::string& control, const std::string& words);
void StopRoutingThroughShim();

}  // namespace trousseau::bench
