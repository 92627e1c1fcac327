// token init: a free slot's token gets a label, an SO PIN and a user PIN, all from files.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/pin_source.h"
#include "hsm/token_discovery.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

// Every token already initialised: names them, since a module whose token its own tools set up (NSS
// softoken's "NSS Certificate DB" after `certutil -N`) needs no token init at all.
std::string NoFreeSlotHint(const hsm::Pkcs11Module& module, const Status& refused) {
  std::string message(refused.message());
  StatusOr<std::vector<hsm::TokenSlot>> tokens = hsm::TokensPresent(module.api());
  const auto is_free = [](const hsm::TokenSlot& token) { return !token.initialized(); };
  if (!tokens.ok() || tokens->empty() || std::any_of(tokens->begin(), tokens->end(), is_free)) return message;
  std::vector<std::string> labels;
  for (const hsm::TokenSlot& token : *tokens) labels.push_back(StrCat("'", token.Label(), "'"));
  return StrCat(message, ": ", StrJoin(labels, ", "),
                ". token init never re-initialises a token (C_InitToken erases it); to use one of these, name it "
                "in the --pkcs11-uri of `key generate` (token=LABEL) with its user PIN in pin-source");
}

}  // namespace

int TokenInit(const TokenInitOptions& options) {
  if (options.module.empty() || options.module[0] != '/') {
    return Fail(kExitUsage,
                "--module needs the absolute path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)");
  }
  if (options.module_init_reserved && options.module_init_reserved->empty()) {
    return Fail(kExitUsage, "--module-init-reserved is empty (leave it out for a module that needs no string)");
  }
  // Both PIN files are checked before the token is touched: owner-only, regular, not empty.
  StatusOr<SecureBytes> so_pin = hsm::ReadPinFile(options.so_pin_file);
  if (!so_pin.ok()) return Fail(kExitUsage, StrCat("--so-pin-file: ", so_pin.status().message()));
  StatusOr<SecureBytes> user_pin = hsm::ReadPinFile(options.pin_file);
  if (!user_pin.ok()) return Fail(kExitUsage, StrCat("--pin-file: ", user_pin.status().message()));

  StatusOr<std::unique_ptr<hsm::Pkcs11Module>> module =
      hsm::Pkcs11Module::Load(options.module, options.module_init_reserved);
  if (!module.ok()) return Fail(kExitUsage, module.status().message());
  // C_Initialize first, on its own: a module refusing its arguments (or their absence) is a configuration
  // error (its message names --module-init-reserved as well as the URI attribute), an outage is not.
  if (Status initialized = (*module)->Initialize(); !initialized.ok()) {
    return Fail(IsFailedPrecondition(initialized) ? kExitUsage : kExitFailed, initialized.message());
  }
  StatusOr<hsm::InitializedToken> token = hsm::InitToken(**module, options.label, *so_pin, *user_pin);
  if (!token.ok()) {
    // A label that cannot be a token label is a usage error; an existing label, no free slot or a
    // device failure is an operation failure.
    if (IsInvalidArgument(token.status())) return Fail(kExitUsage, token.status().message());
    if (IsFailedPrecondition(token.status())) return Fail(kExitFailed, NoFreeSlotHint(**module, token.status()));
    return Fail(kExitFailed, token.status().message());
  }

  // The URI's pin-source must be absolute (the plugin and the tools refuse a relative one: it would
  // depend on their working directory), so a relative --pin-file is printed as the file it named here.
  std::error_code error;
  std::filesystem::path pin_path = std::filesystem::absolute(options.pin_file, error);
  if (error) pin_path = options.pin_file;
  std::string uri = StrCat("pkcs11:token=", PercentEncode(token->label, false),
                           ";object=kek?module-path=", PercentEncode(options.module, true),
                           "&pin-source=file:", PercentEncode(pin_path.lexically_normal().string(), true));
  if (options.module_init_reserved) {
    StrAppend(uri, "&x-init-reserved=", PercentEncode(*options.module_init_reserved, true));
  }
  if (options.json) {
    std::cout << "{\"label\":" << JsonQuote(token->label) << ",\"serial\":" << JsonQuote(token->serial)
              << ",\"module\":" << JsonQuote(options.module) << ",\"pkcs11_uri\":" << JsonQuote(uri) << "}\n";
    return kExitOk;
  }
  std::cout << "initialised token '" << token->label << "' (serial " << token->serial << ") of " << options.module
            << "\n"
            << "SO PIN set from " << options.so_pin_file << ", user PIN from " << options.pin_file << "\n"
            << "The plugin and the `key` commands find it by label (slot ids change), e.g.:\n"
            << "  " << kToolName << " key generate --pkcs11-uri '" << uri << "'\n";
  return kExitOk;
}

}  // namespace trousseau::init
