#include "hsm/token_random.h"

#include <memory>
#include <utility>

#include "core/strings.h"
#include "hsm/p11/random.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/token_discovery.h"

namespace trousseau::hsm {

StatusOr<TokenRandom> RandomFromToken(const std::string& uri_text, size_t size) {
  // The plugin's URI names a key family; so may this one (x-recipient alone is fine too). Only the
  // token, module and PIN are used.
  StatusOr<Pkcs11Uri> uri = Pkcs11Uri::Parse(uri_text, KeyFamilyInUri::kOptionalWithRecipient);
  if (!uri.ok()) return uri.status();
  StatusOr<std::unique_ptr<Pkcs11Module>> module = Pkcs11Module::Load(uri->module_path(), uri->init_reserved());
  if (!module.ok()) return module.status();
  if (Status s = (*module)->Initialize(); !s.ok()) return s;
  StatusOr<TokenSlot> token = FindToken((*module)->api(), *uri);
  if (!token.ok()) return token.status();
  StatusOr<TokenRandom> result = [&]() -> StatusOr<TokenRandom> {
    StatusOr<Session> session = OpenSession((*module)->api(), token->slot, /*read_write=*/false);
    if (!session.ok()) return session.status();
    if (Status s = LoginUser(*session, *token, uri->pin_file()); !s.ok()) return s;
    StatusOr<SecureBytes> bytes = p11::GenerateRandom(*session, size);
    if (!bytes.ok()) return bytes.status();
    const std::string serial = token->Serial();
    return TokenRandom{*std::move(bytes),
                       StrCat("pkcs11 token '", token->Label(), "'", serial.empty() ? "" : " serial ", serial)};
  }();
  (*module)->Finalize();
  return result;
}

}  // namespace trousseau::hsm
