// Finding the token a URI names, opening sessions on it, logging in: shared by the plugin backend and
// the provisioning tool.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "hsm/pkcs11.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"

namespace trousseau::hsm {

struct TokenSlot {
  CK_SLOT_ID slot = 0;
  CK_TOKEN_INFO info{};

  std::string Label() const;   // without the padding
  std::string Serial() const;  // without the padding
  std::string Manufacturer() const;
  std::string Model() const;
  bool initialized() const;
};

// Every slot that holds a token, with its token info; slots whose info cannot be read are skipped.
StatusOr<std::vector<TokenSlot>> TokensPresent(CK_FUNCTION_LIST* api);

// The one token the URI names. Slot ids are not stable (SoftHSM draws them at random), so tokens
// are matched by label/serial/manufacturer/model; zero or several matches are errors.
StatusOr<TokenSlot> FindToken(CK_FUNCTION_LIST* api, const Pkcs11Uri& uri);

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write);

// Logs the application in as CKU_USER (one login covers every session). The PIN comes from the
// URI's pin-source or TROUSSEAU_HSM_PIN and is wiped after use. A rejected PIN gives
// PERMISSION_DENIED: callers must not retry it, or the token locks.
// What C_Login answered, for the plugin's login metrics: kNotTried when LoginUser did not call it (the
// token needs no login, or there was no PIN to give).
enum class LoginOutcome { kNotTried, kOk, kPinIncorrect, kPinLocked, kPinExpired, kOther };
Status LoginUser(const Session& session, const TokenSlot& token, const std::optional<std::string>& pin_file,
                 LoginOutcome* outcome = nullptr);

}  // namespace trousseau::hsm
