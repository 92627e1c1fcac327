// Random bytes from the token a PKCS#11 URI names (the plugin's --pkcs11-uri, with its pin-source),
// for `trousseauctl secret generate`: load the module, find the token, open a session, log in (some
// devices serve their RNG only to a logged-in user), C_GenerateRandom, and close everything again.
#pragma once

#include <cstddef>
#include <string>

#include "core/secure_bytes.h"
#include "core/status.h"

namespace trousseau::hsm {

struct TokenRandom {
  SecureBytes bytes;
  std::string device;  // "pkcs11 token 'LABEL'" (serial added when the token has one), for annotations
};

// `size` bytes from the token `uri_text` names. The URI may name a key family (object=...) or not: only
// the token is used. The PIN comes from the URI's pin-source (or TROUSSEAU_HSM_PIN), as for the plugin.
StatusOr<TokenRandom> RandomFromToken(const std::string& uri_text, size_t size);

}  // namespace trousseau::hsm
