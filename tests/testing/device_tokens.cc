#include "tests/testing/device_tokens.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "core/strings.h"

namespace trousseau::testing {
namespace {

constexpr char kCertutil[] = "/usr/bin/certutil";

// A secret on its own line in an owner-only file, as the PIN readers and the device scripts want it.
void WriteSecretFile(const std::string& path, std::string_view secret) {
  std::ofstream(path) << secret << "\n";
  chmod(path.c_str(), 0600);
}

std::string DeviceScript(std::string_view name) { return StrCat(DEVICES_DIR, "/", name); }

}  // namespace

// ---- opencryptoki ----

std::string OpencryptokiToken::Unavailable() {
  if (getuid() != 0) return "opencryptoki's pkcsslotd needs root";
  if (access(kModule, R_OK) != 0) return "opencryptoki is not installed";
  return "";
}

OpencryptokiToken::OpencryptokiToken(std::string dir)
    : user_pin_file_(dir + "/ock-user.pin"), runner_(dir, "ock-script-") {
  const std::string so_pin_file = dir + "/ock-so.pin";
  WriteSecretFile(so_pin_file, kSoPin);
  WriteSecretFile(user_pin_file_, kUserPin);
  setenv("OCK_SO_PIN_FILE", so_pin_file.c_str(), 1);
  setenv("OCK_USER_PIN_FILE", user_pin_file_.c_str(), 1);
}

OpencryptokiToken::~OpencryptokiToken() {
  if (started_) Stop();
}

ProgramRun OpencryptokiToken::Start() {
  started_ = true;  // even a failed start may have left the daemon running
  return runner_.Run({"/bin/bash", DeviceScript("opencryptoki-token.sh"), "start"});
}

ProgramRun OpencryptokiToken::Stop() {
  started_ = false;
  return runner_.Run({"/bin/bash", DeviceScript("opencryptoki-token.sh"), "stop"});
}

void OpencryptokiToken::ExpectNoPinIn(const std::vector<std::string>& others) const {
  for (const std::vector<std::string>* outputs : {&others, &outputs()}) {
    for (const std::string& output : *outputs) {
      for (std::string_view pin : {kSoPin, kUserPin}) {
        EXPECT_EQ(output.find(pin), std::string::npos) << "a PIN was printed:\n" << output;
      }
    }
  }
}

std::string OpencryptokiToken::Uri(std::string_view token, std::string_view module) const {
  return StrCat("pkcs11:token=", token, ";object=kek?module-path=", module, "&pin-source=file:", user_pin_file_);
}

// ---- NSS softoken ----

std::string NssDatabase::Unavailable() {
  if (access(kModule, R_OK) != 0) return "NSS softoken (Debian libnss3) is not installed";
  if (access(kCertutil, X_OK) != 0) return "certutil (Debian libnss3-tools) is not installed";
  return "";
}

NssDatabase::NssDatabase(std::string dir, std::string_view password)
    : dir_(dir), pin_file_(dir + "/nss.pin"), runner_(dir, "nss-db-") {
  WriteSecretFile(pin_file_, password);
}

ProgramRun NssDatabase::Create() {
  ProgramRun made = runner_.Run({"/bin/bash", DeviceScript("nss-db.sh"), dir_ + "/nssdb", pin_file_});
  if (made.code == 0) init_string_ = made.out.substr(0, made.out.find('\n'));
  return made;
}

std::string NssDatabase::Uri(bool with_init_reserved) const {
  std::string uri =
      StrCat("pkcs11:token=NSS%20Certificate%20DB;object=kek?module-path=", kModule, "&pin-source=file:", pin_file_);
  if (with_init_reserved) StrAppend(uri, "&x-init-reserved=", PercentEncode(init_string_, /*keep_slash=*/true));
  return uri;
}

}  // namespace trousseau::testing
