// Standard base64 (RFC 4648, with padding), as a Secret's data carries its values in JSON.
#pragma once

#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "tools/kube/wiped_string.h"

namespace trousseau::kube {

// The encoding of `data`, in a string that is wiped when it goes.
WipedString Base64Encode(std::string_view data);

// The bytes `text` encodes. INVALID_ARGUMENT (without the text) when it is not base64.
StatusOr<SecureBytes> Base64Decode(std::string_view text);

}  // namespace trousseau::kube
