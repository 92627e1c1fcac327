// key_id: the name kube-apiserver stores beside every object and logs freely.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace trousseau {

// "kek-v<version>-<32 hex>": the version for humans, then 128 bits of SHA-256 over the backend kind,
// the key family label, the version and the device-computed key fingerprint. The same key on
// replicated HSMs gets the same key_id on every node; a different key, even one re-created with the
// same label and version, gets a different one, so a key_id is never reused for another key.
std::string DeriveKeyId(std::string_view backend_kind, std::string_view family_label, uint64_t version,
                        std::string_view fingerprint);

}  // namespace trousseau
