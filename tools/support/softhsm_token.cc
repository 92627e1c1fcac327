#include "tools/support/softhsm_token.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/key_family.h"

namespace trousseau::support {
namespace {

// Runs `fn(session)` on a logged-in read-write session of the token.
template <typename Fn>
Status WithAdminSession(const SoftHsmToken& token, const std::string& object, Fn fn) {
  StatusOr<hsm::Pkcs11Uri> uri = hsm::Pkcs11Uri::Parse(token.Uri(object));
  if (!uri.ok()) return uri.status();
  StatusOr<std::unique_ptr<hsm::AdminSession>> admin = hsm::AdminSession::Open(*uri);
  if (!admin.ok()) return admin.status();
  return fn((*admin)->session());
}

}  // namespace

std::unique_ptr<SoftHsmToken> SoftHsmToken::Create(const std::string& label) {
  auto token = std::unique_ptr<SoftHsmToken>(new SoftHsmToken());
  char templ[] = "/tmp/trousseau-test-XXXXXX";
  token->dir_ = mkdtemp(templ);
  token->label_ = label;
  std::filesystem::create_directories(token->dir_ + "/tokens");
  const std::string conf = token->dir_ + "/softhsm2.conf";
  std::ofstream(conf) << "directories.tokendir = " << token->dir_ << "/tokens\n"
                      << "objectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n";
  setenv("SOFTHSM2_CONF", conf.c_str(), 1);
  const std::string init = StrCat("softhsm2-util --init-token --free --label '", label, "' --so-pin ", kTestSoPin,
                                  " --pin ", kTestUserPin, " > ", token->dir_, "/init.log 2>&1");
  if (std::system(init.c_str()) != 0) return nullptr;
  token->pin_file_ = token->dir_ + "/user.pin";
  std::ofstream(token->pin_file_) << kTestUserPin << "\n";
  chmod(token->pin_file_.c_str(), 0600);
  return token;
}

SoftHsmToken::~SoftHsmToken() {
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string SoftHsmToken::Uri(const std::string& object, const std::string& module) const {
  return StrCat("pkcs11:token=", label_, ";object=", object, "?module-path=", module, "&pin-source=file:", pin_file_);
}

Status SoftHsmToken::GenerateKek(uint64_t version, const std::string& object) const {
  return WithAdminSession(*this, object, [&](const hsm::Session& session) {
    return hsm::GenerateKekVersion(session, object, version).status();
  });
}

Status SoftHsmToken::GenerateCbcHmacKek(uint64_t version, const std::string& object) const {
  return WithAdminSession(*this, object, [&](const hsm::Session& session) {
    return hsm::GenerateVersionKeys(session, object, version, hsm::KeyScheme::kAesCbcHmac).status();
  });
}

Status SoftHsmToken::GenerateCopyableKek(uint64_t version, const std::string& object) const {
  return WithAdminSession(*this, object, [&](const hsm::Session& session) {
    return hsm::GenerateKekVersion(session, object, version, {.modifiable = true}).status();
  });
}

namespace {

struct KeyFlags {
  bool sensitive, extractable, is_private;
};

// A version the plugin must refuse: AES-256 with the given flags, made through the KEK generator's
// seam so the test support holds no raw PKCS#11.
Status GenerateAesKey(const SoftHsmToken& token, uint64_t version, const std::string& object, KeyFlags flags) {
  return WithAdminSession(token, object, [&](const hsm::Session& session) -> Status {
    return hsm::GenerateTestAesKey(
               session, object, version,
               {.sensitive = flags.sensitive, .extractable = flags.extractable, .is_private = flags.is_private})
        .status();
  });
}

}  // namespace

Status SoftHsmToken::GenerateUnsafeKey(uint64_t version, const std::string& object) const {
  return GenerateAesKey(*this, version, object, {.sensitive = false, .extractable = true, .is_private = true});
}

Status SoftHsmToken::GeneratePublicKey(uint64_t version, const std::string& object) const {
  return GenerateAesKey(*this, version, object, {.sensitive = true, .extractable = false, .is_private = false});
}

Status SoftHsmToken::DestroyKey(uint64_t version, const std::string& object) const {
  return WithAdminSession(*this, object, [&](const hsm::Session& session) -> Status {
    StatusOr<std::vector<hsm::KeyObject>> family = hsm::ListKeyFamily(session, object);
    if (!family.ok()) return family.status();
    for (const hsm::KeyObject& key : *family) {
      if (key.version == version) return hsm::DestroyKeyObject(session, key.handle);
    }
    return NotFoundError(StrCat("no version ", version));
  });
}

}  // namespace trousseau::support
