// token init: a free slot's token gets a label, an SO PIN and a user PIN, all from files.
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/pin_source.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {
namespace {

// Percent-encodes what RFC 7512 does not allow as is; '/' stays (paths in the query read better).
std::string UriEscape(std::string_view text, bool keep_slash) {
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

}  // namespace

int TokenInit(const TokenInitOptions& options) {
  if (options.module.empty() || options.module[0] != '/') {
    return Fail(kExitUsage,
                "--module needs the absolute path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so)");
  }
  // Both PIN files are checked before the token is touched: owner-only, regular, not empty.
  StatusOr<SecureBytes> so_pin = hsm::ReadPinFile(options.so_pin_file);
  if (!so_pin.ok()) return Fail(kExitUsage, StrCat("--so-pin-file: ", so_pin.status().message()));
  StatusOr<SecureBytes> user_pin = hsm::ReadPinFile(options.pin_file);
  if (!user_pin.ok()) return Fail(kExitUsage, StrCat("--pin-file: ", user_pin.status().message()));

  StatusOr<std::unique_ptr<hsm::Pkcs11Module>> module = hsm::Pkcs11Module::Load(options.module);
  if (!module.ok()) return Fail(kExitUsage, module.status().message());
  StatusOr<hsm::InitializedToken> token = hsm::InitToken(**module, options.label, *so_pin, *user_pin);
  if (!token.ok()) {
    // A label that cannot be a token label is a usage error; an existing label, no free slot or a
    // device failure is an operation failure.
    return Fail(IsInvalidArgument(token.status()) ? kExitUsage : kExitFailed, token.status().message());
  }

  // The URI's pin-source must be absolute (the plugin and the tools refuse a relative one: it would
  // depend on their working directory), so a relative --pin-file is printed as the file it named here.
  std::error_code error;
  std::filesystem::path pin_path = std::filesystem::absolute(options.pin_file, error);
  if (error) pin_path = options.pin_file;
  const std::string uri = StrCat("pkcs11:token=", UriEscape(token->label, false),
                                 ";object=kek?module-path=", UriEscape(options.module, true),
                                 "&pin-source=file:", UriEscape(pin_path.lexically_normal().string(), true));
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
