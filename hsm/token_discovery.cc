#include "hsm/token_discovery.h"

#include <vector>

#include "core/strings.h"
#include "hsm/p11/calls.h"
#include "hsm/pin_source.h"

namespace trousseau::hsm {

std::string TokenSlot::Label() const { return TrimPadded(info.label, sizeof info.label); }
std::string TokenSlot::Serial() const { return TrimPadded(info.serialNumber, sizeof info.serialNumber); }
std::string TokenSlot::Manufacturer() const { return TrimPadded(info.manufacturerID, sizeof info.manufacturerID); }
std::string TokenSlot::Model() const { return TrimPadded(info.model, sizeof info.model); }
bool TokenSlot::initialized() const { return (info.flags & CKF_TOKEN_INITIALIZED) != 0; }

StatusOr<std::vector<TokenSlot>> TokensPresent(CK_FUNCTION_LIST* api) {
  StatusOr<std::vector<CK_SLOT_ID>> slots = p11::SlotsWithToken(api);
  if (!slots.ok()) return slots.status();
  std::vector<TokenSlot> tokens;
  for (CK_SLOT_ID slot : *slots) {
    if (std::optional<CK_TOKEN_INFO> info = p11::TokenInfo(api, slot)) tokens.push_back({slot, *info});
  }
  return tokens;
}

StatusOr<TokenSlot> FindToken(CK_FUNCTION_LIST* api, const Pkcs11Uri& uri) {
  StatusOr<std::vector<CK_SLOT_ID>> slots = p11::SlotsWithToken(api);
  if (!slots.ok()) return slots.status();
  std::vector<TokenSlot> matches;
  std::vector<std::string> present;  // labels of the initialised tokens there, for a URI that names none
  for (CK_SLOT_ID slot : *slots) {
    std::optional<CK_SLOT_INFO> slot_info = p11::SlotInfo(api, slot);
    if (!slot_info || !uri.MatchesSlot(*slot_info, slot)) continue;
    std::optional<CK_TOKEN_INFO> info = p11::TokenInfo(api, slot);
    if (!info) continue;
    TokenSlot candidate{slot, *info};
    if (!candidate.initialized()) continue;
    present.push_back(StrCat("'", QuoteForMessage(candidate.Label(), 32), "'"));
    if (uri.MatchesToken(candidate.info)) matches.push_back(candidate);
  }
  if (matches.empty()) {
    // Token labels are no secret, and the one the operator meant is usually among them.
    return UnavailableError(StrCat("no ", uri.token_description(), " found in ", slots->size(),
                                   " slot(s) with a token of ", uri.module_path(), "; ",
                                   present.empty() ? std::string("no initialised token there")
                                                   : StrCat("the tokens there: ", StrJoin(present, ", "))));
  }
  if (matches.size() > 1) {
    std::vector<std::string> serials;
    for (const TokenSlot& m : matches) serials.push_back(m.Serial());
    return FailedPreconditionError(StrCat(uri.token_description(), " matches ", matches.size(), " tokens (serials ",
                                          StrJoin(serials, ", "), "); add serial=... to the URI"));
  }
  return matches.front();
}

StatusOr<Session> OpenSession(CK_FUNCTION_LIST* api, CK_SLOT_ID slot, bool read_write) {
  return p11::OpenSession(api, slot, read_write);
}

namespace {

LoginOutcome OutcomeOf(CK_RV rv) {
  switch (rv) {
    case CKR_OK:
    case CKR_USER_ALREADY_LOGGED_IN:
      return LoginOutcome::kOk;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
      return LoginOutcome::kPinIncorrect;
    case CKR_PIN_LOCKED:
      return LoginOutcome::kPinLocked;
    case CKR_PIN_EXPIRED:
      return LoginOutcome::kPinExpired;
    default:
      return LoginOutcome::kOther;
  }
}

}  // namespace

Status LoginUser(const Session& session, const TokenSlot& token, const std::optional<std::string>& pin_file,
                 LoginOutcome* outcome) {
  if (outcome != nullptr) *outcome = LoginOutcome::kNotTried;
  StatusOr<std::optional<SecureBytes>> pin = LoadPin(pin_file);
  if (!pin.ok()) return pin.status();
  const bool protected_path = (token.info.flags & CKF_PROTECTED_AUTHENTICATION_PATH) != 0;
  if (pin->has_value() || protected_path) {
    CK_RV answered = CKR_OK;
    Status login = p11::Login(session, CKU_USER, pin->has_value() ? &**pin : nullptr, "user PIN", "", &answered);
    if (outcome != nullptr) *outcome = OutcomeOf(answered);
    return login;
  }
  if (token.info.flags & CKF_LOGIN_REQUIRED) {
    return FailedPreconditionError(
        StrCat("the token needs a PIN: add pin-source=file:/path to the URI or set ", kPinEnvVar));
  }
  return OkStatus();
}

}  // namespace trousseau::hsm
