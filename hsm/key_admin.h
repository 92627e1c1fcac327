// Provisioning steps on the token (used by trousseau-hsm-init and by tests): create a new version
// of the KEK family on the device.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/status.h"
#include "hsm/pkcs11_module.h"

namespace trousseau::hsm {

struct KekOptions {
  // Non-modifiable keys cannot have their label, id or usage changed later. SoftHSM also refuses
  // to copy them into a session (CKR_ATTRIBUTE_READ_ONLY), so the plugin then uses the token object.
  bool modifiable = false;
};

// Generates AES-256 key `version` of family `label` inside the token: token object, private,
// sensitive, never extractable, encrypt/decrypt only (no wrap, unwrap, sign, verify, derive),
// CKA_ID = version. Needs a logged-in read-write session. Returns the object handle.
StatusOr<CK_OBJECT_HANDLE> GenerateKekVersion(const Session& session, std::string_view label, uint64_t version,
                                              KekOptions options = {});

// Destroys the token object of one version.
Status DestroyKeyObject(const Session& session, CK_OBJECT_HANDLE object);

}  // namespace trousseau::hsm
