// The bench's own HSM client: one AES-GCM open in the benchmark's process, on the same token and key
// the plugin uses, for the latency floor of [1] (docs/benchmarks.md). Every PKCS#11 call the bench
// makes is in this file pair (hsm_client.cc), so that it has one place to follow the hsm/ seam.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/envelope.h"
#include "hsm/pkcs11_module.h"
#include "hsm/key_family.h"
#include "hsm/p11/gcm.h"
#include "hsm/token_discovery.h"

namespace trousseau::bench {

class RawHsm {
 public:
  // Loads the module of `uri_text`, opens a read-only session on its token and logs in; nullptr (the
  // reason reported on stderr) if any step fails.
  static std::unique_ptr<RawHsm> Open(const std::string& uri_text);

  // Uses version 1 of `family` as the plugin does: an in-session copy if the token makes one,
  // else the token object. Returns false on failure.
  bool UseKey(const std::string& family);
  const std::string& key_kind() const { return key_kind_; }

  // One AES-GCM open of the envelope's sealed bytes, exactly as the plugin's backend does it.
  bool OpenOnce(const ParsedEnvelope& envelope, std::string_view expected);

 private:
  RawHsm() = default;
  static std::unique_ptr<RawHsm> Fail(const Status& status);
  std::unique_ptr<hsm::Pkcs11Module> module_;
  hsm::Session session_;
  hsm::SessionObject copy_;
  hsm::ObjectHandle key_ = hsm::kNoObject;
  std::string key_kind_;
};

}  // namespace trousseau::bench
