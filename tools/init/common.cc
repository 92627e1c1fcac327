#include <cstdio>
#include <iostream>

#include "core/strings.h"
#include "tools/init/init_tool.h"

namespace trousseau::init {

int Fail(int exit_code, const std::string& message) {
  std::cerr << kToolName << ": " << message << "\n";
  return exit_code;
}

int FailStatus(const Status& status) { return Fail(kExitFailed, status.message()); }

std::string Hex(const std::string& bytes) { return HexEncode(bytes); }

std::string Family::Describe() const { return StrCat("key family '", label(), "' on ", uri->token_description()); }

int OpenFamily(const std::string& uri_text, Family& family) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(uri_text);
  if (!uri.ok()) return Fail(kExitUsage, uri.status().message());
  family.uri = *std::move(uri);
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*family.uri);
  if (!admin.ok()) {
    // Configuration (module path, PIN file, missing PIN, ambiguous token) is a usage error; a token
    // that is not there, a device failure or a rejected PIN is an operation failure.
    const Status& s = admin.status();
    const bool config = IsFailedPrecondition(s) || IsInvalidArgument(s);
    return Fail(config ? kExitUsage : kExitFailed, s.message());
  }
  family.admin = *std::move(admin);
  StatusOr<std::vector<hsm::KeyObject>> keys = hsm::ListKeyFamily(family.session(), family.label());
  if (!keys.ok()) return FailStatus(keys.status());
  family.keys = *std::move(keys);
  return kExitOk;
}

}  // namespace trousseau::init
