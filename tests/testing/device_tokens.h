// The PKCS#11 devices beside SoftHSM that tests bring up with the scripts in tests/devices: opencryptoki's soft
// token (opencryptoki-token.sh) and an NSS softoken database (nss-db.sh). Each writes its secrets to owner-only
// files in the test's directory, runs its script, and gives the pkcs11: URI the tools and the plugin take.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "tests/testing/program_runner.h"

namespace trousseau::testing {

// opencryptoki's soft token "trousseau-ock", wiped and initialised by `opencryptoki-token.sh start` (pkcsslotd is
// one per host: the script's lock and ctest's RESOURCE_LOCK opencryptoki serialise its users).
class OpencryptokiToken {
 public:
  static constexpr char kModule[] = "/usr/lib/x86_64-linux-gnu/pkcs11/PKCS11_API.so";
  static constexpr char kLabel[] = "trousseau-ock";
  // Its PINs (opencryptoki takes 4 to 8 characters); never printed by anything (the tests check their outputs).
  static constexpr char kSoPin[] = "so5f1e2d";
  static constexpr char kUserPin[] = "us9a8b7c";

  // Why the token cannot be brought up here (pkcsslotd needs root; opencryptoki must be installed), or "".
  static std::string Unavailable();

  // Writes both PIN files into `dir` and names them to the script (OCK_SO_PIN_FILE, OCK_USER_PIN_FILE).
  explicit OpencryptokiToken(std::string dir);
  ~OpencryptokiToken();  // stops pkcsslotd if Start ran and Stop did not
  OpencryptokiToken(const OpencryptokiToken&) = delete;
  OpencryptokiToken& operator=(const OpencryptokiToken&) = delete;

  // pkcsslotd running and the token fresh, or stopped (the script's exit code and output).
  ProgramRun Start();
  ProgramRun Stop();

  // Family `kek` on token `token` through `module` (another label, or the fault shim in front of kModule).
  std::string Uri(std::string_view token = kLabel, std::string_view module = kModule) const;
  const std::string& user_pin_file() const { return user_pin_file_; }
  // What the script printed, every run.
  const std::vector<std::string>& outputs() const { return runner_.outputs(); }
  // A test failure for each of `others` (what the test ran printed) and of outputs() that shows either PIN.
  void ExpectNoPinIn(const std::vector<std::string>& others) const;

 private:
  std::string user_pin_file_;
  ProgramRunner runner_;
  bool started_ = false;
};

// An NSS softoken database made by nss-db.sh, used through libsoftokn3.so loaded directly: its token "NSS
// Certificate DB" takes the database password as user PIN, and C_Initialize needs the database's init string
// (the URI's x-init-reserved; token init's --module-init-reserved).
class NssDatabase {
 public:
  static constexpr char kModule[] = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";
  // The database password when a test names none; never printed by anything.
  static constexpr char kPassword[] = "nss-3c4d5e6f7a8b";

  // Why a database cannot be made and used here (libnss3, certutil of libnss3-tools), or "".
  static std::string Unavailable();

  // A database to make in `dir`/nssdb; `password` is written to `dir`/nss.pin (owner-only).
  explicit NssDatabase(std::string dir, std::string_view password = kPassword);

  // Makes the database (nss-db.sh): the script's exit code and output; on success init_string() is set.
  ProgramRun Create();

  // The string C_Initialize needs ("configdir='sql:DIR' certPrefix='' ..."), as it is.
  const std::string& init_string() const { return init_string_; }
  const std::string& pin_file() const { return pin_file_; }
  // Family `kek` on "NSS Certificate DB", with the init string percent-encoded in x-init-reserved unless told not.
  std::string Uri(bool with_init_reserved = true) const;
  const std::vector<std::string>& outputs() const { return runner_.outputs(); }

 private:
  std::string dir_;
  std::string pin_file_;
  std::string init_string_;
  ProgramRunner runner_;
};

}  // namespace trousseau::testing
