#include "hsm/admin.h"

#include <vector>

#include "core/key_id.h"
#include "core/strings.h"
#include "hsm/p11/calls.h"
#include "hsm/p11/provisioning_calls.h"
#include "hsm/pkcs11_backend.h"

namespace trousseau::hsm {
namespace {

// Initialised tokens labelled `label`.
StatusOr<std::vector<TokenSlot>> TokensLabelled(CK_FUNCTION_LIST* api, std::string_view label) {
  StatusOr<std::vector<TokenSlot>> tokens = TokensPresent(api);
  if (!tokens.ok()) return tokens.status();
  std::vector<TokenSlot> matches;
  for (const TokenSlot& token : *tokens) {
    if (token.initialized() && token.Label() == label) matches.push_back(token);
  }
  return matches;
}

Status CheckInitTokenArguments(std::string_view label, const SecureBytes& so_pin, const SecureBytes& user_pin) {
  constexpr size_t kLabelField = sizeof(CK_TOKEN_INFO::label);
  if (label.empty() || label.size() > kLabelField) {
    return InvalidArgumentError(StrCat("a token label has 1 to ", kLabelField, " bytes, not ", label.size()));
  }
  if (label.front() == ' ' || label.back() == ' ' || label.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("a token label may not start or end with a space or contain a NUL byte");
  }
  if (so_pin.empty() || user_pin.empty()) return InvalidArgumentError("the SO PIN and the user PIN may not be empty");
  return OkStatus();
}

// The first slot with an uninitialised token; ALREADY_EXISTS if an initialised token carries `label`.
StatusOr<TokenSlot> FreeSlot(Pkcs11Module& module, std::string_view label) {
  StatusOr<std::vector<TokenSlot>> tokens = TokensPresent(module.api());
  if (!tokens.ok()) return tokens.status();
  const TokenSlot* free_slot = nullptr;
  for (const TokenSlot& token : *tokens) {
    if (!token.initialized()) {
      if (free_slot == nullptr) free_slot = &token;
    } else if (token.Label() == label) {
      return AlreadyExistsError(StrCat("a token labelled '", label, "' already exists (serial ", token.Serial(),
                                       "); refusing to create a second one, which would make the label ambiguous"));
    }
  }
  if (free_slot == nullptr) {
    return FailedPreconditionError(StrCat("no slot of ", module.path(), " has an uninitialised token (", tokens->size(),
                                          " token(s), all initialised)"));
  }
  return *free_slot;
}

// SoftHSM hands a new token a new slot id (derived from its serial): finds it again by label.
StatusOr<TokenSlot> FindNewToken(Pkcs11Module& module, std::string_view label) {
  StatusOr<std::vector<TokenSlot>> found = TokensLabelled(module.api(), label);
  if (found.ok() && found->empty()) {
    // Some modules only show the change after a fresh C_Initialize.
    module.Finalize();
    if (Status s = module.Initialize(); !s.ok()) return s;
    found = TokensLabelled(module.api(), label);
  }
  if (!found.ok()) return found.status();
  if (found->size() != 1) {
    return InternalError(
        StrCat("after C_InitToken, ", found->size(), " initialised tokens are labelled '", label, "' instead of one"));
  }
  return found->front();
}

// As SO: sets the user PIN, then logs out.
Status SetUserPin(CK_FUNCTION_LIST* api, const TokenSlot& token, const SecureBytes& so_pin,
                  const SecureBytes& user_pin) {
  StatusOr<Session> session = OpenSession(api, token.slot, /*read_write=*/true);
  if (!session.ok()) return session.status();
  if (Status s = p11::Login(*session, CKU_SO, &so_pin, "SO PIN", "C_Login as SO"); !s.ok()) return s;
  Status set = p11::InitUserPin(*session, user_pin);
  p11::Logout(*session);
  return set;
}

}  // namespace

StatusOr<std::unique_ptr<AdminSession>> AdminSession::Open(const Pkcs11Uri& uri) {
  std::unique_ptr<AdminSession> admin(new AdminSession());
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(uri.module_path(), uri.init_reserved());
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

StatusOr<std::string> KeyIdOf(const Session& session, std::string_view family_label, const KeyVersion& version,
                              std::optional<GcmIvSource> gcm_iv_source) {
  StatusOr<Fingerprint> fingerprint = VersionFingerprint(session, HandlesOf(version), gcm_iv_source);
  if (!fingerprint.ok()) return fingerprint.status();
  return DeriveKeyId(kPkcs11BackendKind, family_label, version.version, fingerprint->bytes);
}

StatusOr<InitializedToken> InitToken(Pkcs11Module& module, std::string_view label, const SecureBytes& so_pin,
                                     const SecureBytes& user_pin) {
  if (Status s = CheckInitTokenArguments(label, so_pin, user_pin); !s.ok()) return s;
  if (Status s = module.Initialize(); !s.ok()) return s;
  StatusOr<TokenSlot> free_slot = FreeSlot(module, label);
  if (!free_slot.ok()) return free_slot.status();
  std::string padded(sizeof free_slot->info.label, ' ');
  padded.replace(0, label.size(), label);
  if (Status s = p11::InitToken(module.api(), free_slot->slot, so_pin, padded); !s.ok()) return s;
  StatusOr<TokenSlot> token = FindNewToken(module, label);
  if (!token.ok()) return token.status();
  if (Status s = SetUserPin(module.api(), *token, so_pin, user_pin); !s.ok()) return s;

  InitializedToken result;
  result.slot = token->slot;
  result.label = std::string(label);
  std::optional<CK_TOKEN_INFO> info = p11::TokenInfo(module.api(), token->slot);
  result.serial = info ? TokenSlot{token->slot, *info}.Serial() : token->Serial();
  return result;
}

}  // namespace trousseau::hsm
