// Administration of the token, for trousseau-hsm-init and the tests: open the token a URI names for
// changes (logged in, read-write), initialise a fresh token, and name keys exactly as the plugin does.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/secure_bytes.h"
#include "core/status.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"
#include "hsm/token_discovery.h"

namespace trousseau::hsm {

// The loaded module, the token the URI names, and one read-write session logged in as the user.
// Everything is released in order on destruction: the session closes (which ends the login), then
// the module is finalised (its library stays loaded: opening again is C_Finalize + C_Initialize).
class AdminSession {
 public:
  // Loads the URI's module, C_Initialize, FindToken, a read-write session, C_Login as CKU_USER with
  // the PIN from the URI's pin-source or TROUSSEAU_HSM_PIN. Error codes: FAILED_PRECONDITION for
  // configuration (module cannot load, PIN file unreadable or too open, no PIN, ambiguous token),
  // UNAVAILABLE for a token that is not there or a device failure, PERMISSION_DENIED for a PIN the
  // token rejected (do not retry it: the token locks after a few attempts).
  static StatusOr<std::unique_ptr<AdminSession>> Open(const Pkcs11Uri& uri);

  AdminSession(const AdminSession&) = delete;
  AdminSession& operator=(const AdminSession&) = delete;

  const Session& session() const { return session_; }
  const TokenSlot& token() const { return token_; }
  CK_FUNCTION_LIST* api() const { return module_->api(); }

 private:
  AdminSession() = default;
  std::unique_ptr<Pkcs11Module> module_;  // first: outlives the session
  TokenSlot token_;
  Session session_;
};

// The key_id the plugin gives this version: DeriveKeyId("pkcs11", label, version, VersionFingerprint),
// its scheme's fingerprint (hsm/key_family.h) with the URI's x-gcm-iv (`gcm_iv_source`, nullopt: found
// out on the device) exactly as the plugin computes it. Needs a session that is logged in.
StatusOr<std::string> KeyIdOf(const Session& session, std::string_view family_label, const KeyVersion& version,
                              std::optional<GcmIvSource> gcm_iv_source);

// What InitToken did.
struct InitializedToken {
  CK_SLOT_ID slot = 0;  // where the token sits now (SoftHSM moves a new token to another slot id)
  std::string label;
  std::string serial;
};

// Initialises the token in a free slot of `module` (one whose token lacks CKF_TOKEN_INITIALIZED):
// C_InitToken with the SO PIN and `label`, then as SO C_InitPIN with the user PIN, then logs out.
// Refuses (ALREADY_EXISTS) if an initialised token already carries `label`; INVALID_ARGUMENT if the
// label does not fit the 32-byte field (or a PIN is empty); FAILED_PRECONDITION if no slot is free.
// A PIN the token rejects gives PERMISSION_DENIED. The PINs are not kept.
StatusOr<InitializedToken> InitToken(Pkcs11Module& module, std::string_view label, const SecureBytes& so_pin,
                                     const SecureBytes& user_pin);

}  // namespace trousseau::hsm
