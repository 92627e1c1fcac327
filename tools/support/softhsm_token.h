// A real SoftHSM2 token in a temporary folder, for tests and the benchmark: its own softhsm2.conf (SOFTHSM2_CONF is
// set for this process and inherited by child processes), an initialised token, a PIN file, and
// helpers to create key versions on it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"

namespace trousseau::support {

inline constexpr char kSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kTestUserPin[] = "87654321";
inline constexpr char kTestSoPin[] = "12345678";

class SoftHsmToken {
 public:
  // Must run before any PKCS#11 module is initialised in this process (SoftHSM reads its
  // configuration once, at C_Initialize).
  static std::unique_ptr<SoftHsmToken> Create(const std::string& label = "trousseau-test");
  ~SoftHsmToken();

  const std::string& dir() const { return dir_; }
  const std::string& label() const { return label_; }
  const std::string& pin_file() const { return pin_file_; }
  // pkcs11:token=<label>;object=<object>?module-path=<module>&pin-source=file:<pin file>
  std::string Uri(const std::string& object = "kek", const std::string& module = kSoftHsmModule) const;

  // Creates KEK version `version` of family `object` with the production key policy.
  Status GenerateKek(uint64_t version, const std::string& object = "kek") const;
  // Version `version` as an aes-cbc-hmac pair (AES-256 key and HMAC key, same label and CKA_ID), as
  // `trousseau-hsm-init key generate --scheme aes-cbc-hmac` makes it.
  Status GenerateCbcHmacKek(uint64_t version, const std::string& object = "kek") const;
  // The same policy but modifiable, which SoftHSM needs to copy a key into a session.
  Status GenerateCopyableKek(uint64_t version, const std::string& object = "kek") const;
  // Creates a key that breaks the policy (extractable and not sensitive), to test refusals.
  Status GenerateUnsafeKey(uint64_t version, const std::string& object = "kek") const;
  // Sensitive and non-extractable, but not private: usable by a session that never logged in.
  Status GeneratePublicKey(uint64_t version, const std::string& object = "kek") const;
  // Removes version `version` of family `object`.
  Status DestroyKey(uint64_t version, const std::string& object = "kek") const;

 private:
  std::string dir_;
  std::string label_;
  std::string pin_file_;
};

}  // namespace trousseau::support
