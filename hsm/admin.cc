#include "hsm/admin.h"

#include <cstring>
#include <vector>

#include "core/key_id.h"
#include "core/strings.h"
#include "hsm/pkcs11_error.h"

namespace trousseau::hsm {
namespace {

CK_UTF8CHAR* PinBytes(const SecureBytes& pin) { return const_cast<CK_UTF8CHAR*>(pin.data()); }

// Every slot that has a token, with its token info; slots whose info cannot be read are skipped.
StatusOr<std::vector<TokenSlot>> TokensPresent(CK_FUNCTION_LIST* api) {
  CK_ULONG count = 0;
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, nullptr, &count); rv != CKR_OK) return RvStatus(rv, "C_GetSlotList");
  std::vector<CK_SLOT_ID> slots(count);
  if (CK_RV rv = api->C_GetSlotList(CK_TRUE, slots.data(), &count); rv != CKR_OK) {
    return RvStatus(rv, "C_GetSlotList");
  }
  slots.resize(count);
  std::vector<TokenSlot> tokens;
  for (CK_SLOT_ID slot : slots) {
    TokenSlot token{slot, {}};
    if (api->C_GetTokenInfo(slot, &token.info) == CKR_OK) tokens.push_back(token);
  }
  return tokens;
}

std::string LabelOf(const TokenSlot& token) { return TrimPadded(token.info.label, sizeof token.info.label); }

// Initialised tokens labelled `label`.
StatusOr<std::vector<TokenSlot>> TokensLabelled(CK_FUNCTION_LIST* api, std::string_view label) {
  StatusOr<std::vector<TokenSlot>> tokens = TokensPresent(api);
  if (!tokens.ok()) return tokens.status();
  std::vector<TokenSlot> matches;
  for (const TokenSlot& token : *tokens) {
    if ((token.info.flags & CKF_TOKEN_INITIALIZED) && LabelOf(token) == label) matches.push_back(token);
  }
  return matches;
}

Status PinRejected(CK_RV rv, std::string_view which, std::string_view step) {
  switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LOCKED:
      return PermissionDeniedError(StrCat(step, ": the token rejected the ", which, " (", RvName(rv), ")"));
    default:
      return RvStatus(rv, step);
  }
}

}  // namespace

StatusOr<std::unique_ptr<AdminSession>> AdminSession::Open(const Pkcs11Uri& uri) {
  std::unique_ptr<AdminSession> admin(new AdminSession());
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(uri.module_path());
  if (!module.ok()) return module.status();
  admin->module_ = *std::move(module);
  if (Status s = admin->module_->Initialize(); !s.ok()) return s;
  StatusOr<TokenSlot> token = FindToken(admin->module_->api(), uri);
  if (!token.ok()) return token.status();
  admin->token_ = *token;
  StatusOr<Session> session = OpenSession(admin->module_->api(), token->slot, /*read_write=*/true);
  if (!session.ok()) return session.status();
  admin->session_ = *std::move(session);
  if (Status s = LoginUser(admin->session_, admin->token_, uri.pin_file()); !s.ok()) return s;
  return admin;
}

StatusOr<std::string> KeyIdOf(const Session& session, std::string_view family_label, const KeyObject& key) {
  StatusOr<std::string> fingerprint = KeyFingerprint(session, key.handle);
  if (!fingerprint.ok()) return fingerprint.status();
  return DeriveKeyId(kPkcs11BackendKind, family_label, key.version, *fingerprint);
}

StatusOr<InitializedToken> InitToken(Pkcs11Module& module, std::string_view label, const SecureBytes& so_pin,
                                     const SecureBytes& user_pin) {
  CK_TOKEN_INFO probe{};
  if (label.empty() || label.size() > sizeof probe.label) {
    return InvalidArgumentError(StrCat("a token label has 1 to ", sizeof probe.label, " bytes, not ", label.size()));
  }
  if (label.front() == ' ' || label.back() == ' ' || label.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("a token label may not start or end with a space or contain a NUL byte");
  }
  if (so_pin.empty() || user_pin.empty()) return InvalidArgumentError("the SO PIN and the user PIN may not be empty");
  if (Status s = module.Initialize(); !s.ok()) return s;
  CK_FUNCTION_LIST* api = module.api();

  StatusOr<std::vector<TokenSlot>> tokens = TokensPresent(api);
  if (!tokens.ok()) return tokens.status();
  const TokenSlot* free_slot = nullptr;
  for (const TokenSlot& token : *tokens) {
    if (!(token.info.flags & CKF_TOKEN_INITIALIZED)) {
      if (free_slot == nullptr) free_slot = &token;
    } else if (LabelOf(token) == label) {
      return AlreadyExistsError(StrCat("a token labelled '", label, "' already exists (serial ",
                                       TrimPadded(token.info.serialNumber, sizeof token.info.serialNumber),
                                       "); refusing to create a second one, which would make the label ambiguous"));
    }
  }
  if (free_slot == nullptr) {
    return FailedPreconditionError(StrCat("no slot of ", module.path(), " has an uninitialised token (",
                                          tokens->size(), " token(s), all initialised)"));
  }

  CK_UTF8CHAR padded[sizeof probe.label];
  std::memset(padded, ' ', sizeof padded);
  std::memcpy(padded, label.data(), label.size());
  if (CK_RV rv = api->C_InitToken(free_slot->slot, PinBytes(so_pin), so_pin.size(), padded); rv != CKR_OK) {
    return PinRejected(rv, "SO PIN", "C_InitToken");
  }

  // SoftHSM hands the new token a new slot id (derived from its serial); find it again by label.
  StatusOr<std::vector<TokenSlot>> found = TokensLabelled(api, label);
  if (found.ok() && found->empty()) {
    // Some modules only show the change after a fresh C_Initialize.
    module.Finalize();
    if (Status s = module.Initialize(); !s.ok()) return s;
    found = TokensLabelled(api, label);
  }
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return InternalError(StrCat("after C_InitToken, ", found->size(), " initialised tokens are labelled '", label,
                                "' instead of one"));
  }
  const TokenSlot token = found->front();

  {
    StatusOr<Session> session = OpenSession(api, token.slot, /*read_write=*/true);
    if (!session.ok()) return session.status();
    if (CK_RV rv = api->C_Login(session->handle(), CKU_SO, PinBytes(so_pin), so_pin.size()); rv != CKR_OK) {
      return PinRejected(rv, "SO PIN", "C_Login as SO");
    }
    CK_RV rv = api->C_InitPIN(session->handle(), PinBytes(user_pin), user_pin.size());
    api->C_Logout(session->handle());
    if (rv != CKR_OK) return PinRejected(rv, "user PIN", "C_InitPIN");
  }

  InitializedToken result;
  result.slot = token.slot;
  result.label = std::string(label);
  CK_TOKEN_INFO info{};
  if (api->C_GetTokenInfo(token.slot, &info) == CKR_OK) {
    result.serial = TrimPadded(info.serialNumber, sizeof info.serialNumber);
  } else {
    result.serial = TrimPadded(token.info.serialNumber, sizeof token.info.serialNumber);
  }
  return result;
}

}  // namespace trousseau::hsm
