// The token-level PKCS#11 steps, split by job; this header only gathers them for older includers:
//   hsm/token_discovery.h  finding the token a URI names, sessions, login
//   hsm/key_family.h       the key family, its KEK policy, fingerprints
//   hsm/p11/gcm.h          AES-GCM on the device
// New code includes the one it needs.
#pragma once

#include "hsm/key_family.h"
#include "hsm/p11/gcm.h"
#include "hsm/token_discovery.h"
