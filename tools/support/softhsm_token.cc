#include "tools/support/softhsm_token.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/strings.h"
#include "hsm/admin.h"
#include "hsm/key_admin.h"
#include "hsm/pkcs11_error.h"
#include "hsm/pkcs11_module.h"
#include "hsm/pkcs11_uri.h"
#include "hsm/token.h"

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

Status SoftHsmToken::GenerateCopyableKek(uint64_t version, const std::string& object) const {
  return WithAdminSession(*this, object, [&](const hsm::Session& session) {
    return hsm::GenerateKekVersion(session, object, version, {.modifiable = true}).status();
  });
}

namespace {

struct KeyFlags {
  CK_BBOOL sensitive, extractable, is_private;
};

Status GenerateAesKey(const SoftHsmToken& token, uint64_t version, const std::string& object, KeyFlags flags) {
  return WithAdminSession(token, object, [&](const hsm::Session& session) -> Status {
    const std::string id = hsm::VersionToId(version);
    CK_OBJECT_CLASS key_class = CKO_SECRET_KEY;
    CK_KEY_TYPE key_type = CKK_AES;
    CK_ULONG value_len = 32;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE attrs[] = {
        {CKA_CLASS, &key_class, sizeof key_class},
        {CKA_KEY_TYPE, &key_type, sizeof key_type},
        {CKA_VALUE_LEN, &value_len, sizeof value_len},
        {CKA_LABEL, const_cast<char*>(object.data()), object.size()},
        {CKA_ID, const_cast<char*>(id.data()), id.size()},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_SENSITIVE, &flags.sensitive, sizeof flags.sensitive},
        {CKA_EXTRACTABLE, &flags.extractable, sizeof flags.extractable},
        {CKA_PRIVATE, &flags.is_private, sizeof flags.is_private},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_DECRYPT, &yes, sizeof yes},
    };
    CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE handle;
    CK_RV rv = session.api()->C_GenerateKey(session.handle(), &mechanism, attrs, std::size(attrs), &handle);
    return rv == CKR_OK ? OkStatus() : hsm::RvStatus(rv, "C_GenerateKey");
  });
}

}  // namespace

Status SoftHsmToken::GenerateUnsafeKey(uint64_t version, const std::string& object) const {
  return GenerateAesKey(*this, version, object, {.sensitive = CK_FALSE, .extractable = CK_TRUE, .is_private = CK_TRUE});
}

Status SoftHsmToken::GeneratePublicKey(uint64_t version, const std::string& object) const {
  return GenerateAesKey(*this, version, object, {.sensitive = CK_TRUE, .extractable = CK_FALSE, .is_private = CK_FALSE});
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
