// The plugin's PKCS#11 configuration, given as one RFC 7512 URI, e.g.
//   pkcs11:token=k8s-kms;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/trousseau-hsm/pin
// Parsed by p11-kit. The URI selects the module, the token (by label, serial, manufacturer, model or
// slot) and the key family (object = CKA_LABEL). Versions come from CKA_ID, so the URI may not pin one.
// A module that needs initialisation arguments (NSS softoken's configdir=...) gets them from the query
// attribute x-init-reserved (p11-kit's name for the same string in its module files), percent-encoded.
// A device that chooses AES-GCM IVs itself (FIPS mode) is found out by trying; `x-gcm-iv=device` says so
// up front (the device never sees a caller IV), `x-gcm-iv=caller` forbids the device-IV fallback.
// `x-recipient=LABEL` names the recipient key of multi-recipient envelopes on the same token
// (hsm/recipient_key.h, docs/ha.md): it lives beside the family under the same login, so the one
// URI that already says which module, token and PIN names it too, and no new flag is needed.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "hsm/key_scheme.h"
#include "hsm/pkcs11.h"
#include "core/status.h"

struct p11_kit_uri;

namespace trousseau::hsm {

// Whether the URI must name a KEK family (object=). Only a caller that serves recipient keys alone
// (Pkcs11Backend as a RecipientDevice) accepts a URI without one, and then only with x-recipient: the
// key tools keep requiring object=, so none of them can act on a family with an empty label.
enum class KeyFamilyInUri { kRequired, kOptionalWithRecipient };

class Pkcs11Uri {
 public:
  static StatusOr<Pkcs11Uri> Parse(const std::string& text, KeyFamilyInUri family = KeyFamilyInUri::kRequired);

  const std::string& module_path() const { return module_path_; }
  // The KEK family's label; empty only when the URI has none (KeyFamilyInUri::kOptionalWithRecipient).
  const std::string& object_label() const { return object_label_; }
  bool has_key_family() const { return !object_label_.empty(); }
  // x-recipient: the label of the recipient key on this token, if the URI names one.
  const std::optional<std::string>& recipient_label() const { return recipient_label_; }
  // Absolute path of the PIN file from `pin-source`, if the URI names one.
  const std::optional<std::string>& pin_file() const { return pin_file_; }
  // The string handed to C_Initialize in CK_C_INITIALIZE_ARGS.pReserved, if the URI has x-init-reserved.
  const std::optional<std::string>& init_reserved() const { return init_reserved_; }
  // x-gcm-iv=device|caller; nullopt: find out from the device (hsm/key_family.h VersionFingerprint).
  const std::optional<GcmIvSource>& gcm_iv_source() const { return gcm_iv_source_; }
  // "token 'k8s-kms'" (and serial, if given) for messages.
  const std::string& token_description() const { return token_description_; }

  bool MatchesSlot(const CK_SLOT_INFO& info, CK_SLOT_ID id) const;
  bool MatchesToken(const CK_TOKEN_INFO& info) const;

 private:
  std::shared_ptr<p11_kit_uri> uri_;
  std::string module_path_;
  std::string object_label_;
  std::optional<std::string> pin_file_;
  std::optional<std::string> init_reserved_;
  std::optional<GcmIvSource> gcm_iv_source_;
  std::optional<std::string> recipient_label_;
  std::string token_description_;
};

// Space-padded PKCS#11 fixed-width text to a plain string.
std::string TrimPadded(const unsigned char* text, size_t size);

}  // namespace trousseau::hsm
