// Provisioning of a PKCS#11 recipient key (docs/ha.md "How it works"; hsm/recipient_key.h): for
// trousseau-hsm-init and tests only, in trousseau_hsm_provisioning, which the plugin does not link.
#pragma once

#include <string_view>

#include "core/status.h"
#include "hsm/pkcs11_module.h"
#include "hsm/recipient_key.h"

namespace trousseau::hsm {

// Generates the recipient key pair `label` inside the token (CKM_EC_KEY_PAIR_GEN, P-256): the private
// key a token object, private, sensitive, never extractable, derive only (no sign, decrypt, unwrap); the
// public key a token object that may not derive; both with the same fresh random CKA_ID. Returns it as
// ShowRecipient reads it back. ALREADY_EXISTS when a private or public key labelled `label` is on the
// token already (a second pair would make FindRecipientKey ambiguous). A token without
// CKM_EC_KEY_PAIR_GEN / CKM_ECDH1_DERIVE for P-256 is FAILED_PRECONDITION naming what it lacks
// (hsm/capabilities.h MissingForRecipient). If the pair the token made is not what was asked for, it is
// destroyed again and the error names why. Needs a logged-in read-write session on `slot`'s token.
StatusOr<RecipientKeyInfo> CreateRecipientKey(const Session& session, CK_SLOT_ID slot,
                                              std::string_view label = kDefaultRecipientLabel);

}  // namespace trousseau::hsm
